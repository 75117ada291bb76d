"""Token sampling as pure tensor functions (temperature, top-k, top-p, per-row draws)."""

from __future__ import annotations

import torch


def sample_generator(seed: int | None, sample_index: int) -> torch.Generator:
    """The CPU generator of sample ``sample_index`` of a request seeded with ``seed``.

    Seeded requests are reproducible regardless of batching; ``seed=None`` draws fresh
    entropy.
    """
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed((seed * 1_000_003 + sample_index) % (2**63 - 1))
    return gen


def filter_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor) -> torch.Tensor:
    """Temperature-scaled logits with top-k / top-p excluded tokens set to -inf.

    ``logits`` float [B, V]; ``temperature`` [B] (> 0); ``top_k`` int [B] (<= 0: off);
    ``top_p`` [B] in (0, 1] (1: off). Returns float [B, V]. At least the most likely token
    always survives.
    """
    scaled = logits / temperature[:, None]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        ranks = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
        k = torch.where(top_k > 0, top_k, scaled.shape[-1])[:, None]
        drop = ranks >= k
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        drop |= (before > top_p[:, None]) & (ranks > 0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(-1, order, sorted_logits)
    return scaled


def sampling_logits(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                    top_p: torch.Tensor) -> torch.Tensor:
    """The logits each row samples from, fp32 [B, V]: :func:`filter_logits` at the row's
    temperature, or the raw logits for greedy rows (temperature 0). Their log-softmax at the
    drawn token is the behaviour policy's log-prob π_rollout (vLLM's ``processed_logprobs``).
    """
    logits = logits.float()
    greedy = temperature <= 0
    if bool(greedy.all()):
        return logits
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature)
    filtered = filter_logits(logits, safe_t, top_k, top_p)
    return torch.where(greedy[:, None], logits, filtered) if bool(greedy.any()) else filtered


def draw_tokens(scaled: torch.Tensor, temperature: torch.Tensor,
                uniforms: torch.Tensor) -> torch.Tensor:
    """Next token ids int64 [B] from :func:`sampling_logits` ``scaled`` [B, V], by inverse CDF.

    Rows with temperature 0 are greedy; each other row takes the first token whose
    cumulative probability exceeds its draw ``uniforms`` [B] in [0, 1) (float64), so a token
    of zero probability is never chosen and a row's token depends only on its own logits and
    draw.
    """
    greedy = temperature <= 0
    out = scaled.argmax(-1)
    if bool(greedy.all()):
        return out
    cdf = scaled.softmax(-1).double().cumsum(-1)
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    drawn = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=scaled.shape[-1] - 1)
    return torch.where(greedy, out, drawn)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """:func:`draw_tokens` from ``logits`` float [B, V] (filtered by :func:`sampling_logits`)."""
    return draw_tokens(sampling_logits(logits, temperature, top_k, top_p), temperature,
                       uniforms)
