"""Sequence packing into token-budget micro-batches.

Sequences are placed into micro-batches of at most ``micro_batch_tokens`` tokens by
first-fit decreasing (longest first, each into the first micro-batch with room). A packed
micro-batch is one row ``[1, T]`` holding its sequences back to back, each shifted for
next-token prediction on its own (a sequence of n ids contributes n − 1 positions), with
position ids restarting at 0 per sequence. Two ways to keep sequences apart in attention:

* **THD** (:meth:`PackedMicroBatch.packed_seq_params`): Megatron's ``PackedSeqParams`` with
  ``cu_seqlens`` — for Transformer Engine's fused attention (GPU);
* **mask** (:meth:`PackedMicroBatch.attention_mask`): an explicit block-diagonal causal
  mask ``[1, 1, T, T]`` — for Megatron's local (unfused) attention, the CPU path.

Padding (loss mask 0) fills the tail up to the fixed length or alignment; it is its own
attention segment so no real token sees it. :class:`PackingStats` reports the padding share.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from uniapl_mcore.data.templating import SFTExample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackItem:
    """One sequence to pack: ``ids`` int [n] and ``loss_mask`` {0,1} [n] aligned with them.

    ``key`` identifies the sequence (row index, rollout id …) in the packed output.
    """

    ids: Sequence[int]
    loss_mask: Sequence[int]
    key: Hashable = None

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"ids ({len(self.ids)}) and loss_mask ({len(self.loss_mask)}) "
                             "differ in length")
        if len(self.ids) < 2:
            raise ValueError("a sequence needs at least 2 tokens (one input, one label)")

    @property
    def length(self) -> int:
        """Positions it takes in a micro-batch (tokens after the next-token shift)."""
        return len(self.ids) - 1

    @classmethod
    def from_sft(cls, example: SFTExample, key: Hashable = None) -> PackItem:
        return cls(example.input_ids, example.loss_mask, key)


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bin packing: indices of ``lengths`` grouped into bins of total ≤ ``capacity``.

    Longest first (ties by index), each into the first bin with room; bins are returned in
    creation order, indices within a bin in placement order. Raises for an item > capacity.
    """
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    if lengths_arr.size and lengths_arr.max() > capacity:
        worst = int(lengths_arr.argmax())
        raise ValueError(f"sequence {worst} has {lengths_arr[worst]} tokens, more than the "
                         f"micro-batch budget {capacity}")
    order = np.argsort(-lengths_arr, kind="stable")
    remaining = np.empty(len(lengths_arr), dtype=np.int64)
    bins: list[list[int]] = []
    for idx in order:
        need = lengths_arr[idx]
        fits = np.flatnonzero(remaining[: len(bins)] >= need)
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            remaining[b] = capacity
        bins[b].append(int(idx))
        remaining[b] -= need
    return bins


@dataclass
class PackedMicroBatch:
    """One packed micro-batch of ``T`` positions.

    tokens, labels, position_ids: int64 [1, T]; loss_mask: float32 [1, T];
    cu_seqlens: int32 [segments + 1], segment boundaries in positions (the padding tail, if
    any, is the last segment); keys: the packed sequences' keys in order; num_tokens: real
    (non-padding) positions.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    keys: tuple[Any, ...]
    num_tokens: int

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def num_sequences(self) -> int:
        return len(self.keys)

    def sequence_slices(self) -> list[slice]:
        """Position ranges of the real sequences, in ``keys`` order."""
        cu = self.cu_seqlens.tolist()
        return [slice(cu[i], cu[i + 1]) for i in range(self.num_sequences)]

    def attention_mask(self) -> torch.Tensor:
        """bool [1, 1, T, T], True where attention is blocked (Megatron convention)."""
        return block_causal_mask(self.cu_seqlens, self.length)

    def packed_seq_params(self):
        """Megatron ``PackedSeqParams`` (THD) for this micro-batch."""
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = self.cu_seqlens.to(torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                               max_seqlen_q=max_len, max_seqlen_kv=max_len)


def block_causal_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """Block-diagonal causal mask: bool [1, 1, T, T], True = blocked.

    Position i may attend to j iff j ≤ i and both lie in the same ``cu_seqlens`` segment.
    """
    seg = torch.zeros(length, dtype=torch.long)
    bounds = cu_seqlens.tolist()
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        seg[lo:hi] = s
    same = seg.unsqueeze(0) == seg.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return ~(same & causal).view(1, 1, length, length)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_micro_batch(items: Sequence[PackItem], pad_id: int, length: int | None = None,
                      pad_to_multiple_of: int = 1) -> PackedMicroBatch:
    """Concatenate ``items`` (each shifted) into one micro-batch.

    ``length`` fixes T (≥ the content); otherwise T is the content rounded up to
    ``pad_to_multiple_of``.
    """
    content = sum(it.length for it in items)
    total = length if length is not None else _round_up(max(content, 1), pad_to_multiple_of)
    if total < 1:
        raise ValueError(f"micro-batch length must be >= 1, got {total}")
    if total < content:
        raise ValueError(f"{content} tokens do not fit in a micro-batch of {total}")
    tokens = torch.full((total,), pad_id, dtype=torch.long)
    labels = torch.full((total,), pad_id, dtype=torch.long)
    loss_mask = torch.zeros(total, dtype=torch.float32)
    positions = torch.zeros(total, dtype=torch.long)
    cu = [0]
    for it in items:
        ids = torch.as_tensor(list(it.ids), dtype=torch.long)
        mask = torch.as_tensor(list(it.loss_mask), dtype=torch.float32)
        lo, n = cu[-1], it.length
        tokens[lo:lo + n] = ids[:-1]
        labels[lo:lo + n] = ids[1:]
        loss_mask[lo:lo + n] = mask[1:]
        positions[lo:lo + n] = torch.arange(n)
        cu.append(lo + n)
    if total > content:
        positions[content:] = torch.arange(total - content)
        cu.append(total)
    return PackedMicroBatch(
        tokens=tokens.unsqueeze(0), labels=labels.unsqueeze(0),
        loss_mask=loss_mask.unsqueeze(0), position_ids=positions.unsqueeze(0),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        keys=tuple(it.key for it in items), num_tokens=content,
    )


@dataclass
class PackingStats:
    """Fill of a set of micro-batches: real positions vs slots (positions incl. padding)."""

    micro_batches: int = 0
    sequences: int = 0
    real_tokens: int = 0
    slot_tokens: int = 0
    per_batch_fill: list[float] = field(default_factory=list)

    @property
    def fill(self) -> float:
        """Share of slots holding real tokens (1.0 = no padding)."""
        return self.real_tokens / self.slot_tokens if self.slot_tokens else 1.0

    @property
    def padding_share(self) -> float:
        """Share of slots that are padding (the logged metric)."""
        return 1.0 - self.fill

    def as_dict(self) -> dict[str, float]:
        return {"micro_batches": self.micro_batches, "sequences": self.sequences,
                "real_tokens": self.real_tokens, "slot_tokens": self.slot_tokens,
                "fill": self.fill, "padding_share": self.padding_share}


def stats_of(batches: Sequence[PackedMicroBatch]) -> PackingStats:
    """Fill statistics of packed micro-batches."""
    return PackingStats(
        micro_batches=len(batches), sequences=sum(b.num_sequences for b in batches),
        real_tokens=sum(b.num_tokens for b in batches),
        slot_tokens=sum(b.length for b in batches),
        per_batch_fill=[b.num_tokens / b.length for b in batches],
    )


def pack(items: Sequence[PackItem], micro_batch_tokens: int, pad_id: int,
         fixed_length: bool = True, pad_to_multiple_of: int = 1, min_micro_batches: int = 0
         ) -> tuple[list[PackedMicroBatch], PackingStats]:
    """Pack ``items`` by first-fit decreasing into micro-batches of ≤ ``micro_batch_tokens``.

    ``fixed_length``: every micro-batch is exactly ``micro_batch_tokens`` long (static shape:
    pipeline parallelism and the explicit-mask path need it); otherwise each is as long as
    its content rounded up to ``pad_to_multiple_of`` (THD). ``min_micro_batches``: append
    all-padding micro-batches (loss mask 0) up to this count, so that every data-parallel
    rank runs the same number (pass the max over ranks).
    """
    bins = first_fit_decreasing([it.length for it in items], micro_batch_tokens)
    bins += [[] for _ in range(min_micro_batches - len(bins))]
    length = micro_batch_tokens if fixed_length else None
    batches = [build_micro_batch([items[i] for i in b], pad_id, length, pad_to_multiple_of)
               for b in bins]
    stats = stats_of(batches)
    logger.debug("packed %d sequences into %d micro-batches (padding share %.3f)",
                 stats.sequences, stats.micro_batches, stats.padding_share)
    return batches, stats


def padded_batch_stats(lengths: Sequence[int], micro_batch_size: int,
                       fixed_length: int | None = None) -> PackingStats:
    """Baseline without packing: ``micro_batch_size`` sequences per micro-batch, in the
    given order, each micro-batch padded to its longest sequence (or to ``fixed_length``)."""
    stats = PackingStats()
    for start in range(0, len(lengths), micro_batch_size):
        chunk = lengths[start:start + micro_batch_size]
        width = fixed_length if fixed_length is not None else max(chunk)
        stats.micro_batches += 1
        stats.sequences += len(chunk)
        stats.real_tokens += sum(chunk)
        stats.slot_tokens += micro_batch_size * width
        stats.per_batch_fill.append(sum(chunk) / (micro_batch_size * width))
    return stats


def thd_supported() -> bool:
    """Whether THD packing can run here: Transformer Engine importable and CUDA present."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True
