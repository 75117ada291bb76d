"""Loading public instruction-following datasets into unified rows with ``datasets``.

Per source (:class:`~uniapl_mcore.data.config.DataSourceConfig`):

1. read each local file (JSONL/JSON/Parquet/CSV) with ``datasets.load_dataset`` — or the
   Hub dataset when no local path matches (needs a network);
2. normalise with ``Dataset.map`` under an explicit fingerprint (the raw table's
   fingerprint, the adapter version, the checker registry and the options), so the
   normalised table is written once to the ``datasets`` cache and reused on later runs
   and epochs instead of being recomputed;
3. collect bad rows (missing field, unknown instruction id, bad kwargs, ...): each is
   reported as ``<file> row <index>: <reason>`` (index = 0-based record index in the file);
   ``on_bad_row="fail"`` raises at once, ``"skip"`` drops and counts them;
4. join teacher responses by unified row id (``teacher_files``), also cached.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniapl_mcore.data.config import DataSourceConfig
from uniapl_mcore.data.formats import adapt, records_of
from uniapl_mcore.data.jsonl import read_jsonl
from uniapl_mcore.data.schema import DataError, Row, parse_teacher, row_features, validate_row
from uniapl_mcore.rewards.checkers import REGISTRY, ConstraintError
from uniapl_mcore.rewards.config import RewardConfig

logger = logging.getLogger(__name__)

#: Bump when an adapter's output changes: it invalidates cached normalised tables.
NORMALIZE_VERSION = "1"
_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
#: How many bad-row messages a report keeps (all are counted).
MAX_REPORTED = 20


@dataclass
class SourceReport:
    """What loading one source did (counts are rows unless named otherwise)."""

    name: str
    records: int = 0
    rows: int = 0
    bad_rows: int = 0
    bad_reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    teacher_joined: int = 0
    teacher_orphans: int = 0

    def add_bad(self, message: str, reason: str) -> None:
        self.bad_rows += 1
        self.bad_reasons[reason] += 1
        if len(self.examples) < MAX_REPORTED:
            self.examples.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "records": self.records, "rows": self.rows,
                "bad_rows": self.bad_rows, "bad_reasons": dict(self.bad_reasons),
                "teacher_joined": self.teacher_joined, "teacher_orphans": self.teacher_orphans}


# ---------------------------------------------------------------------------------- files


def resolve_files(path: str) -> list[str]:
    """Local files named by ``path`` (a file, a directory or a glob); [] when none."""
    p = Path(path).expanduser()
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.suffix in _EXTENSIONS and f.is_file())
    return sorted(f for f in glob.glob(str(p)) if Path(f).suffix in _EXTENSIONS)


def _looks_local(path: str) -> bool:
    """A path (not a Hub ``owner/name``): it exists, has a file suffix, or looks like one."""
    return (os.path.exists(path) or Path(path).suffix in _EXTENSIONS
            or path.startswith((".", "/", "~")) or any(c in path for c in "*?[")
            or path.count("/") != 1)


def _file_type(file: str, file_type: str) -> str:
    if file_type != "auto":
        return file_type
    try:
        return _EXTENSIONS[Path(file).suffix]
    except KeyError:
        raise DataError(f"{file}: unknown file type (use .jsonl/.json/.parquet/.csv or set "
                        "file_type)") from None


def read_raw(file: str, file_type: str = "auto", cache_dir: str | None = None):
    """One local file as a ``datasets.Dataset`` (cached as Arrow by ``datasets``)."""
    from datasets import load_dataset

    builder = _file_type(file, file_type)
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        kwargs["keep_default_na"] = False  # empty cells stay "" (Multi-IF's empty turns)
    try:
        return load_dataset(builder, data_files=[file], split="train", cache_dir=cache_dir,
                            **kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for unreadable files
        raise DataError(f"{file}: cannot be read as {builder} ({type(exc).__name__}: {exc})") \
            from exc


def read_hub(src: DataSourceConfig, cache_dir: str | None = None):
    """The Hub dataset ``src.path`` (config ``src.name``, split ``src.hub_split``)."""
    from datasets import load_dataset

    logger.info("loading %s (%s) split %s from the Hub", src.path, src.name, src.hub_split)
    return load_dataset(src.path, src.name, split=src.hub_split, cache_dir=cache_dir)


# --------------------------------------------------------------------------- normalising


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _registry_digest() -> str:
    return _digest(sorted(f"{k}:{v.__module__}.{v.__qualname__}" for k, v in REGISTRY.items()))


def normalized_features():
    """Row features plus ``error`` ("" when fine) and ``record_index`` columns."""
    from datasets import Value

    features = row_features()
    features["error"] = Value("string")
    features["record_index"] = Value("int64")
    return features


_EMPTY = {"id": "", "source": "", "split": "train", "messages": [], "prompt": "",
          "constraints": "[]", "verifier": "none", "eval_funcs": [], "reference_response": None,
          "teacher_responses": "[]", "meta": "{}", "origin": ""}


def _normalize_record(record: Mapping[str, Any], index: int, fmt: str, split: str,
                      origin: str, needs_verifier: bool, code_ok: bool) -> list[dict[str, Any]]:
    """Unified records (with ``error``) for one raw record; never raises."""
    where = f"{origin} row {index}"
    try:
        rows = adapt(fmt, record, split)
        for row in rows:
            validate_row(row, RewardConfig(code_verifiers_enabled=code_ok),
                         needs_verifier=needs_verifier)
    except (ConstraintError, KeyError, TypeError, ValueError) as exc:
        reason = str(exc) if not isinstance(exc, KeyError) else f"missing field {exc}"
        return [{**_EMPTY, "origin": where, "error": reason, "record_index": index}]
    if not rows:
        return []
    out = []
    for row in rows:
        rec = dataclasses.replace(row, origin=where).to_record()
        out.append({**rec, "error": "", "record_index": index})
    return out


def _normalize_batch(batch: Mapping[str, Sequence[Any]], indices: Sequence[int], fmt: str,
                     split: str, origin: str, needs_verifier: bool,
                     code_ok: bool) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {name: [] for name in (*_EMPTY, "error", "record_index")}
    for record, index in zip(records_of(batch), indices, strict=True):
        for rec in _normalize_record(record, index, fmt, split, origin, needs_verifier,
                                     code_ok):
            for name, value in rec.items():
                out[name].append(value)
    return out


def normalize(raw, src: DataSourceConfig, origin: str, reward: RewardConfig,
              num_proc: int | None = None):
    """Map raw records to unified records (cached by fingerprint; see the module doc)."""
    needs_verifier = src.use in ("pref", "both", "eval")
    code_ok = reward.code_verifiers_enabled
    fingerprint = _digest("normalize", NORMALIZE_VERSION, raw._fingerprint, src.format,
                          src.split, origin, needs_verifier, code_ok, _registry_digest())
    return raw.map(
        _normalize_batch, batched=True, with_indices=True, remove_columns=raw.column_names,
        features=normalized_features(), new_fingerprint=fingerprint,
        fn_kwargs={"fmt": src.format, "split": src.split, "origin": origin,
                   "needs_verifier": needs_verifier, "code_ok": code_ok},
        num_proc=num_proc if num_proc and len(raw) >= 2 * num_proc else None,
        desc=f"normalise {Path(origin).name}",
    )


def reason_kind(reason: str) -> str:
    """A short category for counting bad rows ("unknown instruction id", ...)."""
    for kind in ("unknown instruction id", "missing required kwarg", "must be", "missing field",
                 "duplicate id", "prompt has", "no reference or teacher", "not valid JSON",
                 "code verifier", "no constraints"):
        if kind in reason:
            return kind
    return "other"


def split_bad_rows(table, report: SourceReport, on_bad_row: str):
    """Report the rows whose ``error`` is set; raise (``fail``) or drop them (``skip``)."""
    errors = list(table["error"])
    bad = [i for i, e in enumerate(errors) if e]
    if not bad:
        return table.remove_columns(["error", "record_index"])
    origins = table.select(bad)["origin"]
    for i, origin in zip(bad, origins, strict=True):
        report.add_bad(f"{origin}: {errors[i]}", reason_kind(errors[i]))
    if on_bad_row == "fail":
        first = report.examples[0]
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise DataError(f"bad row: {first}{more}; set data.on_bad_row=skip to skip and count")
    keep = sorted(set(range(len(errors))) - set(bad))
    logger.warning("%s: skipped %d bad rows: %s", report.name, len(bad),
                   dict(report.bad_reasons))
    return table.select(keep).remove_columns(["error", "record_index"])


def flag_duplicate_ids(table) -> list[int]:
    """Indices of rows whose id already appeared earlier (the later copies)."""
    seen: set[str] = set()
    dups = []
    for i, row_id in enumerate(table["id"]):
        if row_id in seen:
            dups.append(i)
        seen.add(row_id)
    return dups


def drop_duplicates(table, report: SourceReport, on_bad_row: str):
    """Duplicate ids make the teacher join ambiguous: they are bad rows."""
    dups = flag_duplicate_ids(table)
    if not dups:
        return table
    rows = table.select(dups)
    for origin, row_id in zip(rows["origin"], rows["id"], strict=True):
        report.add_bad(f"{origin}: duplicate id {row_id!r}", "duplicate id")
    if on_bad_row == "fail":
        raise DataError(f"bad row: {report.examples[-len(dups)]}; set data.on_bad_row=skip "
                        "to skip and count")
    return table.select(sorted(set(range(len(table))) - set(dups)))


# ---------------------------------------------------------------------------- teachers


def read_teacher_file(path: str) -> dict[str, list[dict[str, Any]]]:
    """Teacher JSONL: ``{"id", "text", "model"?, "sampling"?}`` per line, grouped by id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for lineno, obj in read_jsonl(path, DataError):
        try:
            if "id" not in obj:
                raise ConstraintError("missing field 'id'")
            teacher = parse_teacher(obj).to_json()
        except (ConstraintError, TypeError) as exc:
            raise DataError(f"{path} line {lineno}: bad teacher response ({exc})") from None
        out.setdefault(str(obj["id"]), []).append(teacher)
    return out


def _join_batch(batch: Mapping[str, Sequence[Any]],
                teachers: Mapping[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    joined = []
    for row_id, existing in zip(batch["id"], batch["teacher_responses"], strict=True):
        extra = teachers.get(row_id, [])
        joined.append(json.dumps(json.loads(existing) + extra, ensure_ascii=False)
                      if extra else existing)
    return {"teacher_responses": joined}


def join_teachers(table, files: Sequence[str], report: SourceReport):
    """Append teacher responses from ``files`` to rows with the same id (cached map)."""
    teachers: dict[str, list[dict[str, Any]]] = {}
    digests = []
    for path in files:
        digests.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        for row_id, items in read_teacher_file(path).items():
            teachers.setdefault(row_id, []).extend(items)
    ids = set(table["id"])
    report.teacher_joined = sum(len(v) for k, v in teachers.items() if k in ids)
    orphans = [k for k in teachers if k not in ids]
    report.teacher_orphans = len(orphans)
    if orphans:
        logger.warning("%s: %d teacher ids match no row (e.g. %r)", report.name, len(orphans),
                       orphans[0])
    fingerprint = _digest("teachers", table._fingerprint, digests)
    return table.map(_join_batch, batched=True, fn_kwargs={"teachers": teachers},
                     new_fingerprint=fingerprint, desc="join teachers")


# ---------------------------------------------------------------------------------- main


def load_source(src: DataSourceConfig, reward: RewardConfig | None = None,
                on_bad_row: str = "fail", cache_dir: str | None = None,
                num_proc: int | None = None):
    """Load one source into a table of unified row records.

    Returns ``(datasets.Dataset, SourceReport)``; rows follow file order, files in sorted
    order. Raises :class:`DataError` naming file, row and reason on a bad row (``fail``).
    """
    from datasets import concatenate_datasets

    reward = reward or RewardConfig()
    report = SourceReport(name=src.path)
    files = resolve_files(src.path)
    parts = []
    if files:
        for file in files:
            raw = read_raw(file, src.file_type, cache_dir)
            report.records += len(raw)
            parts.append(normalize(raw, src, file, reward, num_proc))
    elif _looks_local(src.path):
        raise DataError(f"{src.path}: no .jsonl/.json/.parquet/.csv files found")
    else:
        raw = read_hub(src, cache_dir)
        report.records += len(raw)
        parts.append(normalize(raw, src, f"{src.path}[{src.hub_split}]", reward, num_proc))
    table = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    table = split_bad_rows(table, report, on_bad_row)
    table = drop_duplicates(table, report, on_bad_row)
    if src.teacher_files:
        table = join_teachers(table, src.teacher_files, report)
    if src.max_rows is not None and len(table) > src.max_rows:
        table = table.select(range(src.max_rows))
    report.rows = len(table)
    logger.info("loaded %s: %d rows from %d records (%d bad)", src.path, report.rows,
                report.records, report.bad_rows)
    return table, report


class RowTable:
    """Unified rows backed by a ``datasets.Dataset``; ``table[i]`` is a :class:`Row`."""

    def __init__(self, table) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Row:
        return Row.from_record(self.table[int(index)])

    def rows(self, indices: Sequence[int]) -> list[Row]:
        """Rows at ``indices`` (one Arrow read)."""
        if len(indices) == 0:
            return []
        batch = self.table.select([int(i) for i in indices])
        return [Row.from_record(rec) for rec in batch]

    def __iter__(self):
        for rec in self.table:
            yield Row.from_record(rec)


def write_jsonl(rows: Sequence[Row], path: str | Path) -> None:
    """Write rows in the unified (nested) JSONL form, one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
