"""Differential test: the accelerated langdetect equals the stock Detector, bit for bit.

Every probability (not just the top language) must be equal (``==``) to what
``langdetect.detector.Detector`` computes with the same seed, on texts covering each
script family, capital words, URLs/e-mails, Vietnamese combining marks, Latin removal,
the 10,000-character cut, the 1,000-iteration limit and the no-features exception.
"""

from __future__ import annotations

import random
import string

import pytest

from uniapl_mcore.rewards import langdetect_accelerated
from uniapl_mcore.rewards import text as T

_FIXED = [
    "Hello world, this is an English sentence.",
    "Das ist ein deutscher Satz über das Wetter.",
    "Ceci est une phrase française. Voir http://example.com/x?y=1 ou écrire à a.b@c.org",
    "Это русское предложение. И ещё одно!",
    "これは日本語の文です。カタカナもある。",
    "这是中文句子。我们在这里。",
    "한국어 문장입니다.",
    "Tiếng Việt có dấu, và nhiều chữ khác nhau.",
    "Tie\u0301ng Vie\u0323t vo\u031bi da\u0302\u0301u to\u0309 ho\u031bp",  # combining marks
    "ภาษาไทยเป็นภาษาที่สวยงาม",
    "हिन्दी भारत की एक भाषा है।",
    "مرحبا بالعالم هذه جملة عربية",
    "یک جمله فارسی با ی فارسی",
    "Română: şi ţară, și țară",
    "THIS IS ALL CAPS TEXT WITH SOME WORDS",
    "Mixed CAPS and lower WORDS, NASA and the USA.",
    "Latin words in a mostly Русский текст текст текст текст текст текст",
    "e",  # reaches the 1,000-iteration limit
    "x y z",
    "a",
    "   spaced    out\t\ttext\n\nwith   gaps   ",
    "‘quotes’ — dashes … and “more”",
    "Emoji 😀 outside the BMP 🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 letters",
    "lorem " * 3000,  # longer than max_text_length
]

_NO_FEATURES = ["", "12345 !!!", "...", "   ", "http://example.com", "a@b.co"]

_ALPHABETS = [
    string.ascii_letters + "    ..,!?",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя АБВГД  ",
    "αβγδεζηθικλμνξοπρστυφχψω ",
    "あいうえおかきくけこアイウエオ ",
    "的一是不了人我在有他这中大来上 ",
    string.printable,
    "ÀÉÎõüçñßæøå aeiou AEIOU ",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي ",
    "กขคงจฉชซญดตถทนบปผพฟมยรลวสหอ ",
    "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह ",
    string.ascii_lowercase + "абвгд的一是 あい ",
]


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        alphabet = rng.choice(_ALPHABETS)
        n = rng.choice([rng.randint(1, 12), rng.randint(10, 400)])
        out.append("".join(rng.choice(alphabet) for _ in range(n)))
    return out


def _words_texts(count: int, seed: int) -> list[str]:
    """Word salads from langdetect's own profile n-grams (many languages)."""
    from langdetect import detector_factory

    detector_factory.init_factory()
    grams = sorted(g for g in detector_factory._factory.word_lang_prob_map if " " not in g)
    rng = random.Random(seed)
    return [
        " ".join("".join(rng.choice(grams) for _ in range(rng.randint(1, 3)))
                 for _ in range(rng.randint(1, 40)))
        for _ in range(count)
    ]  # fmt: skip


def _probabilities(detector_cls: type, text: str) -> list[float] | str:
    from langdetect import detector_factory

    detector_factory.init_factory()
    factory = detector_factory._factory
    factory.seed = T.LANGDETECT_SEED
    detector = detector_cls(factory)
    detector.append(text)
    try:
        detector.get_probabilities()
    except Exception as exc:  # noqa: BLE001 - the exception type is part of the result
        return type(exc).__name__
    return detector.langprob


def test_replay_self_check_passes():
    assert langdetect_accelerated.accelerated()


@pytest.mark.parametrize(
    "texts",
    [_FIXED + _NO_FEATURES, _random_texts(250, seed=1), _words_texts(120, seed=2)],
    ids=["fixed", "random-scripts", "profile-words"],
)
def test_probabilities_are_bit_identical(texts):
    from langdetect.detector import Detector

    fast_cls = langdetect_accelerated.detector_class()
    for text in texts:
        expected = _probabilities(Detector, text)
        assert _probabilities(fast_cls, text) == expected, text[:80]


def test_no_features_raises_and_checker_passes():
    from langdetect.detector import Detector

    for text in _NO_FEATURES:
        assert _probabilities(Detector, text) == "LangDetectException"
        fast = langdetect_accelerated.detector_class()
        assert _probabilities(fast, text) == "LangDetectException"
        with pytest.raises(T.LanguageUndetectable):
            T.detect_language.__wrapped__(text)


def test_detect_language_matches_seeded_langdetect():
    import langdetect
    from langdetect import DetectorFactory

    DetectorFactory.seed = T.LANGDETECT_SEED
    for text in _FIXED + _random_texts(60, seed=3):
        try:
            expected = langdetect.detect(text)
        except langdetect.LangDetectException:
            continue
        assert T.detect_language.__wrapped__(text) == expected, text[:80]


def test_cache_does_not_change_results():
    fast_cls = langdetect_accelerated.detector_class()
    texts = _random_texts(30, seed=4)
    first = [_probabilities(fast_cls, t) for t in texts]
    second = [_probabilities(fast_cls, t) for t in reversed(texts)]
    assert first == second[::-1]
