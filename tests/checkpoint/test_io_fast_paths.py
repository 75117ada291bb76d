"""The converter's I/O fast paths: direct reads of torch.save records, the any-order sharded
safetensors writer, and reads into reused buffers."""

from __future__ import annotations

import io
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from uniapl_mcore.checkpoint.dcp_io import _read_saved_tensor
from uniapl_mcore.checkpoint.hf_io import (
    INDEX,
    CheckpointError,
    PlannedTensor,
    SafetensorsReader,
    SafetensorsShardWriter,
)


def _saved(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_direct_read_equals_torch_load(tmp_path, dtype):
    tensor = (torch.randn(6, 5) * 10).to(dtype)
    path = tmp_path / "blob"
    prefix = b"x" * 13  # records sit at arbitrary offsets inside a .distcp file
    path.write_bytes(prefix + _saved(tensor) + b"tail")
    with open(path, "rb", buffering=0) as handle:
        got = _read_saved_tensor(handle, len(prefix), len(_saved(tensor)))
        assert got is not None and got.dtype == dtype and torch.equal(got, tensor)
        out = torch.empty(6, 5, dtype=dtype)
        assert _read_saved_tensor(handle, len(prefix), len(_saved(tensor)), out) is out
        assert torch.equal(out, tensor)
        wrong = torch.empty(5, 6, dtype=dtype)
        assert _read_saved_tensor(handle, len(prefix), len(_saved(tensor)), wrong) is None


def test_direct_read_declines_views_and_foreign_records(tmp_path):
    """A view that does not own its storage, or a non-tensor pickle, goes to torch.load."""
    view = torch.arange(40.0).reshape(10, 4)[:, 1]
    other = {"a": 1}
    for obj in (view, torch.arange(12.0).reshape(3, 4).t(), other):
        blob = _saved(obj)
        path = tmp_path / "blob"
        path.write_bytes(blob)
        with open(path, "rb", buffering=0) as handle:
            assert _read_saved_tensor(handle, 0, len(blob)) is None
    path.write_bytes(b"not a zip at all")
    with open(path, "rb", buffering=0) as handle:
        assert _read_saved_tensor(handle, 0, 16) is None


def _plan(n: int) -> tuple[list[PlannedTensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(3 + i, 4, generator=gen).to(torch.bfloat16)
               for i in range(n)}
    tensors["empty"] = torch.empty(0, 4, dtype=torch.bfloat16)
    return [PlannedTensor(k, tuple(v.shape), v.dtype) for k, v in tensors.items()], tensors


def test_shard_writer_any_order_from_threads(tmp_path):
    plan, tensors = _plan(12)
    writer = SafetensorsShardWriter(plan, tmp_path / "out", max_shard_bytes=200)
    names = list(tensors)
    random.Random(0).shuffle(names)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: writer.write(n, tensors[n]), names))
    weight_map = writer.finish()
    index = json.loads((tmp_path / "out" / INDEX).read_text())
    assert index["weight_map"] == weight_map and len(set(weight_map.values())) > 1
    loaded = {}
    for shard in sorted(set(weight_map.values())):
        loaded.update(load_file(str(tmp_path / "out" / shard)))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name
    reader = SafetensorsReader(tmp_path / "out")
    out = torch.empty(5, 4, dtype=torch.bfloat16)
    assert reader.get("t2", out) is out and torch.equal(out, tensors["t2"])
    with pytest.raises(CheckpointError, match="t2"):
        reader.get("t2", torch.empty(4, 4, dtype=torch.bfloat16))


def test_shard_writer_refuses_bad_writes(tmp_path):
    plan, tensors = _plan(3)
    writer = SafetensorsShardWriter(plan, tmp_path / "out", max_shard_bytes=1 << 30)
    try:
        with pytest.raises(CheckpointError, match="not planned"):
            writer.write("nope", tensors["t0"])
        with pytest.raises(CheckpointError, match="expected t1"):
            writer.write("t1", tensors["t0"])
        writer.write("t0", tensors["t0"])
        with pytest.raises(CheckpointError, match="written twice"):
            writer.write("t0", tensors["t0"])
        with pytest.raises(CheckpointError, match="never written"):
            writer.finish()
    finally:
        writer.close()
