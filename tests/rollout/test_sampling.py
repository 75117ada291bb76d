"""Inverse-CDF sampling: distribution, filters, greedy rows."""

from __future__ import annotations

import torch

from uniapl_mcore.rollout.sampling import sample_tokens


def _draw(logits, n, **kw):
    rows = logits.expand(n, -1)
    temperature = torch.full((n,), kw.get("temperature", 1.0))
    top_k = torch.full((n,), kw.get("top_k", 0))
    top_p = torch.full((n,), kw.get("top_p", 1.0))
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sample_tokens(rows, temperature, top_k, top_p, uniforms)


def test_draws_follow_the_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    counts = torch.bincount(_draw(logits, 20000), minlength=4).double() / 20000
    assert torch.allclose(counts, logits[0].double().softmax(-1), atol=0.01)


def test_filtered_tokens_are_never_drawn_even_at_the_edges():
    logits = torch.tensor([[5.0, 0.0, 4.0, 0.0, 3.0]])
    assert set(_draw(logits, 5000, top_k=2).tolist()) == {0, 2}
    edges = sample_tokens(logits.expand(2, -1), torch.ones(2), torch.full((2,), 2),
                          torch.ones(2), torch.tensor([0.0, 1 - 1e-12], dtype=torch.float64))
    assert edges.tolist() == [0, 2]


def test_greedy_rows_take_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    out = sample_tokens(logits, torch.tensor([0.0, 1.0]), torch.zeros(2, dtype=torch.long),
                        torch.ones(2), torch.tensor([0.99, 0.0], dtype=torch.float64))
    assert out.tolist() == [1, 0]
