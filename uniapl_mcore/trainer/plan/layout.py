"""Where a run goes on ``world_size`` trainer GPUs: the trainer's parallel sizes and pipeline
split (:class:`~uniapl_mcore.runtime.layout.ParallelConfig`'s arithmetic, as
``init_parallel`` builds it), rows and micro-batches per step of each stage, and the
placement of the reference model, the discriminator and the rollout engines."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

from uniapl_mcore.config import ConfigError
from uniapl_mcore.megatron.config import check_layout
from uniapl_mcore.runtime.layout import pipeline_stage_layers
from uniapl_mcore.trainer.config import UniaplConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerLayout:
    """The policy trainer's parallel layout (sizes in ranks)."""

    #: trainer GPUs (one process each)
    gpus: int
    tp: int
    pp: int
    cp: int
    ep: int
    #: model replicas: gpus / (tp · pp · cp)
    dp: int
    #: ranks holding the same expert shard: tp · cp · dp / (etp · ep) (= dp · cp when dense)
    expert_dp: int
    sequence_parallel: bool
    #: transformer layers on each pipeline stage, first to last
    stage_layers: tuple[int, ...]
    #: routed experts on each EP rank (0: a dense model)
    experts_per_rank: int
    distributed_optimizer: bool
    params_dtype: str

    @property
    def dense_dp(self) -> int:
        """Ranks the distributed optimizer shards dense state over: dp · cp."""
        return self.dp * self.cp


@dataclass(frozen=True)
class StageBatches:
    """Rows of one optimizer step of a training stage, worst case (every row at its longest)."""

    name: str
    objective: str
    #: optimizer steps of the stage
    steps: int
    #: prompts trained with their expert answer (SFT rows)
    sft_rows: int
    #: prompts answered by preference rollouts
    pref_prompts: int
    #: rollouts per preference prompt
    samples_per_prompt: int
    #: rollouts per SFT prompt (when the stage needs SFT rollouts)
    sft_samples_per_prompt: int
    pref_rollouts: int
    sft_rollouts: int
    #: training rows per step: SFT rows + rollouts
    train_rows: int
    #: ceil(train_rows / DP)
    rows_per_dp_rank: int
    #: tokens of the longest row: prompt + the longer of expert answer and rollout
    max_row_tokens: int
    #: micro-batches per DP rank, ``micro_batch_tokens // max_row_tokens`` rows each
    micro_batches_per_dp_rank: int

    @property
    def rollouts(self) -> int:
        """Rollouts generated per step."""
        return self.pref_rollouts + self.sft_rollouts


@dataclass(frozen=True)
class ReferencePlacement:
    """The frozen KL reference: a policy copy with the policy's layout."""

    needed: bool
    #: kept in host memory between uses
    offload: bool


@dataclass(frozen=True)
class DiscriminatorPlacement:
    """The discriminator: one TP · PP replica of Ray actors on the trainer's GPUs."""

    role: str
    #: enabled and used by some stage
    needed: bool
    offload: bool
    tp: int
    pp: int
    #: its actor processes (tp · pp; 0 when not needed)
    processes: int


@dataclass(frozen=True)
class RolloutPlacement:
    """The rollout engines."""

    engine: Literal["torch", "vllm"]
    placement: Literal["colocated", "disaggregated"]
    num_engines: int
    #: tensor-parallel size of each engine
    tp_each: int
    #: GPUs the engines use (0: the torch engine, on CPUs)
    gpus: int
    #: engine bundles per trainer GPU (1 colocated, 0 otherwise)
    engines_per_gpu: int
    #: fraction of a GPU's memory a vLLM engine takes while awake (0.0 for torch)
    gpu_memory_utilization: float
    #: vLLM sleeps (level 1) during training
    sleep_mode: bool
    #: some stage generates rollouts
    needed: bool


@dataclass(frozen=True)
class Layout:
    """The layout of a run on ``world_size`` trainer GPUs (:func:`plan_layout`)."""

    #: trainer GPUs
    world_size: int
    #: GPUs of the whole job (trainer + disaggregated engines)
    total_gpus: int
    trainer: TrainerLayout
    #: one entry per training stage, in order
    stages: tuple[StageBatches, ...]
    discriminator: DiscriminatorPlacement
    reference: ReferencePlacement
    rollout: RolloutPlacement


def plan_layout(cfg: UniaplConfig, world_size: int, *,
                total_gpus: int | None = None) -> Layout:
    """The parallel layout of ``cfg`` on ``world_size`` trainer GPUs.

    Args:
        cfg: the run config.
        world_size: trainer processes (one GPU each), e.g. ``nnodes × nproc_per_node``.
        total_gpus: GPUs in the whole job (trainer + disaggregated engines); None:
            ``world_size`` (the launch's GPUs are all there are).
    Raises:
        ConfigError: one line naming the field when the GPUs cannot host the layout.
    """
    if world_size < 1:
        raise ConfigError("world_size", f"must be >= 1, got {world_size}")
    total_gpus = world_size if total_gpus is None else total_gpus
    cfg.check_world_size(world_size)
    trainer = _trainer_layout(cfg, world_size)
    layout = Layout(
        world_size=world_size, total_gpus=total_gpus, trainer=trainer,
        stages=_stage_batches(cfg, trainer.dp),
        discriminator=_discriminator_placement(cfg, world_size),
        reference=ReferencePlacement(
            needed=any(s.needs_reference for s in cfg.resolved_stages()),
            offload=cfg.reference.offload),
        rollout=_rollout_placement(cfg, world_size, total_gpus),
    )
    logger.debug("planned layout: %s", layout)
    return layout


def _trainer_layout(cfg: UniaplConfig, world_size: int) -> TrainerLayout:
    par, experts = cfg.parallel, cfg.model.num_experts
    return TrainerLayout(
        gpus=world_size, tp=par.tensor_parallel_size, pp=par.pipeline_parallel_size,
        cp=par.context_parallel_size, ep=par.expert_parallel_size,
        dp=par.data_parallel_size(world_size),
        expert_dp=par.expert_data_parallel_size(world_size),
        sequence_parallel=par.sequence_parallel,
        stage_layers=pipeline_stage_layers(cfg.model.num_layers, par),
        experts_per_rank=experts // par.expert_parallel_size if experts else 0,
        distributed_optimizer=cfg.optimizer.use_distributed_optimizer,
        params_dtype=cfg.model.params_dtype)


def _stage_batches(cfg: UniaplConfig, dp: int) -> tuple[StageBatches, ...]:
    """Rows per optimizer step of each stage, and micro-batches per DP rank (worst case:
    every row at its longest, ``micro_batch_tokens // row_tokens`` rows per micro-batch)."""
    prompts = cfg.prompts_per_step
    g = cfg.rollout.samples_per_prompt
    g_sft = cfg.sft_samples_per_prompt or g
    out = []
    for stage in cfg.resolved_stages():
        n_sft = math.ceil(stage.expert_fraction(cfg.data.expert_fraction) * prompts)
        n_pref = prompts - n_sft if stage.has_pref else 0
        pref_rollouts = n_pref * g
        sft_rollouts = n_sft * g_sft if stage.needs_sft_rollouts else 0
        rollout_tokens = cfg.rollout.sampling.max_new_tokens if (pref_rollouts or sft_rollouts) \
            else 0
        row_tokens = cfg.data.max_prompt_tokens + max(cfg.data.max_response_tokens if n_sft
                                                      else 0, rollout_tokens)
        rows = n_sft + pref_rollouts + sft_rollouts
        per_rank = math.ceil(rows / dp)
        per_micro = max(1, cfg.data.micro_batch_tokens // row_tokens)
        out.append(StageBatches(
            name=stage.name, objective=stage.objective, steps=stage.steps, sft_rows=n_sft,
            pref_prompts=n_pref, samples_per_prompt=g, sft_samples_per_prompt=g_sft,
            pref_rollouts=pref_rollouts, sft_rollouts=sft_rollouts, train_rows=rows,
            rows_per_dp_rank=per_rank, max_row_tokens=row_tokens,
            micro_batches_per_dp_rank=math.ceil(per_rank / per_micro)))
    return tuple(out)


def _discriminator_placement(cfg: UniaplConfig, world_size: int) -> DiscriminatorPlacement:
    disc = cfg.discriminator
    needed = disc.enabled and any(s.needs_discriminator for s in cfg.resolved_stages())
    par = disc.parallel
    processes = par.tensor_parallel_size * par.pipeline_parallel_size
    if needed:
        if processes > world_size:
            raise ConfigError("discriminator.parallel",
                              f"TP × PP = {processes} discriminator processes need more GPUs "
                              f"than the trainer's {world_size}")
        check_layout(disc.model, par, "discriminator")
    return DiscriminatorPlacement(role=disc.role, needed=needed, offload=disc.offload,
                                  tp=par.tensor_parallel_size, pp=par.pipeline_parallel_size,
                                  processes=processes if needed else 0)


def _rollout_placement(cfg: UniaplConfig, world_size: int,
                       total_gpus: int) -> RolloutPlacement:
    ro = cfg.rollout
    gpus = ro.num_engines * ro.gpus_per_engine
    if gpus and ro.placement == "colocated" and gpus > world_size:
        raise ConfigError("rollout.num_engines",
                          f"{ro.num_engines} colocated engines × TP "
                          f"{ro.engine_tensor_parallel_size} need {gpus} GPUs but the "
                          f"trainer has {world_size}")
    if gpus and ro.placement != "colocated" and world_size + gpus > total_gpus:
        raise ConfigError("rollout.placement",
                          f"disaggregated engines need {gpus} GPUs besides the trainer's "
                          f"{world_size}, but only {total_gpus} GPUs are available; use "
                          f"placement colocated or pass total_gpus >= {world_size + gpus}")
    return RolloutPlacement(
        engine=ro.engine, placement=ro.placement, num_engines=ro.num_engines,
        tp_each=ro.engine_tensor_parallel_size, gpus=gpus,
        engines_per_gpu=1 if gpus and ro.placement == "colocated" else 0,
        gpu_memory_utilization=ro.vllm.gpu_share if ro.engine == "vllm" else 0.0,
        sleep_mode=ro.engine == "vllm" and ro.vllm.gpu_sleep, needed=cfg.any_rl)
