"""Forward-only log-probs of a Megatron model (reference model, evaluation scoring)."""

from __future__ import annotations

from functools import partial

import torch

from uniapl_mcore.losses import vocab_parallel_logprobs
from uniapl_mcore.runtime.parallel import ParallelLayout
from uniapl_mcore.trainer.policy_step import PolicyMicroBatch, mask_padded_vocab


def _collect(batch: PolicyMicroBatch, vocab: tuple[int | None, int], temperature: float,
             chunk_tokens: int, logits: torch.Tensor):
    logits = mask_padded_vocab(logits.float(), *vocab)
    logp = vocab_parallel_logprobs(logits / temperature, batch.targets, batch.loss_mask,
                                   chunk_tokens=chunk_tokens)
    return torch.zeros((), device=logits.device), {"logp": logp.detach()}


def _forward_step(data_iterator, model, *, vocab, temperature, chunk_tokens, device):
    batch: PolicyMicroBatch = next(data_iterator).to(device)
    logits = model(batch.tokens, batch.position_ids, batch.attention_mask)
    return logits, partial(_collect, batch, vocab, temperature, chunk_tokens)


def forward_logprobs(chunks: list, micro_batches: list[PolicyMicroBatch],
                     layout: ParallelLayout, vocab_size: int | None,
                     temperature: float = 1.0, chunk_tokens: int = 1024
                     ) -> list[torch.Tensor] | None:
    """log π(target) fp32 [b, s] per micro-batch (0 where ``loss_mask`` is 0), on the last
    pipeline stage; None on the other stages. Collective over the model-parallel group."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not micro_batches:
        return [] if layout.is_last_stage else None
    for chunk in chunks:
        chunk.eval()
    first = micro_batches[0].tokens
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=partial(_forward_step, vocab=(vocab_size, layout.tp_rank),
                                      temperature=temperature, chunk_tokens=chunk_tokens,
                                      device=layout.device),
            data_iterator=iter(micro_batches), model=chunks,
            num_microbatches=len(micro_batches), seq_length=first.shape[1],
            micro_batch_size=first.shape[0], forward_only=True)
    if not layout.is_last_stage:
        return None
    return [o["logp"].cpu() for o in outputs]
