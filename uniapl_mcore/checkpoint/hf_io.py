"""Hugging Face checkpoint files: safetensors read and written one tensor at a time.

The safetensors format is an 8-byte little-endian header length, a JSON header
(name → dtype, shape, byte range) and the raw tensor bytes. Reading parses the header and
``readinto`` s each tensor's range into a fresh buffer — no memory map, so a conversion's
resident memory stays at the tensors in flight, not the checkpoint size. Writing plans each
shard's header from (name, shape, dtype) first and creates the files at their final size, so
tensors can be written at their offsets in any order, from several threads.

Published checkpoints that ship ``pytorch_model*.bin`` shards (``torch.save`` files) are read
by :class:`TorchBinReader` through ``torch.load(weights_only=True)`` — PyTorch's restricted
unpickler, which builds tensors and plain containers only and refuses any other object — and
each file must hold a flat ``{name: tensor}`` dict. Nothing else is unpickled, no code runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import struct
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from uniapl_mcore.log import error_line

logger = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
#: Files copied verbatim alongside the weights (tokenizer, chat template, generation config).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
              "chat_template.jinja", "chat_template.json", "generation_config.json")

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024**2


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or does not match its config; names the file."""


@dataclass(frozen=True)
class _Entry:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_header(path: Path) -> dict[str, _Entry]:
    """Parse one safetensors file's header, checking every range lies inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: truncated (no safetensors header)")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{path}: truncated or corrupt safetensors header")
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    base = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(x) for x in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for {name!r}") from None
        numel = int(torch.tensor(shape, dtype=torch.int64).prod()) if shape else 1
        if end - begin != numel * _bytes(dtype):
            raise CheckpointError(f"{path}: tensor {name!r} byte range does not match its "
                                  f"shape {shape} and dtype {info['dtype']}")
        if base + end > size:
            raise CheckpointError(f"{path}: truncated (tensor {name!r} ends at byte "
                                  f"{base + end}, file has {size})")
        entries[name] = _Entry(path, dtype, shape, base + begin, base + end)
    return entries


class SafetensorsReader:
    """Name → tensor access over a (sharded) safetensors checkpoint directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.entries: dict[str, _Entry] = {}
        index = self.directory / INDEX
        if index.is_file():
            weight_map = read_weight_map(index)
            for file_name in sorted(set(weight_map.values())):
                path = self.directory / file_name
                if not path.is_file():
                    raise CheckpointError(f"{path}: shard listed in {INDEX} is missing")
                self.entries.update(read_header(path))
            for name, file_name in weight_map.items():
                if name not in self.entries:
                    raise CheckpointError(f"{self.directory / file_name}: tensor {name!r} "
                                          f"listed in {INDEX} is not in the file")
        elif (self.directory / SINGLE).is_file():
            self.entries = read_header(self.directory / SINGLE)
        else:
            raise CheckpointError(f"{self.directory}: no {INDEX} or {SINGLE}")

    def names(self) -> list[str]:
        return list(self.entries)

    def _entry(self, name: str) -> _Entry:
        if name not in self.entries:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing")
        return self.entries[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name).dtype

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor ``name``, read into its own buffer, or into ``out`` (a contiguous
        tensor of the same shape and dtype, e.g. a reused buffer)."""
        entry = self._entry(name)
        if out is None:
            out = torch.empty(entry.shape, dtype=entry.dtype)
        elif tuple(out.shape) != entry.shape or out.dtype != entry.dtype or \
                not out.is_contiguous():
            raise CheckpointError(f"{entry.path}: tensor {name!r} is {entry.shape} "
                                  f"{entry.dtype}, expected {tuple(out.shape)} {out.dtype}")
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else b""
        with open(entry.path, "rb", buffering=0) as handle:
            handle.seek(entry.start)
            got = handle.readinto(view) if out.numel() else 0
        if got != entry.end - entry.start:
            raise CheckpointError(f"{entry.path}: truncated while reading {name!r}")
        return out


def read_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` (tensor name → shard file name) of a shard index file."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{index}: malformed index ({type(err).__name__}: {err})") \
            from None
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
    for file_name in set(weight_map.values()):
        if Path(file_name).name != file_name:  # a shard outside the directory
            raise CheckpointError(f"{index}: shard name {file_name!r} is not a plain file name")
    return weight_map


def weights_only_refusal(err: BaseException) -> str:
    """The line of a ``weights_only`` refusal that says what was refused (torch's message
    opens with generic advice to retry unsafely, which must not be passed on)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "WeightsUnpickler" in line]
    return (named or lines or [type(err).__name__])[0]


def load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save`` file holding a flat ``{name: tensor}`` dict, loaded with
    ``torch.load(weights_only=True)`` (memory-mapped when the file is in the zip format, so
    only the bytes read later are paged in). Anything else fails naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    zipped = zipfile.is_zipfile(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: not a plain tensor file (torch.load(weights_only=True) "
                              f"refused it: {weights_only_refusal(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable torch.save file ({error_line(err)})") \
            from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    for name, value in data.items():
        if not isinstance(name, str) or type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise CheckpointError(f"{path}: entry {name!r} is a {type(value).__name__}, not a "
                                  "tensor (expected a flat dict of tensors)")
    if not zipped:
        logger.info("%s is in the legacy torch.save format: loaded whole into memory", path)
    return data


class TorchBinReader:
    """Name → tensor access over ``pytorch_model.bin`` or ``pytorch_model-*.bin`` shards
    listed in ``pytorch_model.bin.index.json`` — the same interface as
    :class:`SafetensorsReader`. Every shard goes through :func:`load_tensor_file`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.tensors: dict[str, torch.Tensor] = {}
        self.files: dict[str, Path] = {}
        index = self.directory / BIN_INDEX
        if index.is_file():
            weight_map = read_weight_map(index)
            for file_name in sorted(set(weight_map.values())):
                path = self.directory / file_name
                if not path.is_file():
                    raise CheckpointError(f"{path}: shard listed in {BIN_INDEX} is missing")
                self._add(path)
            for name, file_name in weight_map.items():
                if self.files.get(name) != self.directory / file_name:
                    raise CheckpointError(f"{self.directory / file_name}: tensor {name!r} "
                                          f"listed in {BIN_INDEX} is not in the file")
        elif (self.directory / BIN_SINGLE).is_file():
            self._add(self.directory / BIN_SINGLE)
        else:
            raise CheckpointError(f"{self.directory}: no {BIN_INDEX} or {BIN_SINGLE}")

    def _add(self, path: Path) -> None:
        for name, tensor in load_tensor_file(path).items():
            if name in self.tensors:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {self.files[name]}")
            self.tensors[name], self.files[name] = tensor, path

    def names(self) -> list[str]:
        return list(self.tensors)

    def _tensor(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise CheckpointError(f"{self.directory}: tensor {name!r} is missing")
        return self.tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensor(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._tensor(name).dtype

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor ``name`` copied into its own buffer, or into ``out`` (same shape and
        dtype)."""
        tensor = self._tensor(name)
        if out is None:
            return tensor.detach().clone(memory_format=torch.contiguous_format)
        if out.shape != tensor.shape or out.dtype != tensor.dtype:
            raise CheckpointError(f"{self.files[name]}: tensor {name!r} is "
                                  f"{tuple(tensor.shape)} {tensor.dtype}, expected "
                                  f"{tuple(out.shape)} {out.dtype}")
        return out.copy_(tensor.detach())


#: Either weights reader (same interface).
HFWeights = SafetensorsReader | TorchBinReader


def open_hf_weights(directory: str | Path) -> HFWeights:
    """The weights of an HF model directory: safetensors when it has them (as
    ``from_pretrained`` prefers), else ``pytorch_model*.bin`` (loaded without unpickling
    anything but tensors)."""
    directory = Path(directory)
    if (directory / INDEX).is_file() or (directory / SINGLE).is_file():
        return SafetensorsReader(directory)
    if (directory / BIN_INDEX).is_file() or (directory / BIN_SINGLE).is_file():
        return TorchBinReader(directory)
    raise CheckpointError(f"{directory}: no weights ({INDEX}, {SINGLE}, {BIN_INDEX} or "
                          f"{BIN_SINGLE})")


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor a writer will receive: its HF name, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for n in self.shape:
            numel *= n
        return numel * _bytes(self.dtype)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


class SafetensorsShardWriter:
    """Writes a planned set of tensors into sharded safetensors files, in any order.

    Every shard's header is computed from the plan up front and each file is created at its
    final size, so a tensor's byte range is known before its data exists: :meth:`write` may be
    called from several threads at once (``os.pwrite`` releases the GIL), one tensor each.
    :meth:`finish` checks every planned tensor arrived exactly once, fsyncs the files and
    writes the index. Shards hold ≤ ``max_shard_bytes`` of tensor data (a larger tensor gets
    a shard of its own); one shard is named ``model.safetensors``, several
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.
    """

    def __init__(self, plan: list[PlannedTensor], directory: Path,
                 max_shard_bytes: int) -> None:
        shards: list[list[PlannedTensor]] = [[]]
        size = 0
        for item in plan:
            if shards[-1] and size + item.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(item)
            size += item.nbytes
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.total_bytes = sum(item.nbytes for item in plan)
        count = len(shards)
        self.files: list[tuple[Path, int]] = []
        #: name → (planned tensor, index into ``files``, absolute byte offset)
        self.slots: dict[str, tuple[PlannedTensor, int, int]] = {}
        for i, shard in enumerate(shards):
            path = directory / (SINGLE if count == 1 else
                                f"model-{i + 1:05d}-of-{count:05d}.safetensors")
            self.files.append((path, self._create(path, shard, i)))
        self.written: set[str] = set()
        self._lock = threading.Lock()

    def _create(self, path: Path, shard: list[PlannedTensor], index: int) -> int:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for item in shard:
            header[item.name] = {"dtype": _CODES[item.dtype], "shape": list(item.shape),
                                 "data_offsets": [offset, offset + item.nbytes]}
            offset += item.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned
        prefix = struct.pack("<Q", len(raw)) + raw
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        _pwrite_all(fd, memoryview(prefix), 0)
        os.ftruncate(fd, len(prefix) + offset)
        for item in shard:
            if item.name in self.slots:
                raise CheckpointError(f"{path}: tensor {item.name!r} planned twice")
            self.slots[item.name] = (item, index, len(prefix) +
                                     header[item.name]["data_offsets"][0])  # type: ignore[index]
        return fd

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (any thread; each name once)."""
        slot = self.slots.get(name)
        if slot is None:
            raise CheckpointError(f"{self.directory}: tensor {name!r} was not planned")
        item, index, offset = slot
        if tuple(tensor.shape) != item.shape or tensor.dtype != item.dtype:
            raise CheckpointError(f"{self.files[index][0]}: expected {name} {item.shape} "
                                  f"{item.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        with self._lock:
            if name in self.written:
                raise CheckpointError(f"{self.directory}: tensor {name!r} written twice")
            self.written.add(name)
        if tensor.numel():
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            _pwrite_all(self.files[index][1], memoryview(data), offset)

    def finish(self, threads: int = 4) -> dict[str, str]:
        """Check completeness, fsync and close every shard, write the index; returns the
        weight map (name → file name)."""
        missing = [name for name in self.slots if name not in self.written]
        if missing:
            raise CheckpointError(f"{self.directory}: {len(missing)} planned tensors were never "
                                  f"written (first: {missing[0]!r})")
        with ThreadPoolExecutor(max(1, min(threads, len(self.files)))) as pool:
            list(pool.map(os.fsync, [fd for _, fd in self.files]))
        self.close()
        weight_map = {name: self.files[index][0].name
                      for name, (_, index, _) in sorted(self.slots.items())}
        if len(self.files) > 1:
            (self.directory / INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                indent=2) + "\n")
        return weight_map

    def close(self) -> None:
        """Close the files (idempotent; :meth:`finish` calls it)."""
        for i, (path, fd) in enumerate(self.files):
            if fd >= 0:
                os.close(fd)
                self.files[i] = (path, -1)


def copy_side_files(source: Path, target: Path) -> list[str]:
    """Copy tokenizer / generation files that exist in ``source``; returns their names."""
    copied = []
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied
