"""The policy update of one step, on every rank: the step's (broadcast) sequences → M
mini-batches → this rank's micro-batches of each → π_ref log-probs for the KL slice → π_old
log-probs (only with M·E > 1 updates) → per update: global loss denominators → loss +
backward → optimizer and LR step.

:func:`update_policy` is the whole of it; the trainer calls it once per step and the
layout-parity and cross-layout resume tests call the same function. With M = E = 1 (the
default) it is one update on the whole batch, π_old = π_θ detached, exactly as before
mini-batches existed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from uniapl_mcore.losses import RowKind, step_denominators
from uniapl_mcore.megatron.checkpointing import unwrap_model
from uniapl_mcore.megatron.model import (
    TrainableModel,
    build_model_chunks,
    build_optimizer,
    build_scheduler,
)
from uniapl_mcore.runtime.parallel import ParallelLayout
from uniapl_mcore.trainer.config import ResolvedStage, UniaplConfig
from uniapl_mcore.trainer.experience import (
    Sequence,
    StepBatches,
    has_rollout_logprobs,
    step_micro_batches,
)
from uniapl_mcore.trainer.forward import forward_logprobs
from uniapl_mcore.trainer.policy_step import PolicyMicroBatch, policy_train_step

logger = logging.getLogger(__name__)


class PhaseTimer:
    """Wall-clock seconds per phase of a step (``time/<phase>_s`` metrics)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}


def build_policy(cfg: UniaplConfig, stage: ResolvedStage,
                 layout: ParallelLayout) -> TrainableModel:
    """The policy's DDP chunks with ``stage``'s optimizer and LR schedule."""
    chunks = build_model_chunks(cfg.model, cfg.parallel, layout, stage.optimizer)
    optimizer = build_optimizer(stage.optimizer, chunks)
    return TrainableModel(chunks, optimizer,
                          build_scheduler(stage.optimizer, optimizer, stage.steps,
                                          cfg.train.updates_per_step),
                          chunks[0].config)


def restart_optimizer(policy: TrainableModel, stage: ResolvedStage,
                      updates_per_step: int = 1) -> None:
    """A fresh optimizer and LR schedule at ``stage``'s settings (stage hand-off)."""
    policy.optimizer = build_optimizer(stage.optimizer, policy.chunks)
    policy.scheduler = build_scheduler(stage.optimizer, policy.optimizer, stage.steps,
                                       updates_per_step)


class Reference:
    """The frozen KL reference π_ref: the policy's weights at the start of its stage.

    With ``reference.offload`` on CUDA its weights stay in host memory except while it
    computes log-probs.
    """

    def __init__(self, cfg: UniaplConfig, layout: ParallelLayout) -> None:
        from uniapl_mcore.models.gpt import build_gpt_model, transformer_config

        self.cfg, self.layout = cfg, layout
        config = transformer_config(cfg.model, cfg.parallel)
        module = build_gpt_model(cfg.model, config, pre_process=layout.is_first_stage,
                                 post_process=layout.is_last_stage)
        for param in module.parameters():
            param.requires_grad_(False)
        self.modules = [module]
        self.offload = cfg.reference.offload and layout.device.type == "cuda"
        if self.offload:
            module.to("cpu")

    def as_trainable(self) -> TrainableModel:
        """The modules as a weights-only :class:`TrainableModel` (for checkpoints)."""
        return TrainableModel(self.modules, None, None, None)

    def reset_from(self, policy: TrainableModel) -> None:
        """π_ref ← the policy's current weights."""
        for ref, chunk in zip(self.modules, policy.chunks, strict=True):
            ref.load_state_dict(unwrap_model(chunk).state_dict(), strict=True)

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        if self.offload:
            for module in self.modules:
                module.to(self.layout.device)
        try:
            yield
        finally:
            if self.offload:
                for module in self.modules:
                    module.to("cpu")
                torch.cuda.empty_cache()

    def attach_logprobs(self, batches: list[PolicyMicroBatch]) -> None:
        """``ref_logp`` for the micro-batches that hold PREF rows (the KL's slice); the
        others get zeros, which their all-zero PREF mask never reads."""
        for batch in batches:
            batch.ref_logp = torch.zeros_like(batch.loss_mask)
        batches = [b for b in batches if bool((b.row_kind == int(RowKind.PREF)).any())]
        with self.on_device():
            logps = forward_logprobs(self.modules, batches, self.layout,
                                     self.cfg.model.vocab_size,
                                     self.cfg.rollout.sampling.temperature,
                                     self.cfg.loss.logprob_chunk_tokens)
        if logps is not None:
            for batch, logp in zip(batches, logps, strict=True):
                batch.ref_logp = logp


def plan_micro_batches(seqs: list[Sequence], cfg: UniaplConfig, layout: ParallelLayout,
                       rollout_logp: bool | None = None) -> StepBatches:
    """This rank's micro-batches: packed under ``data.micro_batch_tokens`` (each padded
    to its own longest row), or — with PP > 1, whose P2P sends need one shape —
    ``train.micro_batch_size`` rows of the step's common width. PREF rows come first
    (only their micro-batches need reference log-probs). ``rollout_logp``: see
    :func:`~uniapl_mcore.trainer.experience.step_micro_batches`."""
    pipelined = layout.pp > 1
    return step_micro_batches(
        seqs, layout.dp, layout.dp_rank,
        explicit_mask=layout.device.type == "cpu",
        budget_tokens=None if pipelined else cfg.data.micro_batch_tokens,
        rows_per_micro_batch=cfg.train.micro_batch_size,
        pad_multiple=cfg.data.pad_to_multiple_of, rollout_logp=rollout_logp)


def from_last_stage(values: Any, layout: ParallelLayout) -> Any:
    """A value computed on the last pipeline stage, on every stage (PP > 1: a broadcast
    over the pipeline group)."""
    if layout.pp == 1:
        return values
    from megatron.core import parallel_state as mpu

    payload = [values]
    dist.broadcast_object_list(payload, src=mpu.get_pipeline_model_parallel_last_rank(),
                               group=mpu.get_pipeline_model_parallel_group())
    return payload[0]


def split_mini_batches(seqs: list[Sequence], count: int) -> list[list[Sequence]]:
    """The step's rows as ``count`` mini-batches (PPO), deterministically.

    The rows of each kind (SFT targets, PREF rollouts, SFT-prompt rollouts) are dealt
    round-robin in list order, each kind starting at mini-batch 0, so every mini-batch holds
    its share of every slice (a kind with fewer rows than ``count`` is missing from the last
    ones). Rows of one prompt group may land in different mini-batches: their advantages are
    computed over the whole group before the split. ``count`` 1: ``[seqs]`` unchanged.
    """
    if count == 1:
        return [list(seqs)]
    parts: list[list[Sequence]] = [[] for _ in range(count)]
    dealt: dict[int, int] = {}
    for seq in seqs:
        position = dealt.get(seq.kind, 0)
        parts[position % count].append(seq)
        dealt[seq.kind] = position + 1
    return parts


def attach_old_logprobs(policy: TrainableModel, batches: list[PolicyMicroBatch],
                        cfg: UniaplConfig, layout: ParallelLayout) -> None:
    """``old_logp`` = log π_old [b, s]: one no-grad pass of the policy's current weights over
    the micro-batches that hold rollout rows (PREF or SFT_ROLLOUT: the clipped terms'
    slices); the others get zeros, which their masks never read. Collective over the
    model-parallel group; the values live on the last pipeline stage."""
    for batch in batches:
        batch.old_logp = torch.zeros_like(batch.loss_mask)
    rollout_kinds = torch.tensor([int(RowKind.PREF), int(RowKind.SFT_ROLLOUT)])
    batches = [b for b in batches if bool(torch.isin(b.row_kind, rollout_kinds).any())]
    logps = forward_logprobs(policy.chunks, batches, layout, cfg.model.vocab_size,
                             cfg.rollout.sampling.temperature, cfg.loss.logprob_chunk_tokens)
    if logps is not None:
        for batch, logp in zip(batches, logps, strict=True):
            batch.old_logp = logp


def combine_updates(found: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's metrics from its updates' metrics: ``*_max`` figures by max, the rest by
    mean over the updates that report them (a term whose weight is 0 reports only where its
    slice has rows); M = E = 1: the one update's metrics unchanged. Adds ``train/updates``."""
    if len(found) == 1:
        return {**found[0], "train/updates": 1.0}
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for f in found for k in f):
        values = [f[key] for f in found if key in f]
        out[key] = max(values) if key.endswith("_max") else sum(values) / len(values)
    out["train/updates"] = float(len(found))
    return out


def update_policy(policy: TrainableModel, reference: Reference | None, seqs: list[Sequence],
                  stage: ResolvedStage, step: int, cfg: UniaplConfig, layout: ParallelLayout,
                  timer: PhaseTimer | None = None) -> tuple[dict[str, Any], StepBatches]:
    """The optimizer updates of one step of ``stage`` on the step's sequences (collective):
    ``train.mini_batches`` M mini-batches × ``train.epochs`` E passes.

    ``step``: the global step index (0-based) before the update. Returns the loss and
    optimizer metrics (global values, on every rank; :func:`combine_updates` over the
    updates) and this rank's micro-batches of the whole step.
    """
    timer = timer or PhaseTimer()
    with_rollout = has_rollout_logprobs(seqs)
    parts = [plan_micro_batches(part, cfg, layout, with_rollout)
             for part in split_mini_batches(seqs, cfg.train.mini_batches)]
    if stage.needs_reference:
        if reference is None:
            raise ValueError(f"stage {stage.name!r} needs the KL reference; none was built")
        with timer("ref_logprobs"):
            for part in parts:
                reference.attach_logprobs(part.batches)
    if cfg.train.updates_per_step > 1:
        with timer("old_logprobs"):
            for part in parts:
                attach_old_logprobs(policy, part.batches, cfg, layout)
    found = []
    with timer("train"):
        for _ in range(cfg.train.epochs):
            for part in parts:
                found.append(_one_update(policy, part.batches, stage, step, cfg, layout))
    whole = StepBatches([b for part in parts for b in part.batches],
                        sum(p.real_tokens for p in parts), sum(p.slot_tokens for p in parts))
    return from_last_stage(combine_updates(found), layout), whole


def _one_update(policy: TrainableModel, batches: list[PolicyMicroBatch], stage: ResolvedStage,
                step: int, cfg: UniaplConfig, layout: ParallelLayout) -> dict[str, Any]:
    """Loss + backward + optimizer step on one mini-batch, with its own global denominators."""
    denoms = step_denominators([b.loss_mask for b in batches], [b.row_kind for b in batches],
                               stage.loss.max_response_tokens, layout.dp_group())
    return policy_train_step(policy, batches, denoms, stage.loss, layout,
                             step=step - stage.start_step,
                             temperature=cfg.rollout.sampling.temperature,
                             vocab_size=cfg.model.vocab_size)
