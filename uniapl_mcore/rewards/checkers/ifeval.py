"""The 25 registered IFEval instructions (google-research ``instruction_following_eval``).

Pass conditions follow the reference exactly, quirks included (raw regex keywords,
"less than" as strict <, unanchored postscript search, ...); see spec §2.  Where the
reference would substitute a random default for a missing or out-of-range kwarg we
raise :class:`ConstraintError` instead (project rule).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from uniapl_mcore.rewards import text as T
from uniapl_mcore.rewards.checkers.base import Checker, ConstraintError, Kwargs, compare, register

FAMILY = "ifeval"

#: ISO 639-1 codes accepted by ``language:response_language`` (the reference table).
LANGUAGE_CODES = {
    "en": "English", "es": "Spanish", "pt": "Portuguese", "ar": "Arabic", "hi": "Hindi",
    "fr": "French", "ru": "Russian", "de": "German", "ja": "Japanese", "it": "Italian",
    "bn": "Bengali", "uk": "Ukrainian", "th": "Thai", "ur": "Urdu", "ta": "Tamil",
    "te": "Telugu", "bg": "Bulgarian", "ko": "Korean", "pl": "Polish", "he": "Hebrew",
    "fa": "Persian", "vi": "Vietnamese", "ne": "Nepali", "sw": "Swahili", "kn": "Kannada",
    "mr": "Marathi", "gu": "Gujarati", "pa": "Punjabi", "ml": "Malayalam", "fi": "Finnish",
}  # fmt: skip

CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

_PLACEHOLDER_RE = re.compile(r"\[.*?\]")
_BULLET_STAR_RE = re.compile(r"^\s*\*[^\*].*$", flags=re.MULTILINE)
_BULLET_DASH_RE = re.compile(r"^\s*-.*$", flags=re.MULTILINE)
_HIGHLIGHT_RE = re.compile(r"\*[^\n\*]*\*")
_DOUBLE_HIGHLIGHT_RE = re.compile(r"\*\*[^\n\*]*\*\*")
PARAGRAPH_SPLIT_RE = re.compile(r"\s?\*\*\*\s?")


def count_paragraphs(parts: list[str]) -> int | None:
    """Paragraph count with empty first/last parts dropped; None if an inner one is empty."""
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                count -= 1
            else:
                return None
    return count
_TITLE_RE = re.compile(r"<<[^\n]+>>")
_COMMA_RE = re.compile(r"\,")
_PPS_RE = re.compile(r"\s*p\.\s?p\.\s?s.*$", flags=re.MULTILINE)
_PS_RE = re.compile(r"\s*p\.\s?s\..*$", flags=re.MULTILINE)


def compile_regex(pattern: str, name: str, flags: int = 0) -> re.Pattern[str]:
    """Compile a raw (unescaped) regex from a kwarg; an invalid one is a load-time error."""
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ConstraintError(f"kwarg '{name}' is not a valid regex ({exc}): {pattern!r}") from None


def _detect_is(text: str, language: str) -> bool:
    """langdetect's verdict; its "no features" exception counts as a pass."""
    try:
        return T.detect_language(text) == language
    except T.LanguageUndetectable:
        return True


@register("language:response_language", FAMILY)
class ResponseLanguage(Checker):
    """The whole response is in ``language`` according to (seeded) langdetect."""

    def _parse(self, kw: Kwargs) -> None:
        self.language = kw.choice("language", tuple(LANGUAGE_CODES))

    def check(self, text: str) -> bool:
        return _detect_is(text, self.language)


@register("length_constraints:number_sentences", FAMILY)
class NumberOfSentences(Checker):
    """Punkt English sentence count compared by relation."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_sentences = kw.int("num_sentences", minimum=0)
        self.relation = kw.relation("relation")

    def check(self, text: str) -> bool:
        return compare(T.count_sentences(text), self.relation, self.num_sentences)


@register("detectable_content:number_placeholders", FAMILY)
class Placeholders(Checker):
    """At least N ``[...]`` spans (shortest match, no newline inside)."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_placeholders = kw.int("num_placeholders", minimum=0)

    def check(self, text: str) -> bool:
        return len(_PLACEHOLDER_RE.findall(text)) >= self.num_placeholders


@register("detectable_format:number_bullet_lists", FAMILY)
class BulletLists(Checker):
    """Exactly N lines starting with ``*`` (then a non-``*``) or ``-``."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_bullets = kw.int("num_bullets", minimum=0)

    def check(self, text: str) -> bool:
        found = len(_BULLET_STAR_RE.findall(text)) + len(_BULLET_DASH_RE.findall(text))
        return found == self.num_bullets


@register("detectable_format:constrained_response", FAMILY)
class ConstrainedResponse(Checker):
    """The stripped response contains one of the three "My answer is ..." options."""

    def check(self, text: str) -> bool:
        text = text.strip()
        return any(option in text for option in CONSTRAINED_RESPONSE_OPTIONS)


@register("detectable_format:number_highlighted_sections", FAMILY)
class HighlightedSections(Checker):
    """Single-asterisk plus double-asterisk highlighted spans, at least N."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_highlights = kw.int("num_highlights", minimum=0)

    def check(self, text: str) -> bool:
        count = sum(1 for h in _HIGHLIGHT_RE.findall(text) if h.strip("*").strip())
        count += sum(
            1 for h in _DOUBLE_HIGHLIGHT_RE.findall(text)
            if h.removeprefix("**").removesuffix("**").strip()
        )  # fmt: skip
        return count >= self.num_highlights


@register("detectable_format:multiple_sections", FAMILY)
class MultipleSections(Checker):
    """Splitting on "<splitter> <digits>" gives at least N sections (raw, case-sensitive)."""

    def _parse(self, kw: Kwargs) -> None:
        self.section_spliter = kw.str("section_spliter").strip()
        self.num_sections = kw.int("num_sections", minimum=0)
        pattern = r"\s?" + self.section_spliter + r"\s?\d+\s?"
        self._pattern = compile_regex(pattern, "section_spliter")

    def check(self, text: str) -> bool:
        return len(self._pattern.split(text)) - 1 >= self.num_sections


@register("length_constraints:number_paragraphs", FAMILY)
class NumberOfParagraphs(Checker):
    """Exactly N paragraphs separated by ``***``; an empty inner paragraph fails."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_paragraphs = kw.int("num_paragraphs", minimum=0)

    def check(self, text: str) -> bool:
        return count_paragraphs(PARAGRAPH_SPLIT_RE.split(text)) == self.num_paragraphs


@register("detectable_content:postscript", FAMILY)
class Postscript(Checker):
    """Some line of the lower-cased response contains the postscript marker."""

    def _parse(self, kw: Kwargs) -> None:
        self.postscript_marker = kw.str("postscript_marker").strip()
        if self.postscript_marker == "P.P.S":
            self._pattern = _PPS_RE
        elif self.postscript_marker == "P.S.":
            self._pattern = _PS_RE
        else:
            pattern = r"\s*" + self.postscript_marker.lower() + r".*$"
            self._pattern = compile_regex(pattern, "postscript_marker", re.MULTILINE)

    def check(self, text: str) -> bool:
        return self._pattern.search(text.lower()) is not None


@register("keywords:existence", FAMILY)
class KeywordsExistence(Checker):
    """Every keyword (raw regex) is found case-insensitively."""

    def _parse(self, kw: Kwargs) -> None:
        self.keywords = sorted(kw.str_list("keywords"))
        self._patterns = [compile_regex(k, "keywords", re.IGNORECASE) for k in self.keywords]

    def check(self, text: str) -> bool:
        return all(p.search(text) for p in self._patterns)


@register("keywords:frequency", FAMILY)
class KeywordFrequency(Checker):
    """Non-overlapping case-insensitive regex matches of ``keyword`` compared by relation."""

    def _parse(self, kw: Kwargs) -> None:
        self.keyword = kw.str("keyword", nonempty=True).strip()
        self.frequency = kw.int("frequency", minimum=0)
        self.relation = kw.relation("relation")
        self._pattern = compile_regex(self.keyword, "keyword", re.IGNORECASE)

    def check(self, text: str) -> bool:
        found = len(self._pattern.findall(text))
        return compare(found, self.relation, self.frequency)


@register("length_constraints:number_words", FAMILY)
class NumberOfWords(Checker):
    """``\\w+`` word count compared by relation."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_words = kw.int("num_words", minimum=0)
        self.relation = kw.relation("relation")

    def check(self, text: str) -> bool:
        return compare(T.count_words(text), self.relation, self.num_words)


def _json_body(text: str) -> str:
    return (
        text.strip()
        .removeprefix("```json")
        .removeprefix("```Json")
        .removeprefix("```JSON")
        .removeprefix("```")
        .removesuffix("```")
        .strip()
    )


@register("detectable_format:json_format", FAMILY)
class JsonFormat(Checker):
    """After removing one leading and one trailing fence, the text parses as JSON."""

    def check(self, text: str) -> bool:
        try:
            json.loads(_json_body(text))
        except ValueError:
            return False
        return True


_FIRST_WORD_STOP = frozenset(".,?!'\"")


@register("length_constraints:nth_paragraph_first_word", FAMILY)
class NthParagraphFirstWord(Checker):
    """Exactly N ``\\n\\n`` paragraphs and paragraph ``nth_paragraph`` starts with the word."""

    def _parse(self, kw: Kwargs) -> None:
        self.num_paragraphs = kw.int("num_paragraphs", minimum=0)
        self.nth_paragraph = kw.int("nth_paragraph", minimum=1)
        if self.nth_paragraph > self.num_paragraphs:
            raise ConstraintError(
                f"kwarg 'nth_paragraph' ({self.nth_paragraph}) exceeds "
                f"'num_paragraphs' ({self.num_paragraphs})"
            )
        self.first_word = kw.str("first_word").lower()

    def check(self, text: str) -> bool:
        paragraphs = text.split("\n\n")
        count = sum(1 for p in paragraphs if p.strip())
        if self.nth_paragraph > count:
            return False
        paragraph = paragraphs[self.nth_paragraph - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
        first = []
        for ch in word:
            if ch in _FIRST_WORD_STOP:
                break
            first.append(ch.lower())
        return count == self.num_paragraphs and "".join(first) == self.first_word


@register("keywords:forbidden_words", FAMILY)
class ForbiddenWords(Checker):
    """No forbidden word occurs as a whole word (``\\b...\\b``, case-insensitive, raw regex)."""

    def _parse(self, kw: Kwargs) -> None:
        self.forbidden_words = sorted(set(kw.str_list("forbidden_words")))
        self._patterns = [
            compile_regex(r"\b" + w + r"\b", "forbidden_words", re.IGNORECASE)
            for w in self.forbidden_words
        ]

    def check(self, text: str) -> bool:
        return not any(p.search(text) for p in self._patterns)


@register("combination:two_responses", FAMILY)
class TwoResponses(Checker):
    """Exactly two different non-empty responses separated by ``******``."""

    def check(self, text: str) -> bool:
        valid = []
        parts = text.split("******")
        for index, part in enumerate(parts):
            if not part.strip():
                if index not in (0, len(parts) - 1):
                    return False
            else:
                valid.append(part)
        return len(valid) == 2 and valid[0].strip() != valid[1].strip()


@register("combination:repeat_prompt", FAMILY)
class RepeatPrompt(Checker):
    """The stripped, lower-cased response starts with the request to repeat."""

    def _parse(self, kw: Kwargs) -> None:
        self.prompt_to_repeat = kw.str("prompt_to_repeat", nonempty=True)
        self._prefix = self.prompt_to_repeat.strip().lower()

    def check(self, text: str) -> bool:
        return text.strip().lower().startswith(self._prefix)


@register("startend:end_checker", FAMILY)
class EndChecker(Checker):
    """The response (quotes and whitespace stripped, lower-cased) ends with the phrase."""

    def _parse(self, kw: Kwargs) -> None:
        self.end_phrase = kw.str("end_phrase").strip()
        self._suffix = self.end_phrase.strip().lower()

    def check(self, text: str) -> bool:
        return text.strip().strip('"').lower().endswith(self._suffix)


@register("detectable_format:title", FAMILY)
class Title(Checker):
    """Some ``<<...>>`` span on one line has non-empty content."""

    def check(self, text: str) -> bool:
        return any(t.lstrip("<").rstrip(">").strip() for t in _TITLE_RE.findall(text))


@register("keywords:letter_frequency", FAMILY)
class LetterFrequency(Checker):
    """Occurrences of ``letter`` in the lower-cased response compared by relation.

    Documented deviation: a non-letter single character is counted literally (the
    Google reference does the same; lm-eval substitutes a random letter).
    """

    def _parse(self, kw: Kwargs) -> None:
        letter = kw.str("letter", nonempty=True)
        if len(letter) > 1:
            raise ConstraintError(f"kwarg 'letter' must be one character, got {letter!r}")
        self.letter = letter.strip().lower()
        self.let_frequency = kw.int("let_frequency", minimum=0)
        self.let_relation = kw.relation("let_relation")

    def check(self, text: str) -> bool:
        return compare(Counter(text.lower())[self.letter], self.let_relation, self.let_frequency)


@register("change_case:english_capital", FAMILY)
class EnglishCapital(Checker):
    """All upper-case (``str.isupper``) and langdetect says English."""

    def check(self, text: str) -> bool:
        return text.isupper() and _detect_is(text, "en")


@register("change_case:english_lowercase", FAMILY)
class EnglishLowercase(Checker):
    """All lower-case (``str.islower``) and langdetect says English."""

    def check(self, text: str) -> bool:
        return text.islower() and _detect_is(text, "en")


@register("punctuation:no_comma", FAMILY)
class NoComma(Checker):
    """No ASCII comma."""

    def check(self, text: str) -> bool:
        return _COMMA_RE.search(text) is None


@register("change_case:capital_word_frequency", FAMILY)
class CapitalWordFrequency(Checker):
    """All-upper-case ``nltk.word_tokenize`` tokens compared by relation."""

    def _parse(self, kw: Kwargs) -> None:
        self.capital_frequency = kw.int("capital_frequency")
        self.capital_relation = kw.relation("capital_relation")

    def check(self, text: str) -> bool:
        count = sum(1 for w in T.word_tokenize(text) if w.isupper())
        return compare(count, self.capital_relation, self.capital_frequency)


@register("startend:quotation", FAMILY)
class Quotation(Checker):
    """The stripped response is longer than 1 and starts and ends with ``"``."""

    def check(self, text: str) -> bool:
        text = text.strip()
        return len(text) > 1 and text[0] == '"' and text[-1] == '"'


IFEVAL_IDS = (
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words",
    "keywords:letter_frequency", "language:response_language",
    "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "combination:repeat_prompt", "startend:end_checker", "change_case:capital_word_frequency",
    "change_case:english_capital", "change_case:english_lowercase", "punctuation:no_comma",
    "startend:quotation",
)  # fmt: skip
