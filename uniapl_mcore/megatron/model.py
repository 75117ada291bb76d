"""Build a trainable Megatron-Core model: stage modules → DDP → optimizer → LR schedule.

Everything here takes its config section and the :class:`ParallelLayout` explicitly.

Overlapped communication (``parallel.overlap_grad_reduce`` / ``overlap_param_gather``) is
wired as Megatron's own training loop wires it: the DDP config turns on bucketed
asynchronous reduces (and the distributed optimizer's deferred all-gather), and the model's
``TransformerConfig`` gets ``no_sync_func`` / ``grad_sync_func`` so the pipeline schedules
launch each chunk's reduce at the right micro-batch. ``param_sync_func`` stays unset: only
the interleaved (virtual-pipeline) schedule calls it, and models here have one chunk per
stage, so the forward pre-hooks finish and prefetch the gathers (``align_param_gather``
off). With ``overlap_param_gather`` the module parameters hold the *previous* step's
values between ``optimizer.step()`` and the next forward: anything that reads them directly
(checkpoints, weight export) must call :meth:`TrainableModel.sync_params` first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from uniapl_mcore.megatron.config import OptimizerConfig, check_fast_path
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
from uniapl_mcore.runtime.layout import ParallelConfig
from uniapl_mcore.runtime.parallel import ParallelLayout

logger = logging.getLogger(__name__)


@dataclass
class TrainableModel:
    """A model being trained: DDP-wrapped stage chunks, optimizer and scheduler.

    ``chunks`` has one entry per virtual pipeline stage (one without interleaving).
    """

    chunks: list[Any]  # list[megatron.core.distributed.DistributedDataParallel]
    optimizer: Any  # megatron.core.optimizer.MegatronOptimizer
    scheduler: Any  # megatron.core.optimizer_param_scheduler.OptimizerParamScheduler
    config: Any  # megatron.core.transformer.TransformerConfig

    def train(self) -> None:
        for chunk in self.chunks:
            chunk.train()

    def eval(self) -> None:
        for chunk in self.chunks:
            chunk.eval()

    def sync_params(self) -> None:
        """Finish the parameter all-gather that ``overlap_param_gather`` leaves pending after
        an optimizer step, so the module parameters hold the updated weights (no-op
        otherwise). Collective over the data-parallel group."""
        for chunk in self.chunks:
            if getattr(chunk, "use_forward_hook", False):
                chunk.start_param_sync(force_sync=True)


def ddp_config(model: ModelConfig, parallel: ParallelConfig, optim: OptimizerConfig):
    """Megatron ``DistributedDataParallelConfig``: fp32 gradient buffers, bucketed overlapped
    reduce / param gather when configured, FP8 param gather with FP8 weights.

    Raises:
        ConfigError: a combination Megatron refuses (checked here too, for sections that
            are not part of a :class:`~uniapl_mcore.trainer.config.UniaplConfig`).
    """
    from megatron.core.distributed import DistributedDataParallelConfig

    check_fast_path(model, parallel, optim)
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        align_param_gather=False,
        use_distributed_optimizer=optim.use_distributed_optimizer,
        bucket_size=parallel.ddp_bucket_size,
        fp8_param_gather=model.fp8.param,
    )


def wire_schedule_hooks(config: Any, chunks: list[Any]) -> None:
    """Set the ``TransformerConfig`` callbacks Megatron's forward-backward schedules use:
    ``finalize_model_grads_func``, ``no_sync_func`` (gradient reduce only after the last
    micro-batch) and, with ``overlap_grad_reduce``, ``grad_sync_func`` (the schedule starts
    each chunk's remaining reduces itself). One callable for one chunk, a list otherwise."""
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    def one_or_list(funcs: list[Any]) -> Any:
        return funcs[0] if len(funcs) == 1 else funcs

    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = one_or_list([chunk.no_sync for chunk in chunks])
    overlap = chunks[0].ddp_config.overlap_grad_reduce
    config.grad_sync_func = one_or_list([c.start_grad_sync for c in chunks]) if overlap \
        else None
    config.param_sync_func = None


def build_model_chunks(model: ModelConfig, parallel: ParallelConfig, layout: ParallelLayout,
                       optim: OptimizerConfig, **config_overrides: Any) -> list[Any]:
    """This rank's pipeline stage of the GPT model, wrapped in Megatron DDP."""
    from megatron.core.distributed import DistributedDataParallel

    ddp = ddp_config(model, parallel, optim)
    config = transformer_config(model, parallel, **config_overrides)
    module = build_gpt_model(model, config, pre_process=layout.is_first_stage,
                             post_process=layout.is_last_stage)
    chunk = DistributedDataParallel(config=config, ddp_config=ddp, module=module)
    wire_schedule_hooks(config, [chunk])
    n_params = sum(p.numel() for p in module.parameters())
    logger.info("stage %d/%d built: %d parameters on this rank", layout.pp_rank + 1, layout.pp,
                n_params)
    return [chunk]


def build_optimizer(optim: OptimizerConfig, chunks: list[Any]):
    """Megatron AdamW (distributed when configured) over ``chunks``; precision follows the
    chunks' TransformerConfig (fp32 main parameters for bf16 / fp16 models)."""
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    model_config = chunks[0].config
    ddp = chunks[0].ddp_config
    config = MegatronOptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=model_config.bf16,
        fp16=model_config.fp16,
        params_dtype=model_config.params_dtype,
        use_distributed_optimizer=optim.use_distributed_optimizer,
        overlap_param_gather=ddp.overlap_param_gather,
        fp8_recipe=model_config.fp8_recipe if model_config.fp8 else None,
    )
    return get_megatron_optimizer(config, chunks)


def build_scheduler(optim: OptimizerConfig, optimizer: Any, max_steps: int,
                    updates_per_step: int = 1):
    """Warmup then constant / linear / cosine decay, stepped once per optimizer update.

    ``optim.warmup_steps``, ``optim.lr_decay_steps`` and ``max_steps`` count training steps;
    with ``updates_per_step`` optimizer updates per step (PPO mini-batches × epochs) the
    schedule spans that many more updates, so its shape over the run's steps is the same.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    u = updates_per_step
    decay_steps = (optim.lr_decay_steps or max_steps) * u
    warmup_steps = optim.warmup_steps * u
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup_steps else optim.lr,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=max(decay_steps, warmup_steps + 1),
        lr_decay_style=optim.lr_decay_style,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=max(decay_steps, 1),
        wd_incr_style="constant",
    )


def build_trainable_model(model: ModelConfig, parallel: ParallelConfig, optim: OptimizerConfig,
                          layout: ParallelLayout, max_steps: int,
                          **config_overrides: Any) -> TrainableModel:
    """Model chunks + optimizer + scheduler for one trainable network."""
    chunks = build_model_chunks(model, parallel, layout, optim, **config_overrides)
    optimizer = build_optimizer(optim, chunks)
    scheduler = build_scheduler(optim, optimizer, max_steps)
    return TrainableModel(chunks=chunks, optimizer=optimizer, scheduler=scheduler,
                          config=chunks[0].config)
