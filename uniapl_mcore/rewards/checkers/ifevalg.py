"""open-instruct IFEvalG training constraints (the 29 ids added to the IFEval 25).

Semantics follow ``open_instruct/IFEvalG/instructions.py`` (spec §6.3), including its
quirks (raw regex keywords, regex sentence splitting, ``nltk.word_tokenize`` counts).
Kwargs the reference treats as "missing when falsy" (and replaces at random) must be
given explicitly here.
"""

from __future__ import annotations

import re

from uniapl_mcore.rewards import text as T
from uniapl_mcore.rewards.checkers.base import Checker, ConstraintError, Kwargs, compare, register
from uniapl_mcore.rewards.checkers.ifeval import (
    PARAGRAPH_SPLIT_RE,
    KeywordFrequency,
    compile_regex,
    count_paragraphs,
)

FAMILY = "ifevalg"

_NON_WORD_RE = re.compile(r"[^\w\s]")
_LOWER_WORD_RE = re.compile(r"\b[a-z]+\b")
_ASCII_LETTER_RE = re.compile(r"[a-zA-Z]")


def _str_or_first(kw: Kwargs, name: str) -> str:
    """A string kwarg that the reference also accepts as a list (it takes element 0)."""
    if isinstance(kw.peek(name), (list, tuple)):
        values = kw.str_list(name)
        return values[0].strip()
    return kw.str(name, nonempty=True).strip()


@register("copy:repeat_phrase", FAMILY)
class RepeatPhrase(Checker):
    """Exactly ``small_n`` "first … last" matches, each the phrase with one word changed."""

    def _parse(self, kw: Kwargs) -> None:
        self.phrase = kw.str("phrase", nonempty=True).strip()
        if not self.phrase:
            raise ConstraintError("kwarg 'phrase' must contain a word")
        self.small_n = kw.int("small_n", minimum=1)
        words = self.phrase.split()
        self._pattern = compile_regex(rf"{words[0]} .*? {words[-1]}", "phrase")

    def check(self, text: str) -> bool:
        found = self._pattern.findall(text)
        if len(found) != self.small_n:
            return False
        reference = self.phrase.split()
        satisfied = 0
        for match in found:
            words = match.split()
            if len(words) != len(reference):
                return False
            differences = sum(1 for a, b in zip(words, reference, strict=True) if a != b)
            if differences > 1:
                return False
            satisfied += differences == 1
        return satisfied == self.small_n


@register("copy:copy", FAMILY)
class Copy(Checker):
    """The response equals the text to copy (stripped, case-insensitive)."""

    def _parse(self, kw: Kwargs) -> None:
        self.prompt_to_repeat = kw.str("prompt_to_repeat", nonempty=True)

    def check(self, text: str) -> bool:
        return text.strip().lower() == self.prompt_to_repeat.strip().lower()


@register("new:copy_span_idx", FAMILY)
class CopySpanIdx(Checker):
    """The response equals characters [n_start, n_end) of the text (stripped, ci)."""

    def _parse(self, kw: Kwargs) -> None:
        self.prompt_to_repeat = kw.str("prompt_to_repeat", nonempty=True)
        self.n_start = kw.int("n_start", minimum=0)
        self.n_end = kw.int("n_end", minimum=0)

    def check(self, text: str) -> bool:
        span = self.prompt_to_repeat[self.n_start : self.n_end]
        return text.strip().lower() == span.strip().lower()


@register("detectable_format:sentence_hyphens", FAMILY)
class SentenceHyphens(Checker):
    """Sentences joined by "-" without surrounding spaces."""

    def check(self, text: str) -> bool:
        gold = T.split_into_sentences(text.replace("-", " "))
        for sentence, ref in zip(text.split("-"), gold, strict=False):
            if sentence.strip() != sentence or sentence != ref:
                return False
        return True


@register("keywords:no_adjacent_consecutive", FAMILY)
class NoAdjacentConsecutive(Checker):
    """No two adjacent words start with consecutive letters of the alphabet."""

    def check(self, text: str) -> bool:
        words = text.split()
        for first, second in zip(words, words[1:], strict=False):
            a, b = first[0].lower(), second[0].lower()
            if len(a) != 1 or len(b) != 1:
                return False
            if ord(b) - ord(a) == 1:
                return False
        return True


@register("detectable_format:square_brackets", FAMILY)
class SquareBrackets(Checker):
    """Every whitespace-delimited word is wrapped in square brackets."""

    def check(self, text: str) -> bool:
        return all(w.startswith("[") and w.endswith("]") for w in text.split())


@register("keywords:word_once", FAMILY)
class WordOnce(Checker):
    """Exactly one case-insensitive regex match of ``keyword``."""

    def _parse(self, kw: Kwargs) -> None:
        self.keyword = kw.str("keyword", nonempty=True).strip()
        self._pattern = compile_regex(self.keyword, "keyword", re.IGNORECASE)

    def check(self, text: str) -> bool:
        return len(self._pattern.findall(text)) == 1


@register("keywords:word_count_different_numbers", FAMILY)
class WordCountDifferentNumbers(KeywordFrequency):
    """The same check as ``keywords:frequency``: case-insensitive regex matches of
    ``keyword`` compared by relation."""


@register("keywords:exclude_word_harder", FAMILY)
class ExcludeWordHarder(Checker):
    """ " keyword " (space-delimited, case-sensitive) does not occur."""

    def _parse(self, kw: Kwargs) -> None:
        self.keyword = kw.str("keyword", nonempty=True).strip()
        if kw.has("instruction"):  # the reference's builder also takes the prompt text
            kw.str("instruction")

    def check(self, text: str) -> bool:
        return " " + self.keyword + " " not in text


@register("paragraphs:paragraphs", FAMILY)
class Paragraphs(Checker):
    """Exactly two ``***``-separated paragraphs (IFEval paragraph rule)."""

    def check(self, text: str) -> bool:
        return count_paragraphs(PARAGRAPH_SPLIT_RE.split(text)) == 2


@register("paragraphs:paragraphs2", FAMILY)
class Paragraphs2(Checker):
    """Exactly two paragraphs separated by ``\\n\\n`` (an empty inner one fails)."""

    def check(self, text: str) -> bool:
        return count_paragraphs(text.split("\n\n")) == 2


@register("first_word:first_word_sent", FAMILY)
class FirstWordSent(Checker):
    """Every regex-split sentence's first token equals ``first_word`` (ci)."""

    def _parse(self, kw: Kwargs) -> None:
        self.first_word = _str_or_first(kw, "first_word")

    def check(self, text: str) -> bool:
        for sentence in T.split_into_sentences(text):
            if not sentence.strip():
                return False
            if sentence.split()[0].strip().lower() != self.first_word.lower():
                return False
        return True


@register("first_word:first_word_answer", FAMILY)
class FirstWordAnswer(Checker):
    """The response's first whitespace token equals ``first_word`` (ci)."""

    def _parse(self, kw: Kwargs) -> None:
        self.first_word = kw.str("first_word", nonempty=True).strip()

    def check(self, text: str) -> bool:
        words = text.split()
        if not text.strip() or not words:
            return False
        return words[0].strip().lower() == self.first_word.lower()


@register("last_word:last_word_sent", FAMILY)
class LastWordSent(Checker):
    """Every sentence's last token, non-word characters removed, equals ``last_word``."""

    def _parse(self, kw: Kwargs) -> None:
        self.last_word = _str_or_first(kw, "last_word")

    def check(self, text: str) -> bool:
        for sentence in T.split_into_sentences(text):
            if not sentence.strip():
                return False
            last = _NON_WORD_RE.sub("", sentence.split()[-1].strip())
            if last.lower() != self.last_word.lower():
                return False
        return True


@register("last_word:last_word_answer", FAMILY)
class LastWordAnswer(Checker):
    """The response's last token, non-word characters removed, equals ``last_word``."""

    def _parse(self, kw: Kwargs) -> None:
        self.last_word = kw.str("last_word", nonempty=True).strip()

    def check(self, text: str) -> bool:
        last = _NON_WORD_RE.sub("", text.split()[-1].strip())
        return last.lower() == self.last_word.lower()


@register("detectable_format:bigram_wrapping", FAMILY)
class BigramWrapping(Checker):
    """Words 0, 2, 4, … start with "<<" and the following word ends with ">>"."""

    def check(self, text: str) -> bool:
        words = text.split()
        for i in range(0, len(words) - 1, 2):
            if not (words[i].startswith("<<") and words[i + 1].endswith(">>")):
                return False
        return True


@register("copy:copying_simple", FAMILY)
class CopyingSimple(Copy):
    """Exact copy of the request (stripped, case-insensitive)."""


@register("copy:copying_multiple", FAMILY)
class CopyingMultiple(Checker):
    """Splitting on ``******`` gives N parts, each an exact copy (stripped, ci)."""

    def _parse(self, kw: Kwargs) -> None:
        self.prompt_to_repeat = kw.str("prompt_to_repeat", nonempty=True)
        self.N = kw.int("N", minimum=1)

    def check(self, text: str) -> bool:
        parts = text.split("******")
        target = self.prompt_to_repeat.strip().lower()
        return len(parts) == self.N and all(p.strip().lower() == target for p in parts)


@register("punctuation:punctuation_dot", FAMILY)
class PunctuationDot(Checker):
    """No "."."""

    def check(self, text: str) -> bool:
        return "." not in text


@register("punctuation:punctuation_exclamation", FAMILY)
class PunctuationExclamation(Checker):
    """No "!"."""

    def check(self, text: str) -> bool:
        return "!" not in text


@register("count:lowercase_counting", FAMILY)
class LowercaseCounting(Checker):
    """At most N all-lower-case ASCII words (``\\b[a-z]+\\b``)."""

    def _parse(self, kw: Kwargs) -> None:
        self.N = kw.int("N", minimum=0)

    def check(self, text: str) -> bool:
        return len(_LOWER_WORD_RE.findall(text)) <= self.N


@register("letters:letter_counting", FAMILY)
class LetterCounting(Checker):
    """The number of ASCII letters compared by relation."""

    def _parse(self, kw: Kwargs) -> None:
        self.N = kw.int("N", minimum=0)
        self.relation = kw.relation("relation")

    def check(self, text: str) -> bool:
        return compare(len(_ASCII_LETTER_RE.findall(text)), self.relation, self.N)


@register("letters:letter_counting2", FAMILY)
class LetterCounting2(Checker):
    """Same as ``keywords:letter_frequency``."""

    def __init__(self, kwargs=None) -> None:
        from uniapl_mcore.rewards.checkers.ifeval import LetterFrequency

        self._inner = LetterFrequency(kwargs)

    def check(self, text: str) -> bool:
        return self._inner.check(text)


@register("count:counting_composition", FAMILY)
class CountingComposition(Checker):
    """Three ``***`` paragraphs, each of n_sent regex sentences of n_words tokens."""

    def _parse(self, kw: Kwargs) -> None:
        self.n_sent = kw.int("n_sent", minimum=0)
        self.n_words = kw.int("n_words", minimum=0)

    def check(self, text: str) -> bool:
        parts = PARAGRAPH_SPLIT_RE.split(text)
        return count_paragraphs(parts) == 3 and all(self._composed(p) for p in parts)

    def _composed(self, part: str) -> bool:
        """``n_sent`` sentences of ``n_words`` tokens each (an empty edge part too)."""
        sentences = T.split_into_sentences(part)
        return len(sentences) == self.n_sent and \
            all(len(T.word_tokenize(s)) == self.n_words for s in sentences)


@register("count:count_unique", FAMILY)
class CountUnique(Checker):
    """All ``word_tokenize`` tokens are distinct (punctuation tokens included)."""

    def check(self, text: str) -> bool:
        words = T.word_tokenize(text)
        return len(words) == len(set(words))


@register("count:count_increment_word", FAMILY)
class CountIncrementWord(Checker):
    """keyword1 occurs exactly once and keyword2 exactly twice (ci regex)."""

    def _parse(self, kw: Kwargs) -> None:
        self.keyword1 = kw.str("keyword1", nonempty=True).strip()
        self.keyword2 = kw.str("keyword2", nonempty=True).strip()
        self._p1 = compile_regex(self.keyword1, "keyword1", re.IGNORECASE)
        self._p2 = compile_regex(self.keyword2, "keyword2", re.IGNORECASE)

    def check(self, text: str) -> bool:
        return len(self._p1.findall(text)) == 1 and len(self._p2.findall(text)) == 2


@register("keywords:palindrome", FAMILY)
class Palindrome(Checker):
    """Some whitespace word equals its reverse."""

    def check(self, text: str) -> bool:
        return any(w == w[::-1] for w in text.split())


@register("keywords:keyword_specific_position", FAMILY)
class KeywordSpecificPosition(Checker):
    """Token m of regex sentence n (1-based, ``word_tokenize``) equals keyword exactly."""

    def _parse(self, kw: Kwargs) -> None:
        self.keyword = _str_or_first(kw, "keyword")
        self.n = kw.int("n", minimum=1)
        self.m = kw.int("m", minimum=1)

    def check(self, text: str) -> bool:
        sentences = T.split_into_sentences(text)
        if len(sentences) < self.n:
            return False
        words = T.word_tokenize(sentences[self.n - 1])
        if len(words) < self.m:
            return False
        return words[self.m - 1] == self.keyword


@register("keywords:start_end", FAMILY)
class StartEnd(Checker):
    """The first and last ``word_tokenize`` tokens are equal (ci), with ≥ 2 tokens."""

    def check(self, text: str) -> bool:
        words = T.word_tokenize(text)
        return len(words) >= 2 and words[0].lower() == words[-1].lower()
