"""The whole data pipeline for a run: sources → rows → token ids → pools → sampler.

:func:`build_data` loads every source (cached normalisation, bad-row policy, teacher join),
tokenises prompts and SFT targets with the tokenizer's chat template (a cached ``map`` keyed
by the tokenizer and templating settings), applies the truncation policy, and forms the
two pools the mixed sampler draws from:

* **SFT pool**: rows of sources with ``use`` ``sft``/``both`` that have a target response;
* **PREF pool**: rows of sources with ``use`` ``pref``/``both`` (each has a verifier).

The trainer then asks :meth:`DataBundle.sampler` for global batches, shards them over
data-parallel ranks, turns SFT indices into :class:`PackItem` s
(:meth:`DataBundle.sft_items`) and PREF indices into rows + prompt ids for rollouts
(:meth:`DataBundle.pref_rows`, :meth:`DataBundle.prompt_ids`). The trainer cuts each
step's rows into micro-batches itself (``data.micro_batch_tokens``,
:mod:`uniapl_mcore.trainer.experience`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from uniapl_mcore.data.config import DataConfig, DataSourceConfig
from uniapl_mcore.data.conflicts import conflicting_pairs
from uniapl_mcore.data.loaders import (
    RowTable,
    SourceReport,
    _digest,
    load_source,
    reason_kind,
)
from uniapl_mcore.data.packing import PackItem
from uniapl_mcore.data.sampler import MixedBatchSampler
from uniapl_mcore.data.schema import DataError, Row
from uniapl_mcore.data.templating import (
    ChatTemplater,
    SFTExample,
    TruncationStats,
    apply_truncation,
    join_example,
    pick_target,
)
from uniapl_mcore.rewards.config import RewardConfig

logger = logging.getLogger(__name__)

TOKENIZE_VERSION = "1"


def token_features():
    """Columns the tokenisation map adds to a row table."""
    from datasets import List, Value

    return {"prompt_ids": List(Value("int32")), "target_ids": List(Value("int32")),
            "target_kind": Value("string"), "target_status": Value("string"),
            "token_error": Value("string")}


def _tokenize_batch(batch: Mapping[str, Sequence[Any]], templater: ChatTemplater,
                    cfg: DataConfig, feeds_sft: bool, require_target: bool
                    ) -> dict[str, list[Any]]:
    """Prompt ids, SFT target ids and flags for a batch of row records."""
    import json

    out: dict[str, list[Any]] = {k: [] for k in token_features()}
    for messages, teachers, reference in zip(batch["messages"], batch["teacher_responses"],
                                             batch["reference_response"], strict=True):
        prompt_ids = templater.encode_prompt(messages)
        error, target_ids, kind, status = "", [], "", ""
        if len(prompt_ids) > cfg.max_prompt_tokens:
            error = (f"prompt has {len(prompt_ids)} tokens, over the budget "
                     f"max_prompt_tokens={cfg.max_prompt_tokens}")
        elif feeds_sft:
            texts = [t["text"] for t in json.loads(teachers)]
            text, kind = pick_target(texts, reference, cfg.sft_target, cfg.sft_target_fallback)
            if text:
                target_ids, status = apply_truncation(templater.encode_target(text),
                                                      cfg.max_response_tokens, cfg.truncation)
            elif require_target:
                error = "no reference or teacher response (needed for SFT)"
        out["prompt_ids"].append(prompt_ids)
        out["target_ids"].append(target_ids)
        out["target_kind"].append(kind)
        out["target_status"].append(status)
        out["token_error"].append(error)
    return out


def tokenize_table(table, templater: ChatTemplater, cfg: DataConfig, src: DataSourceConfig):
    """Add token columns to a row table (a ``datasets`` map cached by fingerprint)."""
    from datasets import Features

    options = [cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.truncation, cfg.sft_target,
               cfg.sft_target_fallback]
    fingerprint = _digest("tokenize", TOKENIZE_VERSION, table._fingerprint,
                          templater.fingerprint(), options, src.use)
    features = Features({**table.features, **token_features()})
    return table.map(
        _tokenize_batch, batched=True, features=features, new_fingerprint=fingerprint,
        fn_kwargs={"templater": templater, "cfg": cfg, "feeds_sft": src.feeds_sft,
                   "require_target": src.use == "sft"},
        num_proc=cfg.num_proc if cfg.num_proc and len(table) >= 2 * cfg.num_proc else None,
        desc="tokenise",
    )


def _drop_token_errors(table, report: SourceReport, on_bad_row: str) -> tuple[Any, int]:
    """Report/raise/drop rows the tokenisation flagged; returns (table, prompts over budget)."""
    errors = list(table["token_error"])
    bad = [i for i, e in enumerate(errors) if e]
    over = sum(errors[i].startswith("prompt has") for i in bad)
    if bad:
        origins = table.select(bad)["origin"]
        for i, origin in zip(bad, origins, strict=True):
            report.add_bad(f"{origin}: {errors[i]}", reason_kind(errors[i]))
        if on_bad_row == "fail":
            more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
            raise DataError(f"bad row: {origins[0]}: {errors[bad[0]]}{more}; set "
                            "data.on_bad_row=skip to skip and count")
        logger.warning("%s: skipped %d rows at tokenisation: %s", report.name, len(bad),
                       dict(report.bad_reasons))
        table = table.select(sorted(set(range(len(table))) - set(bad)))
    return table.remove_columns(["token_error"]), over


def _count(stats: TruncationStats, table, src: DataSourceConfig, dropped: int) -> None:
    statuses = list(table["target_status"])
    kinds = list(table["target_kind"])
    stats.rows += len(statuses)
    stats.prompt_over_budget += dropped
    if src.feeds_sft:
        stats.sft_rows += sum(1 for k, s in zip(kinds, statuses, strict=True)
                              if k and s != "dropped")
        stats.sft_truncated += statuses.count("truncated")
        stats.sft_dropped += statuses.count("dropped")
        stats.no_target += kinds.count("")


@dataclass
class LoadedSource:
    """One source after loading and tokenisation."""

    config: DataSourceConfig
    table: Any  # datasets.Dataset: row records + token columns
    report: SourceReport


def load_tokenized(src: DataSourceConfig, cfg: DataConfig, templater: ChatTemplater,
                   reward: RewardConfig, stats: TruncationStats) -> LoadedSource:
    """Load, normalise, tokenise and filter one source."""
    table, report = load_source(src, reward, cfg.on_bad_row, cfg.cache_dir, cfg.num_proc)
    tokenized = tokenize_table(table, templater, cfg, src)
    tokenized, over = _drop_token_errors(tokenized, report, cfg.on_bad_row)
    _count(stats, tokenized, src, over)
    report.rows = len(tokenized)
    conflicts = sum(bool(conflicting_pairs([c["id"] for c in _json(s)]))
                    for s in tokenized["constraints"])
    if conflicts:
        logger.warning("%s: %d rows carry conflicting instructions (IFEval conflict table)",
                       src.path, conflicts)
    return LoadedSource(src, tokenized, report)


def _json(text: str) -> Any:
    import json

    return json.loads(text)


@dataclass
class DataBundle:
    """Everything the trainer needs from the data side.

    ``train`` holds all training rows (sources concatenated); ``sft_pool`` / ``pref_pool``
    are int64 arrays of row indices into it; ``eval`` holds held-out rows.
    """

    train: Any  # datasets.Dataset (row records + token columns)
    sft_pool: np.ndarray
    pref_pool: np.ndarray
    eval: Any | None
    templater: ChatTemplater
    config: DataConfig
    reports: list[SourceReport] = field(default_factory=list)
    truncation: TruncationStats = field(default_factory=TruncationStats)

    # ---------------------------------------------------------------- sampling

    def sampler(self, prompts_per_step: int, seed: int) -> MixedBatchSampler:
        """The mixed SFT/PREF sampler over this bundle's pools."""
        return MixedBatchSampler(len(self.sft_pool), len(self.pref_pool), prompts_per_step,
                                 self.config.expert_fraction, seed, self.config.shuffle)

    # ---------------------------------------------------------------- access

    def _select(self, rows: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
        if len(rows) == 0:
            return []
        part = self.train.select([int(r) for r in rows]).select_columns(list(columns))
        return list(part)

    def sft_examples(self, pool_indices: Sequence[int]) -> list[SFTExample]:
        """SFT sequences (prompt + target, loss mask) for SFT-pool indices."""
        recs = self._select(self.sft_pool[list(pool_indices)], ["prompt_ids", "target_ids"])
        return [join_example(r["prompt_ids"], r["target_ids"]) for r in recs]

    def sft_items(self, pool_indices: Sequence[int]) -> list[PackItem]:
        """Pack items keyed ``("sft", pool index)``."""
        return [PackItem.from_sft(ex, ("sft", int(i)))
                for i, ex in zip(pool_indices, self.sft_examples(pool_indices), strict=True)]

    def sft_token_pairs(self, pool_indices: Sequence[int]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, target ids) of SFT-pool indices (the target ends in end-of-turn)."""
        recs = self._select(self.sft_pool[list(pool_indices)], ["prompt_ids", "target_ids"])
        return [(list(r["prompt_ids"]), list(r["target_ids"])) for r in recs]

    def sft_rows(self, pool_indices: Sequence[int]) -> list[Row]:
        """Unified rows of SFT-pool indices."""
        return RowTable(self.train).rows(self.sft_pool[list(pool_indices)])

    def eval_prompt_ids(self, count: int | None = None) -> list[list[int]]:
        """Prompt ids of the first ``count`` held-out rows (all when None)."""
        if self.eval is None:
            return []
        n = len(self.eval) if count is None else min(count, len(self.eval))
        return [list(r) for r in self.eval.select(range(n))["prompt_ids"]]

    def pref_rows(self, pool_indices: Sequence[int]) -> list[Row]:
        """Unified rows (verifiers, teacher reference) for PREF-pool indices."""
        return RowTable(self.train).rows(self.pref_pool[list(pool_indices)])

    def prompt_ids(self, pool: str, pool_indices: Sequence[int]) -> list[list[int]]:
        """Prompt token ids (for rollouts) of ``pool`` ("sft" or "pref") indices."""
        rows = (self.sft_pool if pool == "sft" else self.pref_pool)[list(pool_indices)]
        return [r["prompt_ids"] for r in self._select(rows, ["prompt_ids"])]

    def eval_rows(self) -> list[Row]:
        """Held-out rows."""
        return list(RowTable(self.eval)) if self.eval is not None else []

    def summary(self) -> dict[str, Any]:
        """Counts for the run log."""
        return {"train_rows": len(self.train), "sft_pool": len(self.sft_pool),
                "pref_pool": len(self.pref_pool),
                "eval_rows": len(self.eval) if self.eval is not None else 0,
                "truncation": self.truncation.as_dict(),
                "sources": [r.as_dict() for r in self.reports]}


def _pool_indices(loaded: Sequence[LoadedSource]) -> tuple[np.ndarray, np.ndarray]:
    sft, pref, offset = [], [], 0
    for part in loaded:
        n = len(part.table)
        if part.config.feeds_pref:
            pref.append(np.arange(offset, offset + n))
        if part.config.feeds_sft:
            has = np.array([len(t) > 0 for t in part.table["target_ids"]], dtype=bool)
            sft.append(offset + np.flatnonzero(has))
        offset += n
    return _cat(sft), _cat(pref)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def resolve_sources(cfg: DataConfig) -> tuple[list[DataSourceConfig], list[DataSourceConfig],
                                              str | None]:
    """Training sources, eval sources and tokenizer path (the toy task fills the gaps)."""
    if not cfg.uses_toy_task:
        return list(cfg.sources), list(cfg.eval_sources), cfg.tokenizer
    from uniapl_mcore.data.toy_task import build_toy_task

    toy = build_toy_task(cfg.toy)
    train = [DataSourceConfig(path=str(toy.train), format="unified", use="both")]
    evals = list(cfg.eval_sources) or [
        DataSourceConfig(path=str(toy.eval), format="unified", split="test", use="eval")]
    return train, evals, cfg.tokenizer or str(toy.tokenizer)


def build_data(cfg: DataConfig, reward: RewardConfig | None = None, tokenizer=None
               ) -> DataBundle:
    """Build the run's data (see the module doc). ``tokenizer`` overrides ``cfg.tokenizer``."""
    from datasets import concatenate_datasets

    reward = reward or RewardConfig()
    sources, eval_sources, tok_path = resolve_sources(cfg)
    if tokenizer is None:
        if tok_path is None:
            raise DataError("data.tokenizer is not set (a local tokenizer directory is needed)")
        from uniapl_mcore.data.tiny_tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_path)
    templater = ChatTemplater(tokenizer, cfg.enable_thinking, cfg.think_prefix,
                              cfg.end_of_turn_token)
    stats = TruncationStats()
    loaded = [load_tokenized(s, cfg, templater, reward, stats) for s in sources]
    train = concatenate_datasets([p.table for p in loaded]) if len(loaded) > 1 \
        else loaded[0].table
    sft_pool, pref_pool = _pool_indices(loaded)
    eval_parts = [load_tokenized(replace(s, use="eval"), cfg, templater, reward,
                                 TruncationStats()) for s in eval_sources]
    evals = None
    if eval_parts:
        evals = concatenate_datasets([p.table for p in eval_parts]) if len(eval_parts) > 1 \
            else eval_parts[0].table
    bundle = DataBundle(train, sft_pool, pref_pool, evals, templater, cfg,
                        [p.report for p in loaded + eval_parts], stats)
    logger.info("data: %s", {k: v for k, v in bundle.summary().items() if k != "sources"})
    return bundle
