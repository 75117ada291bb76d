"""Weight sync from a live Megatron policy (gloo, TP=2 or PP=2) into vLLM engines on Ray,
through the object store or by direct transfer into every worker of a TP=2 engine: three
consecutive syncs of changed weights, buckets small enough to split q/k/v and gate/up; after
each, vLLM's log-probs of its own samples equal the trainer's (fp32)."""

from __future__ import annotations

import pytest

from uniapl_mcore.checkpoint.convert import hf_to_mcore
from uniapl_mcore.rollout.mismatch import mismatch_metrics, pad_logprobs
from uniapl_mcore.runtime.launch import run_distributed

from ._bodies import sync_and_compare

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

#: every q/k/v and gate/up tensor of the tiny model (hidden 64, head_dim 32) is larger than
#: a bucket, so each travels alone and vLLM's fused qkv_proj / gate_up_proj get their pieces
#: from separate loads
SPLITTING_BUCKET_BYTES = 16 * 1024


@pytest.mark.parametrize(("tp", "pp", "multiprocessing", "transport", "engine_tp"), [
    (2, 1, True, "object_store", 1),
    (1, 2, False, "object_store", 1),
    (1, 2, True, "direct", 2),  # two stage leaders → both workers of a TP=2 engine
], ids=["tp2-engine-core-process-shm", "pp2-in-process-inline", "pp2-direct-engine-tp2"])
def test_three_syncs_then_vllm_logprobs_match_megatron(ray_cluster, tiny_hf32, tmp_path, tp,
                                                       pp, multiprocessing, transport,
                                                       engine_tp):
    mcore = hf_to_mcore(tiny_hf32, tmp_path / "mcore")
    options = {"dtype": "float32", "num_threads": 1, "tensor_parallel_size": engine_tp,
               "vllm": {"multiprocessing": multiprocessing, "kv_cache_bytes": 64 * 1024**2}}
    results = run_distributed(
        sync_and_compare, tp * pp, args=(str(tiny_hf32), str(mcore), ray_cluster, tp, 1, 0.02),
        kwargs={"kind": "vllm", "pp": pp, "syncs": 3, "options": options,
                "bucket_bytes": SPLITTING_BUCKET_BYTES, "transport": transport},
        timeout_s=600)
    found = results[0]
    assert found["refused_before_sync"]  # engines built without weights never serve
    assert found["versions"] == [[1], [2], [3]]
    previous = None
    for sync in range(3):
        assert found["timings"][sync]["bytes"] > 0
        engine, mask = pad_logprobs(found["engine_logprobs"][sync])
        trainer, _ = pad_logprobs(found["trainer_logprobs"][sync])
        metrics = mismatch_metrics(engine, trainer, mask)
        assert metrics["tokens"] == 8 * 12
        assert metrics["max_abs_diff"] <= 1e-4, (sync, metrics)
        assert engine.tolist() != previous  # the weights changed between syncs
        previous = engine.tolist()
