"""PPO mini-batches and epochs on the real Megatron policy (``specs/objective.md`` §3.9):
after the first update of a step the ratio π_θ / π_old leaves 1 and the clip acts, and each
later update's gradient is the clipped surrogate's with π_old from the step's start."""

from __future__ import annotations

import pytest

from uniapl_mcore.testing import run_distributed

from .._bodies import save_initial_weights
from ._ppo_bodies import PPO, one_update_matches_direct_step, second_update_vs_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_init")
    return run_distributed(save_initial_weights, 1, args=(PPO, str(root)))[0]


@pytest.mark.parametrize("overrides", [["train.mini_batches=2"],
                                       ["train.mini_batches=2", "train.epochs=2"]])
def test_later_updates_match_the_clipped_surrogate_reference(init, overrides):
    found = run_distributed(second_update_vs_reference, 1, args=(init, overrides))[0]
    metrics = found["metrics"]
    assert found["updates"] == metrics["train/updates"] == (2 if len(overrides) == 1 else 4)
    assert metrics["grpo/ratio_max"] > 1.0
    assert metrics["grpo/clip_frac_low"] + metrics["grpo/clip_frac_high"] > 0
    for error, scale in zip(found["errors"], found["scales"], strict=True):
        assert scale > 1e-4
        assert error <= 1e-6, (error, scale)


def test_one_update_equals_the_plain_policy_step(init):
    found = run_distributed(one_update_matches_direct_step, 1, args=(init,))[0]
    loss_with, loss_without = found["loss"]
    assert loss_with == loss_without
    assert found["weights_equal"]
    assert found["mismatch"] is not None and found["mismatch"] > 0.1
