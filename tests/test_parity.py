"""TP=2, PP=2 and DP=2 (two gloo processes each), and TP=4 with fewer KV heads than ranks,
against one process: same loss and grad norm.

Every layout starts from the same weights (saved once, loaded at each layout) and sees the
same mixed global batches through the production policy update (token-budget micro-batches,
or common-width ones under PP; π_ref log-probs; the unified loss); the distributed optimizer
is on. Three optimizer steps, fp32, relative difference ≤ 1e-5.
"""

from __future__ import annotations

import pytest

from uniapl_mcore.testing import run_distributed

from ._bodies import save_initial_weights, train_losses

pytestmark = pytest.mark.slow

BASE = ["train.max_steps=3", "optimizer.use_distributed_optimizer=true",
        "optimizer.weight_decay=0.01"]
RTOL = 1e-5

LAYOUTS = {
    "tp2": ["parallel.tensor_parallel_size=2"],
    "pp2": ["parallel.pipeline_parallel_size=2"],
    "dp2": [],
    # 4 ranks > 2 KV heads: Megatron all-gathers q/k/v inside a group (and reduce-scatters in
    # backward, where the CPU layer's device map does not reach)
    "tp4-split-kv-groups": ["parallel.tensor_parallel_size=4"],
}
WORLD = {"tp4-split-kv-groups": 4}
TIED = ["model.tie_word_embeddings=true"]


def _reference(tmp_path_factory, extra: list[str]):
    root = tmp_path_factory.mktemp("init")
    init = run_distributed(save_initial_weights, 1, args=(BASE + extra, str(root)))[0]
    ref = run_distributed(train_losses, 1, args=(BASE + extra,), kwargs={"init_from": init})[0]
    return init, ref


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    return _reference(tmp_path_factory, [])


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return _reference(tmp_path_factory, TIED)


def _assert_close(got, ref):
    assert [s for s, *_ in got] == [1, 2, 3]
    for (step, loss, norm), (_, ref_loss, ref_norm) in zip(got, ref, strict=True):
        assert abs(loss - ref_loss) <= RTOL * abs(ref_loss), (step, loss, ref_loss)
        assert abs(norm - ref_norm) <= RTOL * abs(ref_norm), (step, norm, ref_norm)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_process_layout_matches_one_process(layout, untied):
    init, ref = untied
    results = run_distributed(train_losses, WORLD.get(layout, 2), args=(BASE + LAYOUTS[layout],),
                              kwargs={"init_from": init}, timeout_s=300)
    assert all(r == results[0] for r in results)  # every rank reports the same global figures
    _assert_close(results[0], ref)
    # the weights actually moved: the loss is not frozen at its first value
    assert len({round(loss, 6) for _, loss, _ in ref}) == 3


def test_tied_embeddings_across_pipeline_stages(tied):
    """With PP=2 the tied embedding lives on both stages; its grads must be summed."""
    init, ref = tied
    results = run_distributed(train_losses, 2, args=(BASE + TIED + LAYOUTS["pp2"],),
                              kwargs={"init_from": init}, timeout_s=300)
    _assert_close(results[0], ref)
