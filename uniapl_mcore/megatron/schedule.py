"""Megatron's pipeline schedules run once, for every model here: forward-only and
forward-backward over a list of micro-batches, then the optimizer + LR-schedule step.

``run_schedule`` hides ``get_forward_backward_func``'s calling convention (a data iterator,
``seq_length`` / ``micro_batch_size`` read from the first micro-batch, eval / train mode,
``no_grad`` for forward-only, zeroed gradient buffers before a backward pass). Callers give a
``forward_step(batch, model) -> (output, loss_func)`` that sees a micro-batch already moved
to the layout's device; ``loss_func(output)`` returns ``(loss, num_tokens, outputs)`` as
Megatron expects, and the ``outputs`` dicts come back in micro-batch order on the last
pipeline stage (Megatron returns nothing on the others).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from uniapl_mcore.megatron.model import TrainableModel
from uniapl_mcore.runtime.parallel import ParallelLayout

logger = logging.getLogger(__name__)


class MicroBatch(Protocol):
    """What the schedule needs of a micro-batch: int64 ``tokens`` [b, s] and ``to(device)``."""

    tokens: torch.Tensor

    def to(self, device: torch.device) -> Any: ...


#: ``forward_step(batch, model) -> (output, loss_func)``.
ForwardStep = Callable[[Any, Any], tuple[torch.Tensor, Callable[[torch.Tensor], tuple]]]


def causal_mask(seq_length: int, device: torch.device | None = None) -> torch.Tensor:
    """Megatron-convention causal mask: bool [1, 1, s, s], True above the diagonal (blocked)."""
    ones = torch.ones(seq_length, seq_length, dtype=torch.bool, device=device)
    return torch.triu(ones, diagonal=1).view(1, 1, seq_length, seq_length)


@dataclass
class ModelInputs:
    """Plain model inputs: tokens, position_ids int64 [b, s]; attention_mask bool
    [1 or b, 1, s, s] (True = blocked) or None (CUDA: Megatron's causal mask)."""

    tokens: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None

    @classmethod
    def causal(cls, tokens: torch.Tensor, explicit_mask: bool) -> ModelInputs:
        """Positions 0..s-1 on every row; an explicit causal mask when ``explicit_mask``."""
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        mask = causal_mask(tokens.shape[1], tokens.device) if explicit_mask else None
        return cls(tokens, positions.contiguous(), mask)

    def to(self, device: torch.device) -> ModelInputs:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return ModelInputs(self.tokens.to(device), self.position_ids.to(device), mask)


def _on_device(forward_step: ForwardStep, device: torch.device):
    def step(data_iterator: Iterator[MicroBatch], model):
        return forward_step(next(data_iterator).to(device), model)
    return step


def run_schedule(chunks: Sequence[Any], micro_batches: Sequence[MicroBatch],
                 forward_step: ForwardStep, layout: ParallelLayout, *,
                 forward_only: bool) -> list[dict[str, Any]]:
    """Run ``micro_batches`` through Megatron's schedule (pipelined when PP > 1).

    ``forward_only``: modules in eval mode under ``no_grad``. Otherwise modules in train mode
    with zeroed DDP gradient buffers; the gradients end reduced in those buffers (the
    schedule's ``finalize_model_grads``). Collective over the model-parallel group. All
    micro-batches must share one shape ``[b, s]`` when PP > 1. Returns the loss functions'
    output dicts on the last pipeline stage, ``[]`` elsewhere and for no micro-batches.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not micro_batches:
        return []
    for chunk in chunks:
        chunk.eval() if forward_only else chunk.train()
    if not forward_only:
        for chunk in chunks:
            chunk.zero_grad_buffer()
    first = micro_batches[0].tokens
    with torch.no_grad() if forward_only else contextlib.nullcontext():
        outputs = get_forward_backward_func()(
            forward_step_func=_on_device(forward_step, layout.device),
            data_iterator=iter(micro_batches), model=list(chunks),
            num_microbatches=len(micro_batches), seq_length=first.shape[1],
            micro_batch_size=first.shape[0], forward_only=forward_only)
    return list(outputs) if layout.is_last_stage else []


@dataclass
class OptimizerStep:
    """One optimizer step's figures: the learning rate it used, the global gradient L2 norm
    before clipping (0.0 when the optimizer reports none), whether the update was applied
    (False when fp16 loss scaling found inf / NaN)."""

    lr: float
    grad_norm: float
    update_successful: bool


def train_on_batches(trainable: TrainableModel, micro_batches: Sequence[MicroBatch],
                     forward_step: ForwardStep, layout: ParallelLayout
                     ) -> tuple[list[dict[str, Any]], OptimizerStep]:
    """Forward-backward over ``micro_batches`` (:func:`run_schedule`), then one optimizer and
    LR-schedule step. Returns the loss outputs (last stage) and the step's figures."""
    trainable.optimizer.zero_grad()
    outputs = run_schedule(trainable.chunks, micro_batches, forward_step, layout,
                           forward_only=False)
    return outputs, optimizer_step(trainable)


def optimizer_step(trainable: TrainableModel) -> OptimizerStep:
    """Step the optimizer on the reduced gradients, then the LR schedule by one."""
    lr = float(trainable.optimizer.param_groups[0]["lr"])
    update_successful, grad_norm, _ = trainable.optimizer.step()
    trainable.scheduler.step(increment=1)
    return OptimizerStep(lr=lr, grad_norm=float(grad_norm or 0.0),
                         update_successful=bool(update_successful))
