"""Plain-PyTorch reference for the engines' log-probs (written apart from the library).

An engine reports, for each sampled token, its log-probability under the distribution it was
drawn from: logits / temperature, restricted to the top-k tokens and then to the smallest
top-p nucleus (a token is kept while the mass of the tokens ranked above it is below p),
renormalised; greedy requests (temperature 0) report the raw log-softmax.
"""

from __future__ import annotations

import torch

from uniapl_mcore.rollout.types import SamplingParams


def sampling_logprob(logits: torch.Tensor, token: int, params: SamplingParams) -> float:
    """log π_rollout(token) from one position's logits [V] (float64, one token at a time)."""
    logits = logits.double()
    if params.temperature == 0:
        return float(logits.log_softmax(-1)[token])
    scaled = logits / params.temperature
    order = scaled.argsort(descending=True).tolist()
    if params.top_k > 0:
        order = order[:params.top_k]
    probs = scaled[order].softmax(-1).tolist()
    kept, above = [], 0.0
    for index, p in zip(order, probs, strict=True):
        if kept and above >= params.top_p:
            break
        kept.append(index)
        above += p
    assert token in kept, "the engine drew a token outside its own nucleus"
    return float(scaled[kept].log_softmax(-1)[kept.index(token)])


def teacher_forced(model, prompt, tokens, params: SamplingParams) -> torch.Tensor:
    """The reference log-probs [len(tokens)] of an HF ``model`` for a sampled continuation."""
    seq = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        logits = model(seq).logits[0, len(prompt) - 1:-1]
    return torch.tensor([sampling_logprob(row, t, params) for row, t in zip(logits, tokens,
                                                                             strict=True)])
