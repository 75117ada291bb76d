"""``tools/bench/gpu_mfu.py`` on CPU: its FLOPs formula against a hand count, the size
choice, the skip without CUDA, and its measurement loop on a tiny model."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.testing import run_distributed

from ._fast_path_bodies import gpu_mfu_cpu_smoke

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench"
GIB = 1024**3


@pytest.fixture(scope="module")
def gpu_mfu():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling ``figures``
    try:
        yield importlib.import_module("gpu_mfu")
    finally:
        sys.path.remove(str(BENCH))


def test_flops_formula_against_a_hand_count(gpu_mfu):
    # L=2, h=64, F=128, a=4 query heads, g=2 KV heads, d=16, V=128, untied, qk-norm.
    model = ModelConfig()
    assert (model.num_layers, model.hidden_size, model.ffn_hidden_size, model.head_dim,
            model.num_attention_heads, model.num_query_groups, model.vocab_size) == \
        (2, 64, 128, 16, 4, 2, 128)
    qkv = (4 + 2 * 2) * 16 * 64          # 8192
    proj = 64 * 4 * 16                   # 4096
    fc1, fc2 = 2 * 128 * 64, 64 * 128    # 16384, 8192 (SwiGLU gate + up, down)
    norms = 64 + 64 + 16 + 16            # input, pre-MLP, q, k RMSNorm weights
    n = 2 * (qkv + proj + fc1 + fc2 + norms) + 64  # + final norm = 74112
    assert n == 74112
    lm_head = 128 * 64                   # V·h = 8192
    attention = 6 * 2 * (4 * 16)         # 6·L·a·d = 768
    # one plain row of 32 tokens: 6·(N + V·h)·32 + 6·L·a·d·32²
    assert gpu_mfu.training_flops(model, [32]) == 6 * (n + lm_head) * 32 + attention * 32**2
    assert gpu_mfu.training_flops(model, [32]) / 32 == 518400  # per token
    # packed 10 + 22 tokens: the same GEMM FLOPs, attention only within each sequence
    assert gpu_mfu.training_flops(model, [10, 22]) == \
        6 * (n + lm_head) * 32 + attention * (10**2 + 22**2)
    tied = ModelConfig(tie_word_embeddings=True)  # the output GEMM still counts once
    assert gpu_mfu.dense_flops_per_token(tied) == 6 * (n + lm_head)
    assert "6·(N + V·h) + 6·L·(a·d)·s" in gpu_mfu.formula_text(model, 32)


def test_qwen3_shapes_and_the_size_choice(gpu_mfu):
    from uniapl_mcore.trainer.plan import count_parameters

    sizes = {name: count_parameters(gpu_mfu.qwen3_model(name, 4096)).total
             for name in gpu_mfu.QWEN3_SHAPES}
    assert sizes["0.6b"] == pytest.approx(0.596e9, rel=0.01)
    assert sizes["1.7b"] == pytest.approx(1.72e9, rel=0.01)
    assert sizes["4b"] == pytest.approx(4.02e9, rel=0.01)
    assert gpu_mfu.pick_size(79.2 * GIB, 4096) == "1.7b"   # H100 80 GB
    assert gpu_mfu.pick_size(139.8 * GIB, 4096) == "4b"    # H200
    assert gpu_mfu.pick_size(40 * GIB, 4096) == "0.6b"
    assert gpu_mfu.pick_size(8 * GIB, 4096) is None
    assert gpu_mfu.peak_tflops("NVIDIA H100 80GB HBM3") == (989.4, 1978.9)
    assert gpu_mfu.peak_tflops("NVIDIA H200") == (989.4, 1978.9)
    assert gpu_mfu.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert gpu_mfu.peak_tflops("Some Future GPU") is None
    assert gpu_mfu.requested_fp8_recipes("auto") == ["delayed", "tensorwise", "blockwise",
                                                     "mxfp8"]
    assert gpu_mfu.requested_fp8_recipes("tensorwise, delayed") == ["tensorwise", "delayed"]
    with pytest.raises(ValueError, match="unknown FP8 recipe"):
        gpu_mfu.requested_fp8_recipes("nvfp4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without CUDA")
def test_exits_zero_and_measures_nothing_without_cuda(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_mfu.py"), "--json", str(out)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("gpu_mfu: skipped: no CUDA device here "
                                   "(torch.cuda.is_available() is False); nothing measured")
    assert not out.exists()  # nothing measured: no figures file (run_all.py: "skipped")


@pytest.mark.slow
def test_measurement_loop_runs_on_cpu():
    (out,) = run_distributed(gpu_mfu_cpu_smoke, 1, args=(str(BENCH),), timeout_s=300)
    result, figures = out["result"], out["figures"]
    assert result["step_s"] > 0 and result["tokens_per_s"] == pytest.approx(64 / result["step_s"])
    assert figures["gpu_mfu.bf16.mfu"][0] == pytest.approx(
        result["flops_per_s"] / 989.4e12)
    assert figures["gpu_mfu.fp8_tensorwise.tokens_per_s"][2] == pytest.approx(2.0)  # ratio
    assert figures["gpu_mfu.fp8_tensorwise.mfu_vs_fp8_peak"][0] == pytest.approx(
        figures["gpu_mfu.fp8_tensorwise.mfu_vs_bf16_peak"][0] / 2, rel=1e-3)
