"""One optimizer step of the UniAPL objective on Megatron's forward-backward schedule.

The caller computes the step's *global* denominators first (``losses.step_denominators``
over every micro-batch of every data-parallel rank), so each micro-batch's loss is already
its share of the global objective. Megatron's schedule is then told to add, not average:
every micro-batch reports one "token" and its loss is multiplied by the global number of
micro-batches, which ``finalize_model_grads`` divides back out — the gradient is the plain
sum of the micro-batch losses' gradients over micro-batches and DP ranks, whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from uniapl_mcore.losses import (
    LossConfig,
    PolicyBatch,
    StepDenominators,
    objective_loss,
    reduce_metrics,
    vocab_parallel_logprobs_entropy,
)
from uniapl_mcore.megatron.model import TrainableModel
from uniapl_mcore.megatron.schedule import run_schedule, train_on_batches
from uniapl_mcore.runtime.parallel import ParallelLayout


@dataclass
class PolicyMicroBatch:
    """``b`` rows of ``s`` positions; position t predicts ``targets[:, t]``.

    tokens, position_ids, targets: int64 [b, s]; loss_mask: float [b, s] (1 on counted
    response / target tokens); attention_mask: bool [1 or b, 1, s, s] (True = blocked) or None
    on CUDA; row_kind: int [b] (``losses.RowKind``); old_logp (π_old), rollout_logp (the
    engine's log-prob of each sampled token, 0 on other positions), ref_logp (π_ref): fp32
    [b, s] or None;
    advantages, adv_advantages, rewards, coef, scores: fp32 [b] or None.
    """

    tokens: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    row_kind: torch.Tensor
    attention_mask: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    adv_advantages: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    def to(self, device: torch.device) -> PolicyMicroBatch:
        return PolicyMicroBatch(**{f.name: None if getattr(self, f.name) is None
                                   else getattr(self, f.name).to(device) for f in fields(self)})


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int | None,
                      tp_rank: int) -> torch.Tensor:
    """Set the logits of padding rows of the vocabulary (ids ≥ ``vocab_size``) to −1e30.

    logits: this TP rank's shard [..., v_local] of a padded vocabulary. Megatron pads the
    embedding / output layer to a multiple of the TP size; those ids are not tokens and must
    not enter the softmax. −1e30 rather than −inf: its exp underflows to exactly 0 while
    entropy terms p·log p stay 0·finite = 0 (−inf would give NaN). Returns ``logits`` itself
    when the shard has no padding.
    """
    if vocab_size is None:
        return logits
    v_local = logits.shape[-1]
    local_limit = vocab_size - tp_rank * v_local  # first padding column of this shard
    if local_limit >= v_local:
        return logits
    column = torch.arange(v_local, device=logits.device)
    return logits.masked_fill(column >= max(local_limit, 0), -1e30)


def _loss_func(batch: PolicyMicroBatch, denoms: StepDenominators, cfg: LossConfig, step: int,
               scale: float, temperature: float, vocab: tuple[int | None, int],
               logits: torch.Tensor):
    """Micro-batch objective from vocab-parallel logits [b, s, v/tp]."""
    logits = mask_padded_vocab(logits.float(), *vocab)
    logp, entropy = vocab_parallel_logprobs_entropy(
        logits / temperature, batch.targets, batch.loss_mask,
        with_entropy=cfg.entropy_coef > 0, chunk_tokens=cfg.logprob_chunk_tokens)
    policy = PolicyBatch(logp=logp, mask=batch.loss_mask, row_kind=batch.row_kind,
                         old_logp=batch.old_logp, rollout_logp=batch.rollout_logp,
                         ref_logp=batch.ref_logp, entropy=entropy,
                         advantages=batch.advantages, adv_advantages=batch.adv_advantages,
                         rewards=batch.rewards, coef=batch.coef, scores=batch.scores)
    out = objective_loss(policy, denoms, cfg, step)
    one = torch.ones((), dtype=torch.int, device=logits.device)
    return out.loss * scale, one, {"metrics": out.metrics, "maxima": out.maxima}


def _forward_step(batch: PolicyMicroBatch, model, *, denoms, cfg, step, scale, temperature,
                  vocab):
    logits = model(batch.tokens, batch.position_ids, batch.attention_mask)
    return logits, partial(_loss_func, batch, denoms, cfg, step, scale, temperature, vocab)


def global_microbatch_count(count: int, layout: ParallelLayout) -> int:
    """Micro-batches summed over data-parallel ranks (ranks may run different counts)."""
    total = torch.tensor([count], dtype=torch.int64, device=layout.device)
    dist.all_reduce(total, group=layout.dp_group())
    return int(total.item())


def _policy_forward_step(micro_batches: list[PolicyMicroBatch], denoms: StepDenominators,
                         cfg: LossConfig, layout: ParallelLayout, step: int, temperature: float,
                         vocab_size: int | None):
    """The schedule's forward step; one micro-batch's loss scaled by the global micro-batch
    count (collective over DP: every rank calls it before the schedule runs)."""
    scale = float(global_microbatch_count(len(micro_batches), layout))
    return partial(_forward_step, denoms=denoms, cfg=cfg, step=step, scale=scale,
                   temperature=temperature, vocab=(vocab_size, layout.tp_rank))


def _reduce(outputs: list[dict[str, Any]], layout: ParallelLayout) -> dict[str, Any]:
    if not layout.is_last_stage:
        return {}
    return reduce_metrics([o["metrics"] for o in outputs], [o["maxima"] for o in outputs],
                          layout.dp_group())


def policy_forward_backward(trainable: TrainableModel, micro_batches: list[PolicyMicroBatch],
                            denoms: StepDenominators, cfg: LossConfig, layout: ParallelLayout,
                            step: int = 0, temperature: float = 1.0,
                            vocab_size: int | None = None) -> dict[str, Any]:
    """Forward + backward of every micro-batch; gradients end reduced in the DDP buffers.

    ``vocab_size``: the true vocabulary (ids beyond it are TP padding, masked out).
    Returns the step's metrics (global values on the last pipeline stage, empty elsewhere).
    All micro-batches of a rank must share one shape ``[b, s]`` when PP > 1.
    """
    forward_step = _policy_forward_step(micro_batches, denoms, cfg, layout, step, temperature,
                                        vocab_size)
    outputs = run_schedule(trainable.chunks, micro_batches, forward_step, layout,
                           forward_only=False)
    return _reduce(outputs, layout)


def policy_train_step(trainable: TrainableModel, micro_batches: list[PolicyMicroBatch],
                      denoms: StepDenominators, cfg: LossConfig, layout: ParallelLayout,
                      step: int = 0, temperature: float = 1.0,
                      vocab_size: int | None = None) -> dict[str, Any]:
    """:func:`policy_forward_backward`, then the optimizer and LR-schedule step."""
    forward_step = _policy_forward_step(micro_batches, denoms, cfg, layout, step, temperature,
                                        vocab_size)
    outputs, optim = train_on_batches(trainable, micro_batches, forward_step, layout)
    metrics = _reduce(outputs, layout)
    metrics.update({"optim/lr": optim.lr, "optim/grad_norm": optim.grad_norm,
                    "optim/update_successful": float(optim.update_successful)})
    return metrics
