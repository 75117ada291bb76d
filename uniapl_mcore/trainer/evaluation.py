"""Held-out evaluation of the policy (collective): rank 0's driver generates greedily on the
held-out prompts and verifies the responses; every rank then scores the responses and the
teacher's under the policy (mean log-prob per row); rank 0 writes the generations for
``uniapl analyze``."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.losses import RowKind
from uniapl_mcore.megatron.model import TrainableModel
from uniapl_mcore.runtime.parallel import ParallelLayout
from uniapl_mcore.trainer.config import UniaplConfig
from uniapl_mcore.trainer.experience import (
    Sequence,
    broadcast_sequences,
    micro_batches,
    pad_to_multiple,
    step_width,
)
from uniapl_mcore.trainer.forward import forward_logprobs
from uniapl_mcore.trainer.update import from_last_stage

logger = logging.getLogger(__name__)


class Evaluator:
    """``eval.*``: when to evaluate and how; ``driver`` exists on global rank 0 only."""

    def __init__(self, cfg: UniaplConfig, layout: ParallelLayout, run_dir: Path,
                 driver: Any | None) -> None:
        self.cfg, self.layout, self.run_dir, self.driver = cfg, layout, run_dir, driver

    def due(self, step: int, total_steps: int) -> bool:
        """After the last step and every ``eval.interval_steps`` steps."""
        interval = self.cfg.eval.interval_steps
        return step == total_steps or bool(interval and step % interval == 0)

    def evaluate(self, policy: TrainableModel, step: int) -> dict[str, float]:
        """Held-out greedy generation, verified; mean log-probs of the responses and of the
        teacher's under the policy; generations saved. Metrics on rank 0 (``{}`` elsewhere)."""
        records, metrics, seqs = None, {}, None
        if self.driver is not None:
            records, metrics = self.driver.evaluate(step)
            seqs = [Sequence(r["_prompt_ids"], r["_response_ids"], int(RowKind.PREF))
                    for r in records]
            seqs += [Sequence(r["_prompt_ids"], r["_teacher_ids"], int(RowKind.PREF))
                     for r in records]
        means = self._mean_logprobs(policy, broadcast_sequences(seqs))
        if self.driver is None:
            return {}
        n = len(records)
        for i, rec in enumerate(records):
            rec["response_logprob_mean"] = means[i]
            rec["teacher_logprob_mean"] = means[n + i]
        if n:
            metrics["eval/response_logprob_mean"] = sum(means[:n]) / n
            metrics["eval/teacher_logprob_mean"] = sum(means[n:2 * n]) / n
        if self.cfg.eval.save_generations:
            self._write_generations(records, step)
        return metrics

    def _mean_logprobs(self, policy: TrainableModel, seqs: list[Sequence]) -> list[float]:
        """Per row: mean log π(response token) (temperature 1), on every pipeline stage."""
        mbs = self.cfg.train.micro_batch_size
        padded = pad_to_multiple(seqs, mbs)
        width = step_width(padded, math.lcm(8, self.cfg.data.pad_to_multiple_of))  # FP8: 16
        batches = micro_batches(padded, mbs, width,
                                explicit_mask=self.layout.device.type == "cpu")
        logps = forward_logprobs(policy.chunks, batches, self.layout,
                                 self.cfg.model.vocab_size, 1.0,
                                 self.cfg.loss.logprob_chunk_tokens)
        means = None
        if logps is not None:
            logp, mask = torch.cat(logps), torch.cat([b.loss_mask for b in batches])
            means = (logp.double().sum(-1) / mask.double().sum(-1).clamp(min=1)).tolist()
        return from_last_stage(means, self.layout)

    def _write_generations(self, records: list[dict[str, Any]], step: int) -> None:
        out = self.run_dir / "generations" / f"step_{step:06d}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")},
                                   ensure_ascii=False) + "\n")
        os.replace(tmp, out)
