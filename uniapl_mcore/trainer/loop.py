"""The UniAPL training loop: build → (step → log → evaluate → checkpoint)* over the stages.

Every rank runs :func:`run_training`. Global rank 0 also owns the :class:`Driver` (data,
rollout engines, rewards, discriminator) and the metrics log; the other ranks receive each
step's sequences by broadcast. One step, top to bottom (:meth:`Trainer.train_step`):

    sample mixed batch → rollouts → rewards → discriminator scores (+ its update)
    → advantages → [broadcast] → reference log-probs → loss + backward → optimizer
    → weight sync to the engines

Checkpoints (``<run_dir>/checkpoints/step_NNNNNN``, written to a temporary directory and
renamed, ``latest`` updated last) hold the policy with its optimizer and LR schedule, the KL
reference, the discriminator (and its optimizer), every rank's RNG states, and the trainer
state (step, stage, weight version). Re-running on the same run directory resumes there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniapl_mcore.config import dump_config
from uniapl_mcore.losses import RowKind, objective_weights
from uniapl_mcore.megatron.checkpointing import (
    barrier,
    latest_checkpoint,
    load_checkpoint,
    staged_dir,
    unwrap_model,
    write_model_state,
)
from uniapl_mcore.runtime.parallel import ParallelLayout, init_parallel
from uniapl_mcore.trainer.config import ResolvedStage, UniaplConfig
from uniapl_mcore.trainer.experience import (
    Sequence,
    broadcast_sequences,
    micro_batches,
    pad_to_multiple,
    step_width,
)
from uniapl_mcore.trainer.forward import forward_logprobs
from uniapl_mcore.trainer.update import (
    PhaseTimer,
    Reference,
    build_policy,
    from_last_stage,
    restart_optimizer,
    update_policy,
)

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU, Megatron's model-parallel
    tracker, CUDA when present)."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"random": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def fault_point(point: str, step: int) -> None:
    """Fault injection for the kill-and-resume tests: ``UNIAPL_FAULT=<point>:<step>`` makes
    this process SIGKILL itself when it reaches ``point`` at ``step`` (``step``: mid-step,
    after the optimizer update; ``checkpoint``: while the checkpoint is half written)."""
    if os.environ.get("UNIAPL_FAULT") == f"{point}:{step}":
        import signal

        logger.warning("UNIAPL_FAULT: killing this process at %s %d", point, step)
        os.kill(os.getpid(), signal.SIGKILL)


def run_training(cfg: UniaplConfig, run_dir: str | Path) -> list[dict[str, Any]]:
    """Train (or resume) into ``run_dir``. Collective: every rank calls it. Returns the
    records logged by this process (rank 0: every step's; others: empty)."""
    from uniapl_mcore.runtime.dist_env import DistEnv

    cfg.check_world_size(DistEnv.from_environ().world_size)
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    trainer = None
    try:
        trainer = Trainer(cfg, layout, Path(run_dir))
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        layout.destroy()


class Trainer:
    """State of one training run on this rank (see the module doc)."""

    def __init__(self, cfg: UniaplConfig, layout: ParallelLayout, run_dir: Path) -> None:
        self.cfg, self.layout, self.run_dir = cfg, layout, run_dir
        self.stages = cfg.resolved_stages()
        self.total_steps = cfg.total_steps
        self.ckpt_root = run_dir / "checkpoints"
        self.driver = self.log = None
        if layout.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
            from uniapl_mcore.trainer.driver import Driver

            self.driver = Driver(cfg, run_dir)
        barrier()
        resume = latest_checkpoint(self.ckpt_root)
        saved = json.loads((resume / TRAINER_STATE).read_text()) if resume else {}
        if self.driver is not None and resume is not None:
            self.driver.check_resumable(saved.get("samplers", {}), resume)
        self.step = int(saved.get("step", 0))
        self.stage_index = int(saved.get("stage", 0))
        stage = self.stages[self.stage_index]
        self.policy = build_policy(cfg, stage, layout)
        self.reference = Reference(cfg, layout) if any(s.needs_reference
                                                       for s in self.stages) else None
        if resume is not None:
            self._load(resume)
        else:
            self._initial_weights()
        from uniapl_mcore.checkpoint.live_export import LiveExporter
        from uniapl_mcore.trainer.rollouts import policy_bundle

        self.exporter = LiveExporter([unwrap_model(c) for c in self.policy.chunks], cfg.model,
                                     policy_bundle(cfg.model), dst=0)
        if layout.rank == 0:
            from uniapl_mcore.trainer.metrics_log import MetricsLog

            self.log = MetricsLog(run_dir, cfg.logging, self.total_steps, enabled=True,
                                  run_config=cfg.to_dict())
            self.log.open(self.step)
        self.sync_weights()

    # ------------------------------------------------------------------ building

    def _initial_weights(self) -> None:
        if self.cfg.init_checkpoint:
            load_checkpoint(self.cfg.init_checkpoint, self.policy, include_optimizer=False)
        self._reset_reference()

    def _reset_reference(self) -> None:
        """π_ref ← the current policy weights (the start of an RL stage)."""
        if self.reference is not None:
            self.reference.reset_from(self.policy)

    def _begin_stage(self, stage: ResolvedStage) -> None:
        """Hand-off: fresh optimizer and LR schedule at the stage's settings, π_ref reset."""
        restart_optimizer(self.policy, stage)
        self.stage_index = stage.index
        self._reset_reference()
        logger.info("stage %d (%s) begins at step %d: lr %.2e, %d steps", stage.index,
                    stage.name, self.step, stage.optimizer.lr, stage.steps)

    def stage_at(self, step: int) -> ResolvedStage:
        for stage in self.stages:
            if step < stage.end_step:
                return stage
        return self.stages[-1]

    # ------------------------------------------------------------------ the loop

    def run(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if self.step == 0 and self.cfg.eval.at_start:
            records += self._emit({"step": 0, **self.evaluate()})
        while self.step < self.total_steps:
            stage = self.stage_at(self.step)
            if stage.index != self.stage_index:
                self._begin_stage(stage)
            start = time.perf_counter()
            record = {"step": self.step + 1, **self.train_step(stage)}
            record["perf/step_s"] = time.perf_counter() - start
            if self._eval_due():
                record.update(self.evaluate())
            records += self._emit(record)
            if self._checkpoint_due():
                self.save()
        return records

    def train_step(self, stage: ResolvedStage) -> dict[str, Any]:
        """One optimizer step of ``stage`` (see the module doc); returns its metrics."""
        timer = PhaseTimer()
        weights = objective_weights(stage.loss, self.step - stage.start_step)
        metrics: dict[str, Any] = {"train/stage": float(stage.index),
                                   **{f"train/weight_{k}": v for k, v in asdict(weights).items()}}
        seqs = None
        if self.driver is not None:  # sample → rollouts → rewards → discriminator → advantages
            seqs, found = self.driver.collect(self.step, stage, timer)
            self.driver.rollout.sleep()  # colocated vLLM engines free the GPU for training
            metrics.update(found)
        with timer("broadcast"):
            seqs = broadcast_sequences(seqs)
        found, step_batches = update_policy(self.policy, self.reference, seqs, stage,
                                            self.step, self.cfg, self.layout, timer)
        self.step += 1
        fault_point("step", self.step)
        with timer("weight_sync"):
            self.sync_weights()
        metrics.update(found)
        metrics["train/rows"] = float(sum(s.kind != RowKind.IGNORE for s in seqs))
        metrics.update(step_batches.metrics())
        metrics.update(timer.metrics())
        return metrics

    def sync_weights(self) -> None:
        """Engines ← the policy's current weights, as version ``self.step`` (collective)."""
        from uniapl_mcore.rollout.weight_sync import sync_from_megatron
        from uniapl_mcore.trainer.rollouts import policy_bundle

        pool = None
        if self.driver is not None:
            self.driver.rollout.wake()
            pool = self.driver.rollout.pool
        sync_from_megatron(pool, [unwrap_model(c) for c in self.policy.chunks], self.cfg.model,
                           policy_bundle(self.cfg.model), version=self.step,
                           bucket_bytes=self.cfg.rollout.weight_sync.bucket_bytes,
                           exporter=self.exporter)

    # ------------------------------------------------------------------ evaluation

    def _eval_due(self) -> bool:
        interval = self.cfg.eval.interval_steps
        return self.step == self.total_steps or bool(interval and self.step % interval == 0)

    def evaluate(self) -> dict[str, float]:
        """Held-out greedy generation, verified; mean log-probs of the responses and of the
        teacher's under the policy; generations saved for ``uniapl analyze``."""
        records, metrics, seqs = None, {}, None
        if self.driver is not None:
            records, metrics = self.driver.evaluate(self.step)
            seqs = [Sequence(r["_prompt_ids"], r["_response_ids"], int(RowKind.PREF))
                    for r in records]
            seqs += [Sequence(r["_prompt_ids"], r["_teacher_ids"], int(RowKind.PREF))
                     for r in records]
        seqs = broadcast_sequences(seqs)
        mbs = self.cfg.train.micro_batch_size
        padded = pad_to_multiple(seqs, mbs)
        width = step_width(padded, math.lcm(8, self.cfg.data.pad_to_multiple_of))  # FP8: 16
        batches = micro_batches(padded, mbs, width,
                                explicit_mask=self.layout.device.type == "cpu")
        logps = forward_logprobs(self.policy.chunks, batches, self.layout,
                                 self.cfg.model.vocab_size, 1.0,
                                 self.cfg.loss.logprob_chunk_tokens)
        means = None
        if logps is not None:
            logp, mask = torch.cat(logps), torch.cat([b.loss_mask for b in batches])
            means = (logp.double().sum(-1) / mask.double().sum(-1).clamp(min=1)).tolist()
        means = from_last_stage(means, self.layout)
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
            self._write_generations(records)
        return metrics

    def _write_generations(self, records: list[dict[str, Any]]) -> None:
        out = self.run_dir / "generations" / f"step_{self.step:06d}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")},
                                   ensure_ascii=False) + "\n")
        os.replace(tmp, out)

    # ------------------------------------------------------------------ logging

    def _emit(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        if self.log is None:
            return []
        self.log.log(record)
        if any(k.startswith("eval/") for k in record):
            self._plot()
        return [record]

    def _plot(self) -> None:
        from uniapl_mcore.trainer.metrics_log import plot_reward_curve

        plot_reward_curve(self.run_dir / "metrics.jsonl", self.run_dir / "reward_curve.png")

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_due(self) -> bool:
        ck = self.cfg.checkpoint
        at_end = self.step == self.total_steps and ck.save_at_end
        return at_end or bool(ck.save_interval_steps and self.step % ck.save_interval_steps == 0)

    def save(self) -> Path:
        """Collective: the whole training state as ``checkpoints/step_NNNNNN`` (atomic)."""
        ck = self.cfg.checkpoint
        subdirs = ("policy", "rng") + (("reference",) if self.reference is not None else ())
        with staged_dir(self.ckpt_root, self.step, ck.keep_last, subdirs) as tmp:
            write_model_state(tmp / "policy", self.policy, True, {"stage": self.stage_index},
                              self.step)
            if self.reference is not None:
                write_model_state(tmp / "reference", self.reference.as_trainable(), False)
            torch.save(rng_state(), tmp / "rng" / f"rank_{self.layout.rank:05d}.pt")
            fault_point("checkpoint", self.step)
            if self.driver is not None:
                if self.driver.disc is not None and self.driver.disc.trainable:
                    self.driver.disc.save(str(tmp / "discriminator"))  # frozen: its checkpoint
                state = {"step": self.step, "stage": self.stage_index,
                         "weight_version": self.step, "world_size": self.layout.world_size,
                         "samplers": {str(i): s.state_dict() for i, s in
                                      self.driver.samplers.items()}}
                (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
        return self.ckpt_root / f"step_{self.step:06d}"

    def _load(self, path: Path) -> None:
        load_checkpoint(path / "policy", self.policy)
        if self.reference is not None:
            load_checkpoint(path / "reference", self.reference.as_trainable(),
                            include_optimizer=False)
        if self.driver is not None and self.driver.disc is not None and \
                self.driver.disc.trainable:
            self.driver.disc.load(str(path / "discriminator"))
        rng_file = path / "rng" / f"rank_{self.layout.rank:05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.warning("%s: no RNG state for rank %d (world size changed?)", path,
                           self.layout.rank)
        logger.info("resumed from %s at step %d", path, self.step)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.driver is not None:
            self.driver.shutdown()
