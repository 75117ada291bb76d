"""Smoke training run: a tiny Qwen3-style model learns synthetic token sequences.

This is the foundation's end-to-end job (``uniapl train`` until the UniAPL trainer lands):
it exercises the whole Megatron path — parallel layout, model, DDP, distributed optimizer,
LR schedule, per-token loss over the global batch, checkpoint / resume — on data that needs
no download. The data is a deterministic function of (seed, step), so every layout and every
resumed run sees exactly the same global batch at a given step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.config import RunConfig, dump_config
from uniapl_mcore.megatron.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from uniapl_mcore.megatron.model import build_trainable_model
from uniapl_mcore.runtime.parallel import ParallelLayout, init_parallel
from uniapl_mcore.trainer.lm_step import StepResult, TokenBatch, next_token_batch, train_step

logger = logging.getLogger(__name__)


def synthetic_sequences(seed: int, step: int, batch: int, length: int, vocab: int) -> torch.Tensor:
    """Arithmetic progressions modulo ``vocab``: int64 [batch, length].

    Each row starts at a random token and advances by a random stride in {1, 2, 3}, so the
    next token is predictable from the previous two: a tiny model's loss falls quickly.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    start = torch.randint(0, vocab, (batch, 1), generator=gen)
    stride = torch.randint(1, 4, (batch, 1), generator=gen)
    return (start + stride * torch.arange(length).unsqueeze(0)) % vocab


def local_micro_batches(cfg: RunConfig, layout: ParallelLayout, step: int) -> list[TokenBatch]:
    """This data-parallel rank's contiguous slice of the step's global batch, micro-batched."""
    train = cfg.train
    seqs = synthetic_sequences(train.seed, step, train.global_batch_size, train.seq_length + 1,
                               cfg.model.vocab_size)
    per_rank = train.global_batch_size // layout.dp
    mine = seqs[layout.dp_rank * per_rank:(layout.dp_rank + 1) * per_rank]
    explicit_mask = layout.device.type == "cpu"
    return [next_token_batch(mine[i:i + train.micro_batch_size], explicit_mask=explicit_mask)
            for i in range(0, per_rank, train.micro_batch_size)]


def run_smoke_training(cfg: RunConfig, run_dir: str | Path | None = None,
                       init_from: str | Path | None = None) -> list[dict[str, Any]]:
    """Train for ``cfg.train.max_steps`` steps; resume from ``run_dir`` when it has a checkpoint.

    Collective: every rank of the launch calls it. ``init_from`` names a checkpoint whose
    weights (only) initialise a fresh run. Returns one record per step run (all ranks).
    """
    cfg.check_world_size(_world_size())
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        return _train(cfg, layout, Path(run_dir) if run_dir else None, init_from)
    finally:
        layout.destroy()


def _world_size() -> int:
    from uniapl_mcore.runtime.dist_env import DistEnv

    return DistEnv.from_environ().world_size


def _train(cfg: RunConfig, layout: ParallelLayout, run_dir: Path | None,
           init_from: str | Path | None) -> list[dict[str, Any]]:
    trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout,
                                      cfg.train.max_steps)
    ckpt_root = run_dir / "checkpoints" if run_dir else None
    resume = latest_checkpoint(ckpt_root) if ckpt_root else None
    step = 0
    if resume is not None:
        step = int(load_checkpoint(resume, trainable)["step"])
    elif init_from is not None:
        load_checkpoint(init_from, trainable, include_optimizer=False)
    metrics = _open_metrics(run_dir, cfg, layout)
    records: list[dict[str, Any]] = []
    while step < cfg.train.max_steps:
        start = time.perf_counter()
        result = train_step(trainable, local_micro_batches(cfg, layout, step), layout)
        step += 1
        record = _record(step, result, time.perf_counter() - start)
        records.append(record)
        _log(record, cfg, layout, metrics)
        interval = cfg.checkpoint.save_interval_steps
        at_end = step == cfg.train.max_steps and cfg.checkpoint.save_at_end
        if ckpt_root is not None and ((interval and step % interval == 0) or at_end):
            save_checkpoint(ckpt_root, step, trainable, keep_last=cfg.checkpoint.keep_last)
    if metrics is not None:
        metrics.close()
    return records


def _record(step: int, result: StepResult, seconds: float) -> dict[str, Any]:
    values = asdict(result)
    record: dict[str, Any] = {"step": step}
    record.update({f"train/{k}": v for k, v in values.items()})
    record["perf/step_time_s"] = seconds
    record["perf/tokens_per_s"] = result.num_tokens / max(seconds, 1e-9)
    return record


def _open_metrics(run_dir: Path | None, cfg: RunConfig, layout: ParallelLayout):
    if run_dir is None or not layout.is_logging_rank:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    return open(run_dir / "metrics.jsonl", "a")


def _log(record: dict[str, Any], cfg: RunConfig, layout: ParallelLayout, metrics) -> None:
    if not layout.is_logging_rank:
        return
    if metrics is not None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
    step = record["step"]
    if step % cfg.train.log_interval_steps == 0 or step == cfg.train.max_steps:
        logger.info("step %d/%d  loss %.4f  grad_norm %.4f  lr %.2e  %.0f tok/s", step,
                    cfg.train.max_steps, record["train/loss"], record["train/grad_norm"],
                    record["train/lr"], record["perf/tokens_per_s"])
