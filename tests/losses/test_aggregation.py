"""Aggregation inputs: the loss mask must be 0/1, in the sums and in the denominators alike."""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.losses import RowKind, SliceDenominators, step_denominators
from uniapl_mcore.losses.aggregation import aggregate, slice_counts

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _inputs(mask_value: float):
    per_token = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    mask = torch.tensor([[1.0, mask_value, 0.0], [1.0, 1.0, 1.0]])
    return per_token, mask


@pytest.mark.parametrize("mode", MODES)
def test_fractional_mask_is_refused_naming_mask(mode):
    per_token, mask = _inputs(0.5)
    with pytest.raises(ValueError, match=r"^mask: must hold only 0 and 1"):
        aggregate(per_token, mask, mode, SliceDenominators(5.0, 2.0, 4))


def test_fractional_mask_is_refused_by_the_denominators():
    _, mask = _inputs(0.5)
    kinds = torch.full((2,), int(RowKind.PREF))
    with pytest.raises(ValueError, match=r"^mask: must hold only 0 and 1"):
        slice_counts(mask, kinds)
    with pytest.raises(ValueError, match=r"^mask: must hold only 0 and 1"):
        step_denominators([mask], [kinds], max_response_tokens=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bool])
def test_binary_masks_of_any_dtype_pass(dtype):
    per_token, mask = _inputs(1.0)
    mask = mask.to(dtype)
    kinds = torch.full((2,), int(RowKind.PREF))
    denoms = step_denominators([mask], [kinds], max_response_tokens=4)
    assert denoms.pref.tokens == 5.0 and denoms.pref.sequences == 2.0
    loss = aggregate(per_token, mask, "token-mean", denoms.pref)
    assert float(loss) == pytest.approx((0 + 1 + 3 + 4 + 5) / 5)
