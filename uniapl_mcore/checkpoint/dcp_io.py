"""Megatron ``torch_dist`` checkpoints written and read one tensor chunk at a time.

``torch_dist`` is PyTorch Distributed Checkpoint (DCP) plus Megatron's ``metadata.json`` and
``common.pt``. :func:`write_torch_dist` streams :class:`ChunkSpec` s through DCP's
``FileSystemWriter`` with a planner that produces each chunk's data only when the writer
asks for it, so peak memory is one chunk per writer thread, whatever the model size.
:class:`TorchDistReader` reads any region of any key by assembling the stored chunks that
overlap it — loading a checkpoint saved at any layout without building the model. The DCP
``.metadata`` pickle is read with an allow-list unpickler and tensors with
``torch.load(weights_only=True)``: nothing in a checkpoint directory can run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.checkpoint.hf_io import CheckpointError

MEGATRON_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                     "common_backend": "torch", "common_backend_version": 1}


@dataclass(frozen=True)
class ChunkSpec:
    """One stored chunk: ``key``'s region ``offsets`` + ``sizes`` of a ``global_shape`` tensor.

    ``load`` returns the chunk's data (shape ``sizes``, dtype ``dtype``) when called.
    """

    key: str
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]


def _planner_class():
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import (
        SavePlan,
        TensorWriteData,
        WriteItem,
        WriteItemType,
    )

    class StreamingSavePlanner(DefaultSavePlanner):
        """Plans the given chunks and materialises each only inside ``resolve_data``."""

        def __init__(self, chunks: Sequence[ChunkSpec]) -> None:
            super().__init__()
            self._chunks = {(c.key, tuple(c.offsets)): c for c in chunks}
            if len(self._chunks) != len(chunks):
                raise ValueError("duplicate (key, offsets) among checkpoint chunks")

        def create_local_plan(self) -> SavePlan:
            items = [WriteItem(
                index=MetadataIndex(c.key, torch.Size(c.offsets)),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(c.offsets),
                                               sizes=torch.Size(c.sizes)),
                    properties=TensorProperties(dtype=c.dtype),
                    size=torch.Size(c.global_shape)))
                for c in self._chunks.values()]
            self.plan = SavePlan(items, planner_data={})
            return self.plan

        def resolve_data(self, write_item) -> torch.Tensor:
            spec = self._chunks[(write_item.index.fqn, tuple(write_item.index.offset))]
            tensor = spec.load()
            if tuple(tensor.shape) != spec.sizes or tensor.dtype != spec.dtype:
                raise CheckpointError(f"{spec.key}: produced {tuple(tensor.shape)} "
                                      f"{tensor.dtype}, planned {spec.sizes} {spec.dtype}")
            return tensor.contiguous()

    return StreamingSavePlanner


def write_torch_dist(chunks: Sequence[ChunkSpec], directory: Path, common: dict[str, Any],
                     threads: int = 2) -> None:
    """Write a complete ``torch_dist`` checkpoint of ``chunks`` into ``directory``.

    No process group is needed. ``common`` (plain Python data) becomes ``common.pt``.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    directory.mkdir(parents=True, exist_ok=True)
    writer = FileSystemWriter(str(directory), single_file_per_rank=True, thread_count=threads,
                              per_thread_copy_ahead=0)
    with warnings.catch_warnings():  # "torch.distributed is disabled": intended here
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({}, storage_writer=writer, planner=_planner_class()(chunks), no_dist=True)
    torch.save(common, directory / "common.pt")
    (directory / "metadata.json").write_text(json.dumps(MEGATRON_METADATA))


_ALLOWED_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata: DCP's own dataclasses and torch dtypes/sizes, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in \
                _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None),
                                            torch.dtype | torch.memory_format | torch.layout):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from checkpoint "
                                     "metadata")


class _Window(io.RawIOBase):
    """Read-only file view of bytes [start, start + length) of an open binary file."""

    def __init__(self, handle: io.RawIOBase, start: int, length: int) -> None:
        super().__init__()
        self.handle, self.start, self.length, self.pos = handle, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.length}[whence]
        self.pos = min(max(0, base + offset), self.length)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")[:max(0, self.length - self.pos)]
        self.handle.seek(self.start + self.pos)
        got = self.handle.readinto(view) or 0
        self.pos += got
        return got


#: ``torch.save`` 's storage type names (the fast reader's only globals besides the rebuild).
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
                   "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
                   "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8,
                   "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


def _describe_tensor(storage, storage_offset, size, stride, *_rest) -> tuple:
    return storage, storage_offset, tuple(size), tuple(stride)


class _TensorPickleInspector(pickle.Unpickler):
    """Reads a ``torch.save`` d tensor's ``data.pkl`` into (storage, offset, size, stride)
    without building anything: only the tensor-rebuild call and storage types resolve."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _describe_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"not a plain tensor record ({module}.{name})")

    def persistent_load(self, pid: Any) -> Any:
        return pid  # ("storage", dtype, key, location, numel)


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _read_saved_tensor(handle: io.RawIOBase, start: int, length: int,
                       out: torch.Tensor | None = None) -> torch.Tensor | None:
    """The tensor ``torch.save`` wrote at ``start`` (``length`` bytes), read straight from
    the file into its own buffer — no pickle code runs and no intermediate copy is made.

    Returns None (the caller falls back to ``torch.load``) unless the record is one plain,
    contiguous, uncompressed tensor that owns its whole storage. ``out``: read into this
    contiguous tensor (same shape and dtype, else None) instead of a new one.
    """
    try:
        archive = zipfile.ZipFile(_Window(handle, start, length))
        names = {Path(i.filename).name if "/data/" not in i.filename else
                 "data/" + Path(i.filename).name: i for i in archive.infolist()}
        pickled = names.get("data.pkl")
        record = names.get("data/0")
        if pickled is None or record is None or record.compress_type != zipfile.ZIP_STORED or \
                sum(n.startswith("data/") for n in names) != 1:
            return None
        storage, offset, size, stride = _TensorPickleInspector(
            io.BytesIO(archive.read(pickled))).load()
        kind, dtype, key, _location, numel = storage
    except (zipfile.BadZipFile, pickle.UnpicklingError, ValueError, TypeError, EOFError):
        return None
    count = 1
    for n in size:
        count *= n
    itemsize = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) \
        else 0
    if kind != "storage" or key != "0" or offset != 0 or numel != count or not itemsize or \
            stride != _contiguous_strides(size) or record.file_size != count * itemsize:
        return None
    handle.seek(start + record.header_offset)
    local = handle.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    data_start = start + record.header_offset + 30 + name_len + extra_len
    if out is None:
        out = torch.empty(size, dtype=dtype)
    elif tuple(out.shape) != size or out.dtype != dtype or not out.is_contiguous():
        return None
    if count:
        handle.seek(data_start)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        got = 0
        while got < len(view):
            n = handle.readinto(view[got:])
            if not n:
                return None
            got += n
    return out


class TorchDistReader:
    """Random access to the tensors of a ``torch_dist`` checkpoint directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / ".metadata"
        if not (self.directory / "metadata.json").is_file() or not meta_path.is_file():
            raise CheckpointError(f"{self.directory}: not a torch_dist checkpoint "
                                  "(metadata.json or .metadata missing)")
        try:
            with open(meta_path, "rb") as handle:
                self.metadata = _MetadataUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({err})") \
                from None
        self._storage = {(index.fqn, tuple(index.offset or ())): info
                         for index, info in self.metadata.storage_data.items()}

    def keys(self) -> list[str]:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        return [k for k, v in self.metadata.state_dict_metadata.items()
                if isinstance(v, TensorStorageMetadata)]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensor_meta(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensor_meta(key).properties.dtype

    def _tensor_meta(self, key: str):
        meta = self.metadata.state_dict_metadata.get(key)
        if meta is None or not hasattr(meta, "chunks"):
            raise CheckpointError(f"{self.directory}: tensor {key!r} is not in the checkpoint")
        return meta

    def _read_chunk(self, key: str, offsets: tuple[int, ...],
                    out: torch.Tensor | None = None) -> torch.Tensor:
        info = self._storage.get((key, offsets))
        if info is None:
            raise CheckpointError(f"{self.directory}: no stored data for {key!r} at {offsets}")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{self.directory}: {key!r} uses storage transforms "
                                  f"{info.transform_descriptors}, which are not supported")
        path = self.directory / info.relative_path
        try:
            with open(path, "rb", buffering=0) as handle:
                if handle.seek(0, os.SEEK_END) < info.offset + info.length:
                    raise CheckpointError(f"{path}: truncated (needed {info.length} bytes at "
                                          f"{info.offset} for {key!r})")
                direct = _read_saved_tensor(handle, info.offset, info.length, out)
                if direct is not None:
                    return direct
                handle.seek(info.offset)
                raw = handle.read(info.length)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing data file (needed for {key!r})") from None
        return torch.load(io.BytesIO(raw), weights_only=True)

    def read(self, key: str, offsets: Sequence[int] | None = None,
             sizes: Sequence[int] | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """The region ``offsets`` + ``sizes`` of ``key`` (default: the whole tensor).

        ``out``: a contiguous tensor of that shape and dtype to fill (a reused buffer, say);
        the returned tensor is then ``out`` or, on a slow path, a new tensor.
        """
        meta = self._tensor_meta(key)
        shape = tuple(meta.size)
        offsets = tuple(offsets) if offsets is not None else (0,) * len(shape)
        sizes = tuple(sizes) if sizes is not None else shape
        whole = [c for c in meta.chunks
                 if tuple(c.offsets) == offsets and tuple(c.sizes) == sizes]
        if whole:  # one stored chunk is exactly the region: no assembly copy
            data = self._read_chunk(key, offsets, out)
            if tuple(data.shape) != sizes or data.dtype != meta.properties.dtype:
                raise CheckpointError(f"{self.directory}: stored chunk of {key!r} at {offsets} "
                                      f"is {tuple(data.shape)} {data.dtype}, metadata says "
                                      f"{sizes} {meta.properties.dtype}")
            return data
        if out is None or tuple(out.shape) != sizes or out.dtype != meta.properties.dtype:
            out = torch.empty(sizes, dtype=meta.properties.dtype)
        covered = 0
        for chunk in meta.chunks:
            c_off, c_size = tuple(chunk.offsets), tuple(chunk.sizes)
            lo = [max(a, b) for a, b in zip(offsets, c_off, strict=True)]
            hi = [min(a + s, b + t) for a, s, b, t in zip(offsets, sizes, c_off, c_size,
                                                          strict=True)]
            if any(h <= low for low, h in zip(lo, hi, strict=True)):
                continue
            data = self._read_chunk(key, c_off)
            src = tuple(slice(low - b, h - b) for low, h, b in zip(lo, hi, c_off, strict=True))
            dst = tuple(slice(low - a, h - a) for low, h, a in zip(lo, hi, offsets, strict=True))
            out[dst] = data[src]
            covered += int(torch.tensor([h - low for low, h in zip(lo, hi, strict=True)]).prod())
        if covered != out.numel():
            raise CheckpointError(f"{self.directory}: stored chunks of {key!r} cover {covered} "
                                  f"of the {out.numel()} requested elements")
        return out

    def common(self) -> dict[str, Any]:
        """``common.pt`` (plain data only; loaded with ``weights_only=True``)."""
        path = self.directory / "common.pt"
        if not path.is_file():
            return {}
        return torch.load(path, weights_only=True)
