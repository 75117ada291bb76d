"""Sequence packing: first-fit decreasing, micro-batch layout, masks vs THD parameters, the
fill benchmark against a padded baseline, and packed == separate logits on Megatron."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from uniapl_mcore.data.packing import (
    PackItem,
    block_causal_mask,
    first_fit_decreasing,
    pack,
    padded_batch_stats,
)
from uniapl_mcore.testing import run_distributed

from ._bodies import packed_vs_separate_logits

logger = logging.getLogger(__name__)


def test_first_fit_decreasing_places_every_item_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=300).tolist()
    bins = first_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert first_fit_decreasing([5, 7, 3, 6], 10) == [[1, 2], [3], [0]]  # FFD by hand
    # worked example: 7 → bin0, 6 → bin1, 5 → bin2, 3 → bin0 (first with room)
    with pytest.raises(ValueError, match="more than the micro-batch budget 10"):
        first_fit_decreasing([4, 11], 10)


def _items() -> list[PackItem]:
    return [PackItem([10, 11, 12, 13], [0, 0, 1, 1], key="a"),
            PackItem([20, 21, 22], [0, 1, 1], key="b"),
            PackItem([30, 31, 32, 33, 34], [0, 0, 0, 1, 1], key="c")]


def test_micro_batch_layout():
    (mb,), stats = pack(_items(), micro_batch_tokens=12, pad_id=0)
    # FFD order: c (4 positions), a (3), b (2); each shifted on its own
    assert mb.keys == ("c", "a", "b")
    assert mb.tokens.tolist() == [[30, 31, 32, 33, 10, 11, 12, 20, 21, 0, 0, 0]]
    assert mb.labels.tolist() == [[31, 32, 33, 34, 11, 12, 13, 21, 22, 0, 0, 0]]
    assert mb.loss_mask.tolist() == [[0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 1, 2]]
    assert mb.cu_seqlens.tolist() == [0, 4, 7, 9, 12]  # padding tail is its own segment
    assert [(s.start, s.stop) for s in mb.sequence_slices()] == [(0, 4), (4, 7), (7, 9)]
    assert (mb.num_tokens, mb.length) == (9, 12)
    assert stats.padding_share == pytest.approx(3 / 12)


def test_block_causal_mask_matches_per_sequence_causal_masks():
    (mb,), _ = pack(_items(), micro_batch_tokens=12, pad_id=0)
    blocked = mb.attention_mask()[0, 0]
    assert blocked.shape == (12, 12) and blocked.dtype == torch.bool
    cu = mb.cu_seqlens.tolist()
    for lo, hi in zip(cu[:-1], cu[1:], strict=True):
        n = hi - lo
        assert torch.equal(blocked[lo:hi, lo:hi], torch.ones(n, n, dtype=torch.bool).triu(1))
        assert blocked[lo:hi, :lo].all() and blocked[lo:hi, hi:].all()
    assert torch.equal(block_causal_mask(torch.tensor([0, 3]), 3)[0, 0],
                       torch.ones(3, 3, dtype=torch.bool).triu(1))


def test_thd_packed_seq_params():
    mbs, _ = pack(_items(), micro_batch_tokens=12, pad_id=0, fixed_length=False,
                  pad_to_multiple_of=4)
    (mb,) = mbs
    assert mb.length == 12  # 9 tokens rounded up to a multiple of 4
    params = mb.packed_seq_params()
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.dtype == torch.int32
    assert params.cu_seqlens_q.tolist() == params.cu_seqlens_kv.tolist() == [0, 4, 7, 9, 12]
    assert params.max_seqlen_q == params.max_seqlen_kv == 4
    (tight,), _ = pack(_items(), micro_batch_tokens=12, pad_id=0, fixed_length=False)
    assert tight.length == 9 and tight.cu_seqlens.tolist() == [0, 4, 7, 9]


def test_item_validation():
    with pytest.raises(ValueError, match="differ in length"):
        PackItem([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="at least 2 tokens"):
        PackItem([1], [1])


def test_packing_benchmark_long_tailed_lengths():
    """Long-tailed lengths in 50..4096 tokens (log-normal, median 400): FFD fills ≥ 95 % of
    the slots; the padded baseline (4 sequences per micro-batch, padded to the longest, and
    to a fixed 4096) is measured in the same run."""
    rng = np.random.default_rng(1234)
    lengths = np.clip(rng.lognormal(np.log(400), 1.0, size=512), 50, 4096).astype(int)
    items = [PackItem([1] * (n + 1), [0] + [1] * n, key=i) for i, n in enumerate(lengths)]
    batches, packed = pack(items, micro_batch_tokens=8192, pad_id=0)
    baseline = padded_batch_stats(lengths.tolist(), micro_batch_size=4)
    fixed = padded_batch_stats(lengths.tolist(), micro_batch_size=4, fixed_length=4096)
    logger.info("packing fill %.4f (%d micro-batches); padded baseline %.4f, fixed %.4f",
                packed.fill, packed.micro_batches, baseline.fill, fixed.fill)
    print(f"\nFFD fill {packed.fill:.4f} over {packed.micro_batches} micro-batches of 8192; "
          f"padded baseline {baseline.fill:.4f}; padded to 4096 {fixed.fill:.4f}")
    assert lengths.min() >= 50 and lengths.max() == 4096
    assert packed.real_tokens == baseline.real_tokens == int(lengths.sum())
    assert packed.sequences == 512
    assert packed.fill >= 0.95
    assert baseline.fill < packed.fill and fixed.fill < baseline.fill
    assert sum(float(b.loss_mask.sum()) for b in batches) == int(lengths.sum())


@pytest.mark.slow
def test_packed_logits_equal_separate_sequences_on_megatron():
    """Real Megatron GPTModel (local attention on CPU) with the block-diagonal mask gives the
    logits each sequence gets alone: packing changes nothing numerically."""
    (result,) = run_distributed(packed_vs_separate_logits, 1, args=(0,), timeout_s=180)
    assert result["num_tokens"] == 9 + 5 + 13 + 7 + 3 - 5 and result["length"] == 40
    assert result["max_abs_diff"] < 1e-4


def test_padding_micro_batches_equalise_counts_across_ranks():
    batches, stats = pack(_items(), micro_batch_tokens=12, pad_id=0, min_micro_batches=3)
    assert len(batches) == 3 and stats.real_tokens == 9
    empty = batches[2]
    assert empty.keys == () and empty.num_tokens == 0 and empty.length == 12
    assert float(empty.loss_mask.sum()) == 0 and empty.cu_seqlens.tolist() == [0, 12]
    assert not empty.attention_mask()[0, 0].diagonal().any()  # no fully-blocked row
