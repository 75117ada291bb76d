"""Streaming export from a live sharded model equals the offline export byte for byte."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from uniapl_mcore.checkpoint.convert import hf_to_mcore, mcore_to_hf
from uniapl_mcore.testing import run_distributed

from ._bodies import live_export, live_hf_dir
from .hf_models import save_tiny, save_tiny_internlm2_reward

pytestmark = pytest.mark.slow


def _offline(tmp_path, hf):
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    back = mcore_to_hf(mcore, tmp_path / "offline")
    tensors = {}
    for path in back.glob("*.safetensors"):
        tensors.update(load_file(path))
    return mcore, tensors


@pytest.mark.parametrize(("family", "tied", "tp", "pp", "ep", "dst", "ring"), [
    ("qwen3", True, 2, 1, 1, 0, 0), ("qwen3", True, 1, 2, 1, None, 0),
    ("qwen3", False, 2, 1, 1, 1, 2), ("qwen3_moe", False, 1, 1, 2, 0, 0),
    ("internlm2", False, 2, 1, 1, 0, 3)])
def test_stream_equals_offline_export(tmp_path, family, tied, tp, pp, ep, dst, ring):
    hf = save_tiny_internlm2_reward(tmp_path / "hf", torch.bfloat16) if family == "internlm2" \
        else save_tiny(tmp_path / "hf", family, tied, torch.bfloat16)
    mcore, offline = _offline(tmp_path, hf)
    world = tp * pp * ep
    results = run_distributed(live_export, world, args=(str(hf), str(mcore), tp, pp, ep, dst,
                                                        40_000, ring), timeout_s=300)
    receivers = range(world) if dst is None else [dst]
    for rank, result in enumerate(results):
        assert result["buckets"] > 1  # a small bucket size forces several buckets
        if rank not in receivers:
            assert result["tensors"] == {}
            continue
        streamed = result["tensors"]
        assert set(streamed) == set(offline)
        for name, tensor in offline.items():
            assert streamed[name].dtype == tensor.dtype, name
            assert torch.equal(streamed[name], tensor), name


def live_export_prefetch(*args) -> dict:
    """The shared test body with ``iter_buckets(..., prefetch=True)`` (patched in this
    worker process only)."""
    from uniapl_mcore.checkpoint import live_export as module

    original = module.LiveExporter.iter_buckets

    def iter_buckets(self, bucket_bytes, ring=0):
        return original(self, bucket_bytes, ring=ring, prefetch=True)

    module.LiveExporter.iter_buckets = iter_buckets
    return live_export(*args)


@pytest.mark.parametrize(("tp", "dst", "ring"), [(2, 0, 3), (2, None, 0)])
def test_prefetched_stream_equals_offline_export(tmp_path, tp, dst, ring):
    hf = save_tiny(tmp_path / "hf", "qwen3", False, torch.bfloat16)
    mcore, offline = _offline(tmp_path, hf)
    results = run_distributed(live_export_prefetch, tp, args=(str(hf), str(mcore), tp, 1, 1,
                                                              dst, 40_000, ring), timeout_s=300)
    for rank, result in enumerate(results):
        assert result["buckets"] > 1
        if dst is not None and rank != dst:
            assert result["tensors"] == {}
            continue
        assert set(result["tensors"]) == set(offline)
        for name, tensor in offline.items():
            assert torch.equal(result["tensors"][name], tensor), name


def test_prefetch_needs_three_ring_buffers():
    from uniapl_mcore.checkpoint.live_export import LiveExporter

    exporter = LiveExporter.__new__(LiveExporter)  # the check runs before any collective
    with pytest.raises(ValueError, match="ring must be 0 or >= 3 with prefetch"):
        next(exporter.iter_buckets(1024, ring=2, prefetch=True))


def test_live_hf_dir_equals_offline_export(tmp_path):
    """PP=2 with tied embeddings, written by rank 0 as sharded safetensors + side files; an
    existing directory is replaced whole."""
    hf = save_tiny(tmp_path / "hf", "qwen3", True, torch.float32)
    (tmp_path / "hf" / "tokenizer_config.json").write_text("{}")
    mcore, offline = _offline(tmp_path, hf)
    out = tmp_path / "live"
    out.mkdir()
    (out / "stale.safetensors").write_text("from an earlier export")
    results = run_distributed(live_hf_dir, 2, args=(str(hf), str(mcore), 1, 2, str(out)),
                              timeout_s=300)
    assert results == [str(out), None]
    streamed = {}
    for path in out.glob("*.safetensors"):
        streamed.update(load_file(path))
    assert (out / "model.safetensors.index.json").is_file()  # several shards
    assert streamed.keys() == offline.keys() and "lm_head.weight" not in streamed
    assert all(torch.equal(streamed[name], tensor) for name, tensor in offline.items())
    assert (out / "config.json").read_bytes() == (hf / "config.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
