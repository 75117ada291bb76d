"""The optimizer section, and the checks that tie a model to its parallel layout.

:func:`check_layout` is what Megatron needs of a (model, layout) pair before it builds
anything: tensor parallelism divides the heads and MLP, expert parallelism the experts, the
pipeline split exists. :func:`check_fast_path` ties the GPU fast-path switches to the
optimizer. Both raise :class:`~uniapl_mcore.config.ConfigError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from uniapl_mcore.config import ConfigError, check
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers


@dataclass
class OptimizerConfig:
    """AdamW through Megatron's optimizer, with a warmup + decay learning-rate schedule."""

    lr: float = 3e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True
    warmup_steps: int = 5
    lr_decay_style: Literal["constant", "linear", "cosine"] = "cosine"
    lr_decay_steps: int | None = None

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}]")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            check(0 <= getattr(self, name) < 1, name, "must be in [0, 1)")
        check(self.adam_eps > 0, "adam_eps", "must be > 0")
        check(self.clip_grad >= 0, "clip_grad", "must be >= 0 (0 disables clipping)")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.lr_decay_steps is None or self.lr_decay_steps > 0, "lr_decay_steps",
              "must be > 0 when set")


def check_layout(model: ModelConfig, parallel: ParallelConfig, section: str = "",
                 model_label: str | None = None) -> None:
    """Check that Megatron can lay ``model`` out as ``parallel`` says, for any world size.

    Tensor parallelism must divide the attention heads and the MLP width, and the query
    groups and TP must divide one another. Expert parallelism needs a mixture-of-experts
    model whose expert count it divides. A pipeline split must exist
    (:func:`~uniapl_mcore.runtime.layout.pipeline_stage_layers`).

    Args:
        section: where the two sections sit in the run config: ``""`` for the policy's
            ``model`` / ``parallel``, ``"discriminator"`` for ``discriminator.model`` / …;
            error messages name fields below it.
        model_label: how messages name the model's fields (default ``"<section>.model."``;
            e.g. ``"the model's "`` for an architecture read from a checkpoint).
    Raises:
        ConfigError: one line naming the ``parallel.*`` field at fault.
    """
    prefix = f"{section}." if section else ""
    of = f"{prefix}model." if model_label is None else model_label
    tp_field = f"{prefix}parallel.tensor_parallel_size"
    tp = parallel.tensor_parallel_size
    for name in ("num_attention_heads", "ffn_hidden_size"):
        check(getattr(model, name) % tp == 0, tp_field,
              f"{tp} does not divide {of}{name}={getattr(model, name)}")
    check(model.num_query_groups % tp == 0 or tp % model.num_query_groups == 0, tp_field,
          f"{tp} and {of}num_query_groups={model.num_query_groups} must divide one "
          "another")
    ep = parallel.expert_parallel_size
    ep_field = f"{prefix}parallel.expert_parallel_size"
    check(ep == 1 or model.num_experts > 0, ep_field,
          f"{ep} needs a mixture-of-experts model ({of}num_experts is 0)")
    check(ep == 1 or model.num_experts % ep == 0, ep_field,
          f"{ep} does not divide {of}num_experts={model.num_experts}")
    try:
        pipeline_stage_layers(model.num_layers, parallel, f"{of}num_layers")
    except ConfigError as err:
        raise err.within(f"{prefix}parallel") from None


def check_fast_path(model: ModelConfig, parallel: ParallelConfig,
                    optimizer: OptimizerConfig) -> None:
    """Cross-section checks of the GPU fast-path switches (FP8 weights, overlapped
    communication, full recomputation); errors name the ``model.`` / ``parallel.`` field."""
    distributed = optimizer.use_distributed_optimizer
    check(not parallel.overlap_param_gather or distributed, "parallel.overlap_param_gather",
          "needs optimizer.use_distributed_optimizer (the gather is the distributed "
          "optimizer's)")
    check(not model.fp8.param or distributed, "model.fp8.param",
          "FP8 weights are all-gathered by the distributed optimizer: set "
          "optimizer.use_distributed_optimizer")
    if model.recompute.granularity != "full":
        return
    counts = pipeline_stage_layers(model.num_layers, parallel)
    where = "per pipeline stage" if len(set(counts)) == 1 else "of the smallest pipeline stage"
    check(model.recompute.num_layers <= min(counts), "model.recompute.num_layers",
          f"{model.recompute.num_layers} exceeds the {min(counts)} layers {where}")
