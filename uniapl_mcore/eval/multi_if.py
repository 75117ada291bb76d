"""Multi-IF scoring: multi-turn, multilingual instruction following (facebookresearch/Multi-IF).

``--data`` is the ``facebook/Multi-IF`` table, as its CSV (``multiIF_20241018.csv``) or
as JSONL with the same columns: ``key`` (e.g. "1000:1:zh"), ``language`` (e.g.
"Chinese"), and per turn ``t`` = 1, 2, 3: ``turn_t_prompt`` (a JSON string
``{"role", "content"}``; "None" or empty when the conversation has no such turn),
``turn_t_instruction_id_list`` (a JSON string list) and ``turn_t_kwargs`` (a JSON list
of JSON strings, one per instruction: double-encoded).  Already-decoded values are
accepted too.  Each turn is scored against its own instruction list as stored (in the
public data, later turns repeat the earlier turns' instructions).

``--responses`` is JSONL (or the reference harness's per-step CSV), one row per
answered turn, in any of these forms:

* ``{"key": ..., "turn": t, "response": "..."}``;
* ``{"key": ..., "responses": ["turn 1 answer", "turn 2 answer", ...]}``;
* the reference's step output: ``key``, ``turn_index`` and ``responses`` (a string,
  possibly JSON ``[{"response": ...}]`` as the reference unpacks it).

Scoring follows the reference's ``metrics.py``: strict = the response is non-empty
(**not** stripped) and the checker passes; loose = the eight IFEval variants, each
non-empty after stripping; Multi-IF's per-language word/sentence counts and quotation
marks (:mod:`uniapl_mcore.rewards.checkers.multi_if`).  For every turn and language
(plus ``all_languages``) we report the four IFEval metrics and their mean, which is
Multi-IF's headline number (``turn_t_<language>_overall``).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniapl_mcore.data.jsonl import read_jsonl
from uniapl_mcore.eval.ifeval import (
    METRIC_NAMES,
    EvalDataError,
    RowResult,
    compute_metrics,
    run_metadata,
    write_outputs,
)
from uniapl_mcore.rewards import multilingual as M
from uniapl_mcore.rewards.checkers import ConstraintError
from uniapl_mcore.rewards.checkers.base import Checker
from uniapl_mcore.rewards.checkers.multi_if import build_multi_if_checker
from uniapl_mcore.rewards.pool import ChunkPool
from uniapl_mcore.rewards.verdicts import Constraint, loose_verdicts

logger = logging.getLogger(__name__)

#: The most turns a Multi-IF conversation has.
MAX_TURNS = 3
#: The group holding every language (the reference's name).
ALL_LANGUAGES = "all_languages"

#: Where Multi-IF scores from this module may differ from the reference harness.
MULTI_IF_DEVIATIONS = (
    "langdetect is seeded for the per-language word/sentence counts too (the reference "
    "calls an unseeded langdetect.detect, so its counts can vary between runs)",
    "bootstrap confidence intervals (scipy.stats.bootstrap, unseeded) are not computed",
    "a turn whose instruction list or kwargs cannot be parsed is an error naming the row "
    "(the reference skips such a turn silently); turns whose prompt is 'None' or empty "
    "are skipped, as in the reference",
    "Thai counts use pythainlp's default engines (newmm words, crfcut sentences) from the "
    "pinned pythainlp; the reference does not pin pythainlp, whose dictionary may change",
    "Chinese/Japanese emoji counts use the pinned 'emoji' package (unpinned in the reference)",
)


@dataclass(frozen=True)
class TurnRow:
    """One turn of one conversation, with its positional constraints."""

    key: str
    language: str
    turn: int
    constraints: tuple[Constraint, ...]

    @property
    def instruction_id_list(self) -> list[str]:
        """The instruction ids in order (repeats kept)."""
        return [c.id for c in self.constraints]


@dataclass(frozen=True)
class TurnResult(RowResult):
    """Strict and loose verdicts of one turn."""

    turn: int = 0
    language: str = ""

    def to_json(self) -> dict[str, Any]:
        """The ``results.jsonl`` record."""
        return {"key": self.key, "turn": self.turn, "language": self.language,
                "instruction_id_list": self.instruction_id_list, **super().to_json()}  # fmt: skip


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def _read_table(path: str | Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """Rows of a CSV (by suffix) or JSONL file, with their line numbers."""
    if str(path).lower().endswith(".csv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield reader.line_num, row
        return
    yield from read_jsonl(path, EvalDataError)


def _decode(value: Any, where: str, name: str) -> Any:
    """A JSON-encoded field (a string) decoded once; other values pass through."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise EvalDataError(f"{where}: '{name}' is not valid JSON ({exc})") from None


def _has_turn(row: Mapping[str, Any], turn: int) -> bool:
    prompt = row.get(f"turn_{turn}_prompt")
    return prompt is not None and prompt != "None" and str(prompt) != ""


def _turn_constraints(row: Mapping[str, Any], turn: int, where: str) -> tuple[Constraint, ...]:
    ids_name, kwargs_name = f"turn_{turn}_instruction_id_list", f"turn_{turn}_kwargs"
    ids = _decode(row.get(ids_name), where, ids_name)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise EvalDataError(f"{where}: '{ids_name}' must be a list of strings")
    kwargs = _decode(row.get(kwargs_name), where, kwargs_name)
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise EvalDataError(
            f"{where}: '{kwargs_name}' must be a list with one entry per instruction "
            f"({len(ids)} ids)"
        )
    constraints = []
    for index, (iid, raw) in enumerate(zip(ids, kwargs, strict=True)):
        kw = _decode(raw, where, f"{kwargs_name}[{index}]")
        if kw is not None and not isinstance(kw, dict):
            raise EvalDataError(f"{where}: {kwargs_name}[{index}] must be an object or null")
        clean = {k: v for k, v in (kw or {}).items() if v is not None}
        constraints.append(Constraint(iid, clean))
    return tuple(constraints)


def build_turn_checkers(row: TurnRow, where: str = "") -> list[Checker]:
    """Build (and so validate) the Multi-IF checkers of one turn."""
    return [
        build_multi_if_checker(c.id, c.kwargs, f"{where} constraint {index}".strip())
        for index, c in enumerate(row.constraints)
    ]


def parse_conversation(obj: Mapping[str, Any], where: str) -> list[TurnRow]:
    """The turns of one Multi-IF row (validated, checkers built)."""
    for field in ("key", "language"):
        if field not in obj:
            raise EvalDataError(f"{where}: missing field '{field}'")
    key, language = str(obj["key"]), str(obj["language"])
    turns = []
    for turn in range(1, MAX_TURNS + 1):
        if not _has_turn(obj, turn):
            continue
        at = f"{where} (key {key!r}) turn {turn}"
        row = TurnRow(key, language, turn, _turn_constraints(obj, turn, at))
        try:
            build_turn_checkers(row, at)
        except ConstraintError as exc:
            raise EvalDataError(str(exc)) from None
        turns.append(row)
    return turns


def load_data(path: str | Path) -> list[TurnRow]:
    """Load and validate ``--data`` (Multi-IF CSV or JSONL): one entry per turn."""
    rows: list[TurnRow] = []
    seen: set[str] = set()
    for lineno, obj in _read_table(path):
        turns = parse_conversation(obj, f"{path}:{lineno}")
        if turns and turns[0].key in seen:
            raise EvalDataError(f"{path}:{lineno}: duplicate key {turns[0].key!r}")
        seen.update(t.key for t in turns)
        rows.extend(turns)
    logger.info("loaded %d Multi-IF turns (%d conversations) from %s", len(rows), len(seen), path)
    return rows


def _reference_response(value: Any) -> str:
    """The reference's unpacking: ``json.loads(v)[0]['response']``, else ``str(v)``."""
    try:
        return str(json.loads(value)[0]["response"])
    except Exception:  # noqa: BLE001 - mirrors the reference's bare except
        return str(value)


def _response_entries(obj: Mapping[str, Any], where: str) -> list[tuple[int, str]]:
    """(turn, response) pairs of one ``--responses`` row."""
    if "turn" in obj and "response" in obj:
        turn, response = obj["turn"], obj["response"]
        if isinstance(turn, str) and turn.isdigit():
            turn = int(turn)
        if isinstance(turn, bool) or not isinstance(turn, int) or not isinstance(response, str):
            raise EvalDataError(f"{where}: 'turn' must be an integer and 'response' a string")
        return [(turn, response)]
    responses = obj.get("responses")
    if isinstance(responses, list):
        if not all(isinstance(r, str) for r in responses):
            raise EvalDataError(f"{where}: 'responses' must be a list of strings")
        return [(index + 1, r) for index, r in enumerate(responses)]
    if "turn_index" in obj and responses is not None:
        try:
            turn = int(obj["turn_index"])
        except (TypeError, ValueError):
            raise EvalDataError(f"{where}: 'turn_index' must be an integer") from None
        return [(turn, _reference_response(responses))]
    raise EvalDataError(
        f"{where}: expected 'turn' + 'response', a 'responses' list, or 'turn_index' + 'responses'"
    )


def load_responses(paths: str | Path | Sequence[str | Path]) -> dict[tuple[str, int], str]:
    """Load ``--responses`` file(s) as (key, turn) → response; duplicates are errors."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: dict[tuple[str, int], str] = {}
    origin: dict[tuple[str, int], str] = {}
    for path in paths:
        for lineno, obj in _read_table(path):
            where = f"{path}:{lineno}"
            if "key" not in obj:
                raise EvalDataError(f"{where}: missing field 'key'")
            for turn, response in _response_entries(obj, where):
                ident = (str(obj["key"]), turn)
                if ident in out:
                    raise EvalDataError(
                        f"{where}: a second response for key {ident[0]!r} turn {turn} "
                        f"(first at {origin[ident]})"
                    )
                out[ident], origin[ident] = response, where
    return out


def match_responses(
    rows: Sequence[TurnRow],
    responses: Mapping[tuple[str, int], str],
    allow_missing: bool = False,
) -> list[str]:
    """The response of each turn; a missing one is an error unless ``allow_missing``
    (then it is "" and fails every instruction)."""
    out = []
    for row in rows:
        response = responses.get((row.key, row.turn))
        if response is None:
            if not allow_missing:
                raise EvalDataError(f"no response for key {row.key!r} turn {row.turn}")
            logger.warning("no response for key %r turn %d: all its instructions fail",
                           row.key, row.turn)  # fmt: skip
            response = ""
        out.append(response)
    return out


# ---------------------------------------------------------------------------------------
# Verdicts and metrics
# ---------------------------------------------------------------------------------------


def multi_if_strict(checkers: Sequence[Checker], response: str) -> list[bool]:
    """Multi-IF strict: the response is non-empty (not stripped) and the checker passes."""
    return [bool(response) and bool(c.check(response)) for c in checkers]


def evaluate_turn(row: TurnRow, response: str) -> TurnResult:
    """Strict and loose verdicts of one turn."""
    checkers = build_turn_checkers(row)
    strict = multi_if_strict(checkers, response)
    # The loose first variant (the response itself) must be non-empty after stripping;
    # only then does it equal the strict verdict.
    loose = loose_verdicts(checkers, response, strict if response.strip() else None)
    return TurnResult(row.key, row.instruction_id_list, strict, loose, row.turn, row.language)


def _evaluate_chunk(chunk: Sequence[tuple[TurnRow, str]]) -> list[TurnResult]:
    return [evaluate_turn(row, response) for row, response in chunk]


def evaluate(
    rows: Sequence[TurnRow],
    responses: Sequence[str],
    num_workers: int = 0,
    chunk_size: int = 32,
    start_method: str = "forkserver",
) -> list[TurnResult]:
    """Verdicts for every turn, optionally across ``num_workers`` CPU processes."""
    M.check_resources()
    pairs = list(zip(rows, responses, strict=True))
    with ChunkPool(num_workers, chunk_size, start_method) as pool:
        return pool.map(_evaluate_chunk, pairs)


def overall(metrics: Mapping[str, Any]) -> float:
    """Multi-IF's headline number: the mean of the four metrics, in the reference order."""
    values = [metrics[name] for name in METRIC_NAMES]
    return sum(values) / len(values)


def _group_metrics(results: Sequence[TurnResult], detailed: bool) -> dict[str, Any]:
    full = compute_metrics(results)
    out: dict[str, Any] = {name: full[name] for name in METRIC_NAMES}
    out["overall"] = overall(full)
    out["num_prompts"] = full["num_prompts"]
    out["num_instructions"] = full["num_instructions"]
    if detailed:
        out["per_category"] = full["per_category"]
        out["per_instruction"] = full["per_instruction"]
    return out


def compute_multi_if_metrics(results: Sequence[TurnResult]) -> dict[str, Any]:
    """Per turn, per language (and ``all_languages``): the four metrics and their mean.

    ``summary`` repeats the headline numbers under the reference's key names
    (``turn_t_prompts_number``, ``turn_t_<language>_overall``).
    """
    by_turn: dict[int, list[TurnResult]] = defaultdict(list)
    for r in results:
        by_turn[r.turn].append(r)
    turns: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for turn in sorted(by_turn):
        group = by_turn[turn]
        by_language: dict[str, list[TurnResult]] = defaultdict(list)
        for r in group:
            by_language[r.language].append(r)
        entry = {ALL_LANGUAGES: _group_metrics(group, detailed=True)}
        for language in sorted(by_language):
            entry[language] = _group_metrics(by_language[language], detailed=False)
        turns[str(turn)] = entry
        summary[f"turn_{turn}_prompts_number"] = len(group)
        for language, metrics in entry.items():
            summary[f"turn_{turn}_{language}_overall"] = metrics["overall"]
    return {"benchmark": "multi-if", "turns": turns, "summary": summary}


def multi_if_metadata() -> dict[str, Any]:
    """Run metadata: the IFEval metadata plus Multi-IF's packages and deviations."""
    import importlib.metadata as md

    meta = run_metadata()
    for name in ("pythainlp", "python-crfsuite", "emoji"):
        try:
            meta[f"{name.replace('-', '_')}_version"] = md.version(name)
        except md.PackageNotFoundError:
            meta[f"{name.replace('-', '_')}_version"] = None
    meta["deviations"] = list(meta["deviations"]) + list(MULTI_IF_DEVIATIONS)
    meta["headline_metric"] = "overall = mean of " + ", ".join(METRIC_NAMES)
    return meta


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------


def format_table(metrics: Mapping[str, Any]) -> str:
    """Overall (mean of the four metrics) per language × turn, then each turn's metrics."""
    turns = sorted(metrics["turns"], key=int)
    languages = [ALL_LANGUAGES] + sorted(
        {lang for t in turns for lang in metrics["turns"][t]} - {ALL_LANGUAGES}
    )
    header = f"{'overall (mean of 4 metrics)':<30}" + "".join(f"{'turn ' + t:>10}" for t in turns)
    lines = [header, "-" * len(header)]
    for language in languages:
        cells = []
        for t in turns:
            m = metrics["turns"][t].get(language)
            cells.append(f"{m['overall']:>10.4f}" if m else f"{'-':>10}")
        lines.append(f"{language:<30}" + "".join(cells))
    lines += ["", f"{'metric (all_languages)':<30}" + "".join(f"{'turn ' + t:>10}" for t in turns)]
    lines.append("-" * len(lines[-1]))
    for name in (*METRIC_NAMES, "num_prompts", "num_instructions"):
        cells = []
        for t in turns:
            value = metrics["turns"][t][ALL_LANGUAGES][name]
            cells.append(f"{value:>10.4f}" if isinstance(value, float) else f"{value:>10}")
        lines.append(f"{name:<30}" + "".join(cells))
    return "\n".join(lines)


def run_multi_if(
    data: str | Path,
    responses: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    num_workers: int = 0,
    allow_missing: bool = False,
    turns: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Load, evaluate, write outputs; returns the metrics (with ``meta``).

    ``turns`` restricts scoring to those turn numbers (default: every turn in the data).
    """
    rows = load_data(data)
    if turns:
        rows = [r for r in rows if r.turn in set(turns)]
    answers = load_responses(responses)
    unused = len(set(answers) - {(r.key, r.turn) for r in rows})
    if unused:
        logger.info("%d response(s) match no scored turn and are ignored", unused)
    texts = match_responses(rows, answers, allow_missing)
    results = evaluate(rows, texts, num_workers=num_workers)
    metrics = compute_multi_if_metrics(results)
    metrics["meta"] = multi_if_metadata()
    write_outputs(out_dir, results, metrics)
    return metrics
