"""Packing HF-named tensors into one flat byte buffer per bucket, and back.

A bucket travels as one contiguous ``uint8`` numpy array plus a small metadata list, so Ray
puts it into the shared-memory object store with one copy and every engine actor on the node
reads it zero-copy (the pattern verl uses with a CUDA IPC buffer; here host shared memory).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

_ALIGN = 64  # bytes; keeps every view aligned for any dtype


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives in a packed bucket: byte ``offset``, dtype name, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


#: a :class:`TensorMeta` as plain data (what crosses into vLLM's worker processes):
#: (name, dtype name, shape, byte offset, byte count)
MetaTuple = tuple[str, str, tuple[int, ...], int, int]


def meta_tuples(metas: Sequence[TensorMeta]) -> list[MetaTuple]:
    """``metas`` as plain tuples (:data:`MetaTuple`)."""
    return [(m.name, m.dtype, tuple(m.shape), m.offset, m.nbytes) for m in metas]


def tensor_views(flat: torch.Tensor, metas: Sequence[MetaTuple]
                 ) -> list[tuple[str, torch.Tensor]]:
    """Named views (no copy) into ``flat`` (uint8 [total bytes]) laid out as ``metas``."""
    out = []
    for name, dtype, shape, offset, nbytes in metas:
        raw = flat[offset:offset + nbytes]
        out.append((name, raw.view(getattr(torch, dtype)).reshape(tuple(shape))))
    return out


@dataclass
class PackedBucket:
    """``buffer``: uint8 [total bytes]; ``metas``: one entry per tensor, in stream order."""

    buffer: np.ndarray
    metas: list[TensorMeta]

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def flat_metas(named: Sequence[tuple[str, torch.Tensor]]) -> list[TensorMeta] | None:
    """Metadata of a :class:`~uniapl_mcore.checkpoint.live_export.FlatBucket` (on any
    device) whose tensors are contiguous, aligned views of its buffer; None when it cannot
    be shipped as is."""
    buffer = getattr(named, "buffer", None)
    if buffer is None or buffer.dtype != torch.uint8:
        return None
    base, size, metas = buffer.data_ptr(), buffer.numel(), []
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        offset = tensor.data_ptr() - base
        if (not tensor.is_contiguous() or tensor.device != buffer.device or offset < 0
                or offset % _ALIGN or offset + nbytes > size):
            return None
        metas.append(TensorMeta(name, str(tensor.dtype).removeprefix("torch."),
                                tuple(tensor.shape), offset, nbytes))
    return metas


def pack_bucket(named: Sequence[tuple[str, torch.Tensor]]) -> PackedBucket:
    """Copy ``named`` (CPU or accelerator tensors) into one aligned host byte buffer.

    A flat bucket from the live exporter (host tensors that are aligned views of one byte
    buffer) is wrapped without copying: the packed buffer shares its memory.
    """
    flat = flat_metas(named) if getattr(named, "buffer", None) is not None \
        and named.buffer.device.type == "cpu" else None  # type: ignore[attr-defined]
    if flat is not None:
        return PackedBucket(named.buffer.numpy(), flat)  # type: ignore[attr-defined]
    metas, offset = [], 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        metas.append(TensorMeta(name, str(tensor.dtype).removeprefix("torch."),
                                tuple(tensor.shape), offset, nbytes))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    buffer = np.empty(offset, dtype=np.uint8)
    flat = torch.from_numpy(buffer)
    for meta, (_, tensor) in zip(metas, named, strict=True):
        if meta.nbytes:
            src = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            flat[meta.offset:meta.offset + meta.nbytes].copy_(src)
    return PackedBucket(buffer, metas)


def unpack_bucket(bucket: PackedBucket) -> list[tuple[str, torch.Tensor]]:
    """Views (no copy) of the tensors in ``bucket``; read-only buffers give read-only views."""
    buffer = bucket.buffer
    if not buffer.flags.writeable:  # Ray's zero-copy arrays are read-only; views never write
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(buffer)
    else:
        flat = torch.from_numpy(buffer)
    return tensor_views(flat, meta_tuples(bucket.metas))
