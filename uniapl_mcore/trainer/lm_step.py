"""One optimizer step of token-level negative log-likelihood on Megatron's core path.

``get_forward_backward_func()`` runs the micro-batches (pipelined when PP > 1), Megatron DDP
reduces gradients, ``finalize_model_grads`` scales them by the global token count (the loss
is a per-token mean over the *global* batch: all micro-batches, all data-parallel ranks),
then the optimizer and the LR schedule step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from uniapl_mcore.megatron.model import TrainableModel
from uniapl_mcore.megatron.schedule import causal_mask, train_on_batches
from uniapl_mcore.runtime.parallel import ParallelLayout


@dataclass
class TokenBatch:
    """A micro-batch of ``b`` sequences of ``s`` tokens.

    tokens, labels, position_ids: int64 [b, s]; loss_mask: float32 [b, s] (1 = counted);
    attention_mask: bool [1, 1, s, s], True where attention is *blocked*, or None to let
    Megatron build its causal mask (CUDA only).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None

    def to(self, device: torch.device) -> TokenBatch:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return TokenBatch(self.tokens.to(device), self.labels.to(device),
                          self.loss_mask.to(device), self.position_ids.to(device), mask)


def next_token_batch(sequences: torch.Tensor, loss_mask: torch.Tensor | None = None,
                     explicit_mask: bool = True) -> TokenBatch:
    """Inputs/labels for next-token prediction from int64 ``sequences`` [b, s + 1].

    ``loss_mask`` [b, s + 1] marks target tokens to count (its first column is dropped).
    """
    tokens, labels = sequences[:, :-1].contiguous(), sequences[:, 1:].contiguous()
    b, s = tokens.shape
    mask = torch.ones(b, s) if loss_mask is None else loss_mask[:, 1:].float().contiguous()
    positions = torch.arange(s, dtype=torch.long).unsqueeze(0).expand(b, s).contiguous()
    return TokenBatch(tokens, labels, mask, positions, causal_mask(s) if explicit_mask else None)


def _nll_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """Sum of masked per-token NLL; Megatron divides by the global token count.

    per_token_loss: fp32 [b, s] from GPTModel(labels=...). Returns (loss_sum, n_tokens,
    {"lm_loss": [loss_sum, n_tokens]}) — the reporting pair sums across micro-batches/ranks.
    """
    loss_sum = (per_token_loss.float() * loss_mask).sum()
    n_tokens = loss_mask.sum().to(torch.int)
    return loss_sum, n_tokens, {"lm_loss": torch.stack([loss_sum.detach(), loss_mask.sum()])}


def _forward_step(batch: TokenBatch, model):
    output = model(input_ids=batch.tokens, position_ids=batch.position_ids,
                   attention_mask=batch.attention_mask, labels=batch.labels)
    return output, partial(_nll_loss, batch.loss_mask)


@dataclass
class StepResult:
    """Global figures for one optimizer step (identical on every rank)."""

    loss: float  # per-token NLL over the global batch (nats)
    num_tokens: int  # loss tokens in the global batch
    grad_norm: float  # global L2 norm of gradients before clipping
    lr: float
    update_successful: bool


def reduce_loss_pairs(pairs: list[torch.Tensor], layout: ParallelLayout) -> torch.Tensor:
    """Sum [loss_sum, tokens] pairs over micro-batches, DP ranks and pipeline stages.

    Only the last stage has pairs; others contribute zeros, so a sum over the pipeline group
    broadcasts the total to every rank. Returns float64 [2].
    """
    from megatron.core import parallel_state as mpu

    total = torch.zeros(2, dtype=torch.float64, device=layout.device)
    for pair in pairs:
        total += pair.to(total)
    dist.all_reduce(total, group=layout.dp_group())
    if layout.pp > 1:
        dist.all_reduce(total, group=mpu.get_pipeline_model_parallel_group())
    return total


def train_step(trainable: TrainableModel, micro_batches: list[TokenBatch],
               layout: ParallelLayout) -> StepResult:
    """Forward/backward over this rank's micro-batches, then one optimizer + LR step."""
    losses, optim = train_on_batches(trainable, micro_batches, _forward_step, layout)
    total = reduce_loss_pairs([d["lm_loss"] for d in losses], layout)
    return StepResult(
        loss=float(total[0] / total[1].clamp(min=1)),
        num_tokens=int(total[1]),
        grad_norm=optim.grad_norm,
        lr=optim.lr,
        update_successful=optim.update_successful,
    )
