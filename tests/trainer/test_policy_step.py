"""The unified loss on the real Megatron model under the forward-backward schedule: the
gradient does not depend on how the global batch is split (micro-batches × DP ranks) nor on
uneven pipeline stages (PP=2 over 3 layers)."""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.testing import run_distributed

from .._bodies import save_initial_weights
from ._bodies import unified_gradient

pytestmark = pytest.mark.slow


def _flat(grads: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([grads[k].flatten().double() for k in names])


#: model overrides → (processes, layout overrides, micro-batches per rank) of each split
SPLITS = {
    "dp": ([], [(1, [], 4), (2, [], 1), (2, [], 2)]),
    # 3 layers over 2 stages: 1 and 2 (the balanced split), 4 micro-batches through 1F1B
    "pp2-uneven": (["model.num_layers=3"], [(2, ["parallel.pipeline_parallel_size=2"], 4)]),
}


@pytest.mark.parametrize("case", list(SPLITS))
def test_gradient_is_split_invariant(tmp_path, case):
    model, splits = SPLITS[case]
    init = run_distributed(save_initial_weights, 1, args=(model, str(tmp_path)))[0]
    ref = run_distributed(unified_gradient, 1, args=(init, 1, tuple(model)))[0]
    assert _flat(ref["grads"], sorted(ref["grads"])).norm() > 0
    for world, layout, micro in splits:
        results = run_distributed(unified_gradient, world,
                                  args=(init, micro, (*model, *layout)), timeout_s=300)
        # every parameter on some rank, under its global name (PP stages hold disjoint ones)
        assert set().union(*(r["grads"] for r in results)) == set(ref["grads"])
        for result in results:
            names = sorted(result["grads"])
            grad, ref_grad = _flat(result["grads"], names), _flat(ref["grads"], names)
            rel = float((grad - ref_grad).norm() / ref_grad.norm())
            assert rel <= 1e-5, (world, micro, rel)
            assert float((grad - ref_grad).abs().max() / ref_grad.abs().max()) <= 1e-5
            for key, value in result["metrics"].items():
                assert value == pytest.approx(ref["metrics"][key], rel=1e-5, abs=1e-9), key
        assert results[-1]["metrics"].keys() == ref["metrics"].keys()  # last rank: last stage
