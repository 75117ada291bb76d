"""The UniAPL training loop: build → (step → log → evaluate → checkpoint)* over the stages.

Every rank runs :func:`run_training`. Global rank 0 also owns the :class:`Driver` (data,
rollout engines, rewards, discriminator) and the metrics log; the other ranks receive each
step's sequences by broadcast. One step, top to bottom (:meth:`Trainer.train_step`):

    sample mixed batch → rollouts → rewards → discriminator scores (+ its update)
    → advantages → engines sleep → [broadcast] → reference log-probs → (π_old log-probs)
    → (loss + backward → optimizer) per PPO mini-batch and epoch → engines wake
    → weight sync to the engines

Checkpoints (:class:`~uniapl_mcore.trainer.checkpointing.CheckpointManager`) hold the policy
with its optimizer and LR schedule (and its HF config + tokenizer), the KL reference, the
discriminator (and its optimizer), every rank's RNG states and the trainer state (step,
stage, weight version, samplers). Re-running on the same run directory resumes there.
``checkpoint.export_hf`` writes the trained policy as a Hugging Face model to ``RUN/hf``
at the end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from uniapl_mcore.config import ConfigError, dump_config
from uniapl_mcore.losses import RowKind, objective_weights
from uniapl_mcore.megatron.checkpointing import barrier, load_checkpoint, unwrap_model
from uniapl_mcore.runtime.layout import pipeline_stage_layers, stage_layer_range
from uniapl_mcore.runtime.parallel import ParallelLayout, init_parallel
from uniapl_mcore.trainer.checkpointing import CheckpointManager, fault_point, read_resume_point
from uniapl_mcore.trainer.config import ResolvedStage, UniaplConfig
from uniapl_mcore.trainer.evaluation import Evaluator
from uniapl_mcore.trainer.experience import broadcast_sequences
from uniapl_mcore.trainer.update import (
    PhaseTimer,
    Reference,
    build_policy,
    restart_optimizer,
    update_policy,
)

logger = logging.getLogger(__name__)


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
        self.driver = self.log = None
        if layout.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, run_dir / "config.yaml")
            from uniapl_mcore.trainer.driver import Driver

            self.driver = Driver(cfg, run_dir)
        barrier()
        resume, saved = read_resume_point(run_dir / "checkpoints")
        if self.driver is not None and resume is not None:
            self.driver.check_resumable(saved.get("samplers", {}), resume)
        self.step = int(saved.get("step", 0))
        self.stage_index = int(saved.get("stage", 0))
        self.policy = build_policy(cfg, self.stages[self.stage_index], layout)
        if layout.pp > 1:
            mine = stage_layer_range(cfg.model.num_layers, cfg.parallel, layout.pp_rank)
            logger.info("pipeline stages hold %s layers; this rank's stage %d: layers %d-%d",
                        "/".join(map(str, pipeline_stage_layers(cfg.model.num_layers,
                                                                cfg.parallel))),
                        layout.pp_rank, mine.start, mine.stop - 1)
        self.reference = Reference(cfg, layout) if any(s.needs_reference
                                                       for s in self.stages) else None
        driver = self.driver
        self.checkpoints = CheckpointManager(
            run_dir / "checkpoints", layout, cfg.checkpoint.keep_last, policy=self.policy,
            reference=self.reference, discriminator=driver.disc if driver else None,
            samplers=driver.samplers if driver else None,
            hf_files=driver.policy_hf_dir if driver else None)
        if resume is not None:
            self.checkpoints.load(resume)
            logger.info("resumed from %s at step %d", resume, self.step)
        else:
            self._initial_weights()
        self.evaluator = Evaluator(cfg, layout, run_dir, self.driver)
        from uniapl_mcore.checkpoint.live_export import LiveExporter
        from uniapl_mcore.trainer.rollouts import policy_bundle

        chunks = [unwrap_model(c) for c in self.policy.chunks]
        self.exporter = LiveExporter(chunks, cfg.model, policy_bundle(cfg.model), dst=0)
        self.direct_sync = None
        if cfg.rollout.weight_sync.transport == "direct":
            from uniapl_mcore.rollout.weight_sync import DirectSync

            self.direct_sync = DirectSync(chunks, cfg.model, policy_bundle(cfg.model))
            if self.direct_sync.backend == "nccl" and cfg.rollout.placement == "colocated":
                raise ConfigError("rollout.weight_sync.transport",
                                  "'direct' broadcasts over NCCL, which cannot join two "
                                  "processes on one GPU; with placement: colocated use "
                                  "object_store (rollout.vllm.weight_transport: cuda_ipc)")
        if layout.rank == 0:
            from uniapl_mcore.trainer.metrics_log import MetricsLog

            self.log = MetricsLog(run_dir, cfg.logging, self.total_steps, enabled=True,
                                  run_config=cfg.to_dict())
            self.log.open(self.step)
        self._wake_engines()
        self.sync_weights()

    # ------------------------------------------------------------------ stages

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
        restart_optimizer(self.policy, stage, self.cfg.train.updates_per_step)
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
            if self.evaluator.due(self.step, self.total_steps):
                record.update(self.evaluate())
            records += self._emit(record)
            if self._checkpoint_due():
                self.save()
        if self.cfg.checkpoint.export_hf:
            self.export_hf()
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
            metrics.update(found)
        self._sleep_engines()  # colocated vLLM engines free the GPU for training
        with timer("broadcast"):
            seqs = broadcast_sequences(seqs)
        found, step_batches = update_policy(self.policy, self.reference, seqs, stage,
                                            self.step, self.cfg, self.layout, timer)
        self.step += 1
        fault_point("step", self.step)
        with timer("weight_sync"):
            self._wake_engines()
            self.sync_weights()
        metrics.update(found)
        metrics["train/rows"] = float(sum(s.kind != RowKind.IGNORE for s in seqs))
        metrics.update(step_batches.metrics())
        metrics.update(timer.metrics())
        return metrics

    # ------------------------------------------------------------------ engines

    def _wake_engines(self) -> None:
        if self.driver is not None:
            self.driver.wake_engines()

    def _sleep_engines(self) -> None:
        if self.driver is not None:
            self.driver.sleep_engines()

    def sync_weights(self) -> None:
        """Engines (awake) ← the policy's current weights, as version ``self.step``
        (collective)."""
        from uniapl_mcore.rollout.weight_sync import sync_from_megatron
        from uniapl_mcore.trainer.rollouts import policy_bundle

        pool = self.driver.engine_pool if self.driver is not None else None
        bucket_bytes = self.cfg.rollout.weight_sync.bucket_bytes
        if self.direct_sync is not None:
            self.direct_sync.sync(pool, self.step, bucket_bytes)
            return
        sync_from_megatron(pool, [unwrap_model(c) for c in self.policy.chunks], self.cfg.model,
                           policy_bundle(self.cfg.model), version=self.step,
                           bucket_bytes=bucket_bytes, exporter=self.exporter)

    # ------------------------------------------------------------------ evaluation, logs

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation of the current policy (collective; metrics on rank 0)."""
        return self.evaluator.evaluate(self.policy, self.step)

    def _emit(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        if self.log is None:
            return []
        self.log.log(record)
        if any(k.startswith("eval/") for k in record):
            from uniapl_mcore.trainer.metrics_log import plot_reward_curve

            plot_reward_curve(self.run_dir / "metrics.jsonl", self.run_dir / "reward_curve.png")
        return [record]

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_due(self) -> bool:
        ck = self.cfg.checkpoint
        at_end = self.step == self.total_steps and ck.save_at_end
        return at_end or bool(ck.save_interval_steps and self.step % ck.save_interval_steps == 0)

    def save(self) -> Path:
        """Collective: the whole training state as ``checkpoints/step_NNNNNN`` (atomic)."""
        return self.checkpoints.save(self.step, self.stage_index)

    def export_hf(self) -> Path | None:
        """Collective: the trained policy as a Hugging Face model in ``RUN/hf`` (safetensors +
        config + tokenizer; atomic), gathered to rank 0, which returns the path."""
        from uniapl_mcore.checkpoint.hf_export import write_live_hf_dir

        side = self.driver.policy_hf_dir if self.driver is not None else None
        return write_live_hf_dir(self.exporter, self.run_dir / "hf", side,
                                 bucket_bytes=self.cfg.rollout.weight_sync.bucket_bytes)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.driver is not None:
            self.driver.shutdown()
