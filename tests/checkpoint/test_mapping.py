"""QKV interleave and gated fc1 layouts, including how Megatron's TP shards slice them."""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.models.mapping import (
    AttentionShape,
    TensorRule,
    merge_qkv,
    split_qkv,
    to_hf,
    to_mcore,
)


@pytest.mark.parametrize(("nh", "ng", "tp"), [(4, 2, 1), (4, 2, 2), (8, 4, 4), (16, 8, 8),
                                              (32, 8, 2), (6, 3, 1)])
def test_qkv_interleave_round_trip_and_tp_slices(nh, ng, tp):
    d, hidden = 4, 8
    shape = AttentionShape(nh, ng, d)
    q, k, v = (torch.randn(n * d, hidden) for n in (nh, ng, ng))
    qkv = merge_qkv(q, k, v, shape)
    assert qkv.shape == ((nh + 2 * ng) * d, hidden)
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(qkv, shape), (q, k, v), strict=True))
    # group g holds q heads g*hpg .. g*hpg+hpg-1, then k head g, then v head g
    hpg = nh // ng
    group = qkv.reshape(ng, hpg + 2, d, hidden)
    assert torch.equal(group[1, 0], q.reshape(nh, d, hidden)[hpg])
    assert torch.equal(group[1, hpg], k.reshape(ng, d, hidden)[1])
    assert torch.equal(group[1, hpg + 1], v.reshape(ng, d, hidden)[1])
    # TP rank r holds a plain dim-0 chunk = the interleave of its own groups
    local = AttentionShape(nh // tp, ng // tp, d)
    for rank, chunk in enumerate(qkv.chunk(tp, dim=0)):
        qs = q.reshape(tp, -1, hidden)[rank]
        ks, vs = k.reshape(tp, -1, hidden)[rank], v.reshape(tp, -1, hidden)[rank]
        assert torch.equal(chunk, merge_qkv(qs, ks, vs, local))


def test_bias_interleave_is_one_dimensional():
    shape = AttentionShape(4, 2, 3)
    q, k, v = torch.randn(12), torch.randn(6), torch.randn(6)
    merged = merge_qkv(q, k, v, shape)
    assert merged.shape == (24,)
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(merged, shape), (q, k, v),
                                                 strict=True))


def test_gated_and_vocab_rules():
    shape = AttentionShape(4, 2, 3)
    gate, up = torch.randn(5, 7), torch.randn(5, 7)
    rule = TensorRule("decoder.layers.mlp.linear_fc1.weight", ("g{layer}", "u{layer}"), "gated")
    fc1 = to_mcore(rule, [gate, up], shape)
    assert torch.equal(fc1, torch.cat([gate, up]))
    assert all(torch.equal(a, b) for a, b in zip(to_hf(rule, fc1, shape, 0), (gate, up),
                                                 strict=True))
    vocab = TensorRule("embedding.word_embeddings.weight", ("e",), "vocab")
    padded = torch.cat([torch.randn(10, 4), torch.zeros(6, 4)])
    assert torch.equal(to_hf(vocab, padded, shape, 10)[0], padded[:10])
    with pytest.raises(ValueError, match="takes 3 HF names"):
        TensorRule("x", ("a",), "qkv")
