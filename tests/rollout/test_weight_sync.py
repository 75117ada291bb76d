"""Weight sync from a live Megatron model at TP=2, and at PP=2 with uneven stages, into torch
engines on Ray; the engines' log-probs of their own samples match the trainer's
recomputation (fp32)."""

from __future__ import annotations

import pytest

from uniapl_mcore.checkpoint.convert import hf_to_mcore
from uniapl_mcore.rollout.mismatch import mismatch_metrics, pad_logprobs
from uniapl_mcore.testing import run_distributed

from ._bodies import sync_and_compare

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("tp", "pp", "layers", "engines"), [
    (2, 1, None, 2),
    (1, 2, 3, 1),  # uneven pipeline stages: 1 and 2 layers
], ids=["tp2", "pp2-uneven"])
def test_sync_then_engine_logprobs_match_trainer(ray_cluster, tiny_hf, tmp_path, tp, pp, layers,
                                                 engines):
    from tests.checkpoint.hf_models import save_tiny

    hf = tiny_hf if layers is None else save_tiny(tmp_path / "hf", "qwen3", num_layers=layers)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(sync_and_compare, tp * pp,
                              args=(str(hf), str(mcore), ray_cluster, tp, engines, 0.02),
                              kwargs={"pp": pp}, timeout_s=300)
    found = results[0]
    assert found["refused_before_sync"]  # engines built without weights never serve
    assert found["versions"] == [[1] * engines]
    assert found["timings"][0]["bytes"] > 0
    engine, mask = pad_logprobs(found["engine_logprobs"][0])
    trainer, _ = pad_logprobs(found["trainer_logprobs"][0])
    metrics = mismatch_metrics(engine, trainer, mask)
    print(f"TP={tp} PP={pp}: {metrics}")
    assert metrics["tokens"] == 8 * 12
    assert metrics["max_abs_diff"] < 1e-4, metrics
