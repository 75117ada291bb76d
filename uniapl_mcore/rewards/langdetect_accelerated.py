"""A bit-exact accelerated drop-in for langdetect 1.0.9's ``Detector`` (seeded runs).

langdetect's detection of one text is, with a fixed seed, a pure function of the text:

1. ``append`` removes URLs and e-mail addresses, normalises Vietnamese marks, cuts the
   text at ``max_text_length`` and collapses runs of spaces;
2. ``cleaning_text`` drops Latin letters when non-Latin characters dominate;
3. ``_extract_ngrams`` normalises every character (``NGram.normalize``) and collects the
   1-, 2- and 3-grams of the profile, in text order;
4. seven trials each draw an ``alpha`` (``random.gauss``) and then n-grams
   (``random.choice``) from a ``random.Random`` reseeded per text, multiply the language
   vector by ``alpha / 10000 + p(gram)``, and normalise every five draws until one
   language exceeds 0.99999 (or 1,000 draws).

This module computes exactly the same numbers, faster:

* steps 1-2 use ``re``/``str.translate``/``Counter`` instead of per-character Python
  loops; step 3 normalises with a memoised translation table and reads the n-grams
  word by word (the n-gram buffer resets at every space, so a word's n-grams depend on
  the word alone) from a per-word cache;
* the random stream of a seeded ``random.Random`` is the same for every text, so its
  raw 32-bit words are generated once (numpy's MT19937 fed CPython's seeded state) and
  ``gauss``/``choice`` are replayed from them with CPython's own formulas;
* a trial multiplies the language vector (all 55 languages at once, numpy float64)
  by the same factors in the same order, and normalises with Python's ``sum`` exactly
  as langdetect does, so every probability is bit-identical.

A start-up self-check replays ``gauss``/``choice`` against a real ``random.Random``;
should a future Python change those, :func:`accelerated` returns False and callers use
the stock detector. ``tests/rewards/test_langdetect_accelerated.py`` compares
probabilities with the stock ``Detector`` on many texts (equality, not closeness).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections import Counter, OrderedDict
from itertools import chain
from typing import Any

import numpy as np

_SPACES_RE = re.compile(" {2,}")
#: ``cleaning_text`` deletes characters in the range 'A'..'z' (ASCII 65..122).
_DELETE_A_TO_z = {cp: None for cp in range(ord("A"), ord("z") + 1)}
_TWOPI = 2.0 * math.pi
_RECIP_BPF = 1.0 / 9007199254740992.0  # 2 ** -53, as CPython's random()
_CACHE_SIZE = 8192
#: Bound of the per-word / per-character memo tables (cleared when exceeded).
_MEMO_LIMIT = 200_000


# ---------------------------------------------------------------------------------------
# The seeded random stream
# ---------------------------------------------------------------------------------------


class _RawStream:
    """The raw 32-bit outputs of ``random.Random(seed)``, generated ahead in bulk."""

    def __init__(self, seed: Any) -> None:
        rng = random.Random(seed)
        state = rng.getstate()[1]
        self._bitgen = np.random.MT19937()
        self._bitgen.state = {
            "bit_generator": "MT19937",
            "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": state[624]},
        }
        self.words = self._bitgen.random_raw(1 << 16).astype(np.uint32)

    def ensure(self, end: int) -> None:
        """Make ``self.words`` at least ``end`` long."""
        while end > len(self.words):
            more = self._bitgen.random_raw(len(self.words)).astype(np.uint32)
            self.words = np.concatenate([self.words, more])

    def random_at(self, pos: int) -> float:
        """CPython's ``random()`` from the two words at ``pos``."""
        self.ensure(pos + 2)
        a = int(self.words[pos]) >> 5
        b = int(self.words[pos + 1]) >> 6
        return (a * 67108864.0 + b) * _RECIP_BPF


class _Replay:
    """Replays one ``random.Random``'s ``gauss`` and ``choice`` from a raw stream."""

    def __init__(self, stream: _RawStream) -> None:
        self.stream = stream
        self.pos = 0
        self.gauss_next: float | None = None

    def gauss(self, mu: float, sigma: float) -> float:
        """``random.Random.gauss`` (CPython 3.11-3.13 formula, cached second value)."""
        z = self.gauss_next
        self.gauss_next = None
        if z is None:
            x2pi = self.stream.random_at(self.pos) * _TWOPI
            g2rad = math.sqrt(-2.0 * math.log(1.0 - self.stream.random_at(self.pos + 2)))
            self.pos += 4
            z = math.cos(x2pi) * g2rad
            self.gauss_next = math.sin(x2pi) * g2rad
        return mu + z * sigma

    def choices(self, n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` ``choice`` indices over ``n`` items (not consumed yet).

        Returns the indices and, for each, the number of raw words consumed up to and
        including it (``_randbelow``: ``getrandbits(n.bit_length())`` with rejection).
        """
        shift = 32 - n.bit_length()
        window = max(64, 2 * count + 16)
        while True:
            self.stream.ensure(self.pos + window)
            cand = self.stream.words[self.pos : self.pos + window] >> shift
            accepted = np.flatnonzero(cand < n)
            if len(accepted) >= count:
                accepted = accepted[:count]
                return cand[accepted].astype(np.intp), accepted + 1
            window *= 2

    def advance(self, words: int) -> None:
        """Consume ``words`` raw words."""
        self.pos += int(words)


@functools.lru_cache(maxsize=4)
def _stream(seed: Any) -> _RawStream:
    return _RawStream(seed)


def _self_check(seed: Any = 0) -> bool:
    """Whether the replay equals a real ``random.Random`` (gauss and choice mixes)."""
    real = random.Random(seed)
    fake = _Replay(_stream(seed))
    for n in (1, 2, 3, 4, 7, 64, 65, 1000, 4097, 123457):
        if real.gauss(0.0, 1.0) != fake.gauss(0.0, 1.0):
            return False
        idx, used = fake.choices(n, 37)
        if [real.choice(range(n)) for _ in range(37)] != idx.tolist():
            return False
        fake.advance(used[-1])
    return real.gauss(0.0, 1.0) == fake.gauss(0.0, 1.0)


@functools.lru_cache(maxsize=1)
def accelerated() -> bool:
    """Whether this interpreter's ``random`` can be replayed (checked once)."""
    return _self_check()


# ---------------------------------------------------------------------------------------
# Text preparation and n-grams
# ---------------------------------------------------------------------------------------


class _Profile:
    """Per-process caches over a langdetect factory's profile."""

    def __init__(self, factory: Any) -> None:
        from langdetect.utils.ngram import NGram
        from langdetect.utils.unicode_block import unicode_block

        self.factory = factory
        self.word_lang_prob_map = factory.word_lang_prob_map
        self.num_langs = len(factory.langlist)
        self._normalize = NGram.normalize
        self._unicode_block = unicode_block
        self._norm_table: dict[int, str] = {}
        self._latin_class: dict[str, int] = {}
        self._word_ids: dict[tuple[str, bool], tuple[int, ...]] = {}
        self._gram_id: dict[str, int] = {}
        self.matrix = np.empty((1024, self.num_langs), dtype=np.float64)
        self.langprob_cache: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()

    # -- step 2 ------------------------------------------------------------------------
    def _char_class(self, ch: str) -> int:
        """1 = Latin ('A' <= ch <= 'z'), 2 = counted non-Latin, 0 = neither."""
        cls = self._latin_class.get(ch)
        if cls is None:
            if len(self._latin_class) >= _MEMO_LIMIT:
                self._latin_class.clear()
            if "A" <= ch <= "z":
                cls = 1
            elif ch >= "\u0300" and self._unicode_block(ch) != "Latin Extended Additional":
                cls = 2
            else:
                cls = 0
            self._latin_class[ch] = cls
        return cls

    def clean(self, text: str) -> str:
        """``Detector.cleaning_text``."""
        counts = [0, 0, 0]
        for ch, n in Counter(text).items():
            counts[self._char_class(ch)] += n
        if counts[1] * 2 < counts[2]:
            return text.translate(_DELETE_A_TO_z)
        return text

    # -- step 3 ------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """``NGram.normalize`` applied to every character."""
        table = self._norm_table
        if len(table) >= _MEMO_LIMIT:
            table.clear()
        for ch in set(text):
            if ord(ch) not in table:
                table[ord(ch)] = self._normalize(ch)
        return text.translate(table)

    def _gram_row(self, gram: str) -> int:
        gid = self._gram_id.get(gram)
        if gid is None:
            gid = len(self._gram_id)
            if gid >= len(self.matrix):
                grown = np.empty((2 * len(self.matrix), self.num_langs), dtype=np.float64)
                grown[: len(self.matrix)] = self.matrix
                self.matrix = grown
            self.matrix[gid] = self.word_lang_prob_map[gram]
            self._gram_id[gram] = gid
        return gid

    def word_ids(self, word: str, trailing_space: bool) -> tuple[int, ...]:
        """Profile rows of the n-grams ``_extract_ngrams`` yields for one word.

        ``word`` is a run of normalised non-space characters preceded by a space; when
        ``trailing_space`` the space after it is fed too.  At character ``i`` the buffer
        holds ``s[max(k, i - 2):i + 1]`` (``k`` the preceding space), and nothing is
        yielded when ``s[i]`` and ``s[i - 1]`` are both upper-case ("capital word").
        """
        key = (word, trailing_space)
        ids = self._word_ids.get(key)
        if ids is not None:
            return ids
        if len(self._word_ids) >= _MEMO_LIMIT:
            self._word_ids.clear()
        s = " " + word + (" " if trailing_space else "")
        known = self.word_lang_prob_map
        grams: list[str] = []
        for i in range(1, len(s)):
            ch = s[i]
            if ch.isupper() and s[i - 1].isupper():
                continue
            if ch != " " and ch in known:
                grams.append(ch)
            two = s[i - 1 : i + 1]
            if two in known:
                grams.append(two)
            if i >= 2 and s[i - 1] != " ":
                three = s[i - 2 : i + 1]
                if three in known:
                    grams.append(three)
        ids = tuple(self._gram_row(g) for g in grams)
        self._word_ids[key] = ids
        return ids

    def ngram_ids(self, text: str) -> np.ndarray:
        """``_extract_ngrams`` of the cleaned text, as profile row ids in order."""
        parts = self.normalize(text).split(" ")
        last = len(parts) - 1
        ids = chain.from_iterable(
            self.word_ids(part, index < last) for index, part in enumerate(parts) if part
        )
        return np.fromiter(ids, dtype=np.intp)


_PROFILES: dict[int, _Profile] = {}


def _profile(det: Any) -> _Profile:
    """The caches for ``det``'s profile (one per loaded factory)."""
    key = id(det.word_lang_prob_map)
    profile = _PROFILES.get(key)
    if profile is None or profile.word_lang_prob_map is not det.word_lang_prob_map:
        profile = _PROFILES[key] = _Profile(det)
    return profile


# ---------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------


def _normalize_prob(prob: np.ndarray) -> float:
    """``Detector._normalize_prob``: divide by Python's ``sum``; return the maximum.

    ``sum`` over a list of floats is what langdetect computes (sequential on Python
    3.11, compensated on 3.12+), so this follows the interpreter it runs on.
    """
    values = prob.tolist()
    sump = sum(values)
    if sump == 0:
        raise ZeroDivisionError("float division by zero")
    prob /= sump
    # Division by a positive number is monotonic under IEEE rounding, so the largest
    # quotient is the largest value divided by the sum: no second pass needed.
    return max(0.0, max(values) / sump)


def _trial(
    profile: _Profile, ids: np.ndarray, rng: _Replay, alpha: float, init: np.ndarray, det: Any
) -> np.ndarray:
    """One trial of ``Detector._detect_block``; consumes exactly the draws it uses."""
    weight = alpha / det.BASE_FREQ
    limit, conv = det.ITERATION_LIMIT, det.CONV_THRESHOLD
    prob = init.copy()
    draws, used = rng.choices(len(ids), 1)
    rng.advance(used[0])
    prob *= weight + profile.matrix[ids[draws[0]]]
    if _normalize_prob(prob) > conv or limit <= 0:
        return prob
    done, chunk = 1, 60
    while True:
        draws, used = rng.choices(len(ids), chunk)
        factors = weight + profile.matrix[ids[draws]]
        for start in range(0, chunk, 5):
            for row in factors[start : start + 5]:
                prob *= row
            last = done + start + 4  # the iteration index of this block's last draw
            if _normalize_prob(prob) > conv or last >= limit:
                rng.advance(used[start + 4])
                return prob
        rng.advance(used[chunk - 1])
        done += chunk
        chunk = min(2 * chunk, 480)


def detect_block(det: Any) -> None:
    """``Detector._detect_block`` for a seeded detector, bit for bit (sets ``langprob``)."""
    from langdetect.lang_detect_exception import ErrorCode, LangDetectException

    profile = _profile(det)
    text = profile.clean(det.text)
    det.text = text
    ids = profile.ngram_ids(text)
    if not len(ids):
        raise LangDetectException(ErrorCode.CantDetectError, "No features in text.")
    prior = None if det.prior_map is None else tuple(det.prior_map)
    digest = hashlib.blake2b(ids.tobytes(), digest_size=20).digest()  # bounded key size
    key = (det.seed, det.alpha, det.n_trial, prior, len(ids), digest)
    cached = profile.langprob_cache.get(key)
    if cached is None:
        cached = _run_trials(profile, ids, det, prior)
        profile.langprob_cache[key] = cached
        if len(profile.langprob_cache) > _CACHE_SIZE:
            profile.langprob_cache.popitem(last=False)
    det.langprob = list(cached)


def _run_trials(profile: _Profile, ids: np.ndarray, det: Any, prior: Any) -> list[float]:
    n_langs = profile.num_langs
    if prior is not None:
        init = np.array(prior, dtype=np.float64)
    else:
        init = np.full(n_langs, 1.0 / n_langs, dtype=np.float64)
    rng = _Replay(_stream(det.seed))
    langprob = np.zeros(n_langs, dtype=np.float64)
    for _ in range(det.n_trial):
        alpha = det.alpha + rng.gauss(0.0, 1.0) * det.ALPHA_WIDTH
        prob = _trial(profile, ids, rng, alpha, init, det)
        langprob += prob / det.n_trial
    return langprob.tolist()


@functools.lru_cache(maxsize=1)
def detector_class() -> type:
    """A ``langdetect.detector.Detector`` subclass using the accelerated path.

    It falls back to the stock implementation when unseeded, verbose, or when the
    ``random`` replay self-check fails.
    """
    from langdetect.detector import Detector
    from langdetect.utils.ngram import NGram

    class FastDetector(Detector):
        """Bit-exact accelerated ``Detector`` (see the module docstring)."""

        def append(self, text: str) -> None:
            text = self.URL_RE.sub(" ", text)
            text = self.MAIL_RE.sub(" ", text)
            text = NGram.normalize_vi(text)
            self.text += _SPACES_RE.sub(" ", text[: max(self.max_text_length, 0)])

        def _detect_block(self) -> None:
            if self.seed is None or self.verbose or not accelerated():
                super()._detect_block()
                return
            detect_block(self)

    return FastDetector
