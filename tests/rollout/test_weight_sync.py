"""Weight sync from a live Megatron model at TP=2 into torch engines on Ray; the engines'
log-probs of their own samples match the trainer's recomputation (fp32)."""

from __future__ import annotations

import pytest

from uniapl_mcore.checkpoint.convert import hf_to_mcore
from uniapl_mcore.rollout.mismatch import mismatch_metrics, pad_logprobs
from uniapl_mcore.testing import run_distributed

from ._bodies import sync_and_compare

pytestmark = pytest.mark.slow


def test_tp2_sync_then_engine_logprobs_match_trainer(ray_cluster, tiny_hf, tmp_path):
    mcore = hf_to_mcore(tiny_hf, tmp_path / "mcore")
    results = run_distributed(sync_and_compare, 2, args=(str(tiny_hf), str(mcore), ray_cluster,
                                                         2, 2, 0.02), timeout_s=300)
    found = results[0]
    assert found["refused_before_sync"]  # engines built without weights never serve
    assert found["versions"] == [[1, 1]]
    assert found["timings"][0]["bytes"] > 0
    engine, mask = pad_logprobs(found["engine_logprobs"][0])
    trainer, _ = pad_logprobs(found["trainer_logprobs"][0])
    metrics = mismatch_metrics(engine, trainer, mask)
    assert metrics["tokens"] == 8 * 12
    assert metrics["max_abs_diff"] < 1e-4, metrics
