"""Keep the discriminator's weights (and optimizer state) in host memory between calls.

Only meaningful on CUDA: on CPU every function here is a no-op. A trainable model's
parameters live in Megatron DDP's contiguous buffers, which are moved with the buffers' own
``offload_to_cpu`` / ``reload_from_cpu`` (parameter views stay valid); the optimizer's state
and main parameters move with Megatron's ``offload_to_cpu`` / ``restore_from_cpu``. A frozen
model (no DDP) moves module by module.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from uniapl_mcore.megatron.model import TrainableModel

logger = logging.getLogger(__name__)


def _buffers(chunk: Any) -> list[Any]:
    return list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers",
                                                              []))


def to_host(model: TrainableModel) -> None:
    """Move weights, gradient buffers and optimizer state to host memory (CUDA only)."""
    if not torch.cuda.is_available():
        return
    if model.optimizer is not None:
        model.optimizer.offload_to_cpu()
    for chunk in model.chunks:
        buffers = _buffers(chunk)
        if buffers:
            for buffer in buffers:
                buffer.offload_to_cpu(move_params=True, move_grads=True)
        else:
            chunk.cpu()
    torch.cuda.empty_cache()
    logger.debug("discriminator offloaded to host memory")


def to_device(model: TrainableModel) -> None:
    """Inverse of :func:`to_host` (CUDA only)."""
    if not torch.cuda.is_available():
        return
    for chunk in model.chunks:
        buffers = _buffers(chunk)
        if buffers:
            for buffer in buffers:
                buffer.reload_from_cpu(move_params=True, move_grads=True)
        else:
            chunk.cuda(torch.cuda.current_device())
    if model.optimizer is not None:
        model.optimizer.restore_from_cpu()
    logger.debug("discriminator back on %s", torch.cuda.current_device())
