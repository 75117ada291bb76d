"""Forward-only log-probs of a Megatron model (reference model, evaluation scoring)."""

from __future__ import annotations

from functools import partial

import torch

from uniapl_mcore.losses import vocab_parallel_logprobs
from uniapl_mcore.megatron.schedule import run_schedule
from uniapl_mcore.runtime.parallel import ParallelLayout
from uniapl_mcore.trainer.policy_step import PolicyMicroBatch, mask_padded_vocab


def _collect(batch: PolicyMicroBatch, vocab: tuple[int | None, int], temperature: float,
             chunk_tokens: int, logits: torch.Tensor):
    logits = mask_padded_vocab(logits.float(), *vocab)
    logp = vocab_parallel_logprobs(logits / temperature, batch.targets, batch.loss_mask,
                                   chunk_tokens=chunk_tokens)
    return torch.zeros((), device=logits.device), {"logp": logp.detach()}


def _forward_step(batch: PolicyMicroBatch, model, *, vocab, temperature, chunk_tokens):
    logits = model(batch.tokens, batch.position_ids, batch.attention_mask)
    return logits, partial(_collect, batch, vocab, temperature, chunk_tokens)


def forward_logprobs(chunks: list, micro_batches: list[PolicyMicroBatch],
                     layout: ParallelLayout, vocab_size: int | None,
                     temperature: float = 1.0, chunk_tokens: int = 1024
                     ) -> list[torch.Tensor] | None:
    """log π(target) fp32 [b, s] per micro-batch (0 where ``loss_mask`` is 0), on the last
    pipeline stage; None on the other stages. Collective over the model-parallel group."""
    forward_step = partial(_forward_step, vocab=(vocab_size, layout.tp_rank),
                           temperature=temperature, chunk_tokens=chunk_tokens)
    outputs = run_schedule(chunks, micro_batches, forward_step, layout, forward_only=True)
    if not layout.is_last_stage:
        return None
    return [o["logp"].cpu() for o in outputs]
