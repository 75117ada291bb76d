"""Streaming export from a live, sharded Megatron model: HF-named full tensors in buckets.

Every rank describes the pieces it holds with the model's own ``sharded_state_dict()``
(global key, global offset, local data, replica id — the same metadata ``torch_dist``
checkpoints use), so TP shards, pipeline stages, expert-parallel experts and tied
embeddings are all handled by one mechanism: for each (key, layer[, expert]) task, the
owners of the main replicas of the overlapping pieces send them, the receiving ranks
assemble the Megatron tensor and split it into HF tensors with the same
:func:`~uniapl_mcore.models.mapping.to_hf` the offline converter uses (so the stream
equals ``mcore-to-hf`` output byte for byte).

All ranks must iterate :meth:`LiveExporter.iter_buckets` together (it runs collectives).
Tasks are in one global order every rank derives from the model config; bucket boundaries
depend only on tensor sizes, so every rank yields the same number of buckets (non-receiving
ranks yield empty lists).

With ``dst="stage"`` each pipeline stage exports on its own: the stage's leader (its lowest
rank holding main replicas) receives the stage's tensors from its TP/EP peers, and the ranks
of a stage iterate only their stage's tasks, so stages run concurrently and no rank ever
holds another stage's tensors (direct weight transfer, :mod:`uniapl_mcore.rollout.channel`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.gpt import torch_dtype
from uniapl_mcore.models.mapping import TensorRule, to_hf


@dataclass(frozen=True)
class _Piece:
    """One main-replica piece of a checkpoint key: owner rank, global offsets, sizes."""

    key: str
    rank: int
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]


def _local_pieces(chunks: list) -> tuple[dict[tuple[str, tuple[int, ...]], torch.Tensor],
                                          dict[str, tuple[int, ...]]]:
    """This rank's main-replica tensors by (key, offsets), and each key's global shape."""
    from megatron.core.dist_checkpointing.mapping import (
        ShardedTensor,
        apply_factories,
        is_main_replica,
    )
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors

    data, shapes = {}, {}
    for chunk in chunks:
        module = getattr(chunk, "module", chunk)
        state = module.sharded_state_dict()
        apply_factories(state)
        tensors, _ = extract_sharded_tensors(state)
        for tensor in _nested_values(tensors):
            if not isinstance(tensor, ShardedTensor):
                continue
            shapes[tensor.key] = tuple(tensor.global_shape)
            if is_main_replica(tensor.replica_id):
                sizes = (1,) * tensor.prepend_axis_num + tuple(tensor.local_shape)
                view = tensor.data.detach().reshape(sizes)
                data[(tensor.key, tuple(tensor.global_offset))] = view
    return data, shapes


def _pipeline_rank() -> int:
    """This rank's pipeline stage (0 when Megatron's parallel state is not set up)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0
    return parallel_state.get_pipeline_model_parallel_rank()


def _nested_values(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _nested_values(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nested_values(value)
    else:
        yield tree


_ALIGN = 64  # bytes: every tensor of a flat bucket starts at a multiple of this


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _view(buffer: torch.Tensor, offset: int, dtype: torch.dtype,
          shape: tuple[int, ...]) -> torch.Tensor:
    """A ``dtype`` tensor of ``shape`` over ``buffer`` (uint8) from byte ``offset``."""
    numel = 1
    for n in shape:
        numel *= n
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    return buffer[offset:offset + nbytes].view(dtype).view(shape)


class FlatBucket(list):
    """A bucket of (HF name, tensor) whose tensors are views into one ``uint8`` ``buffer``
    (None for an empty bucket); :func:`uniapl_mcore.rollout.transport.pack_bucket` ships it
    without copying."""

    def __init__(self, items=(), buffer: torch.Tensor | None = None) -> None:
        super().__init__(items)
        self.buffer = buffer


class _Pending:
    """Transfers posted for a bucket: work handles, send buffers to keep alive, and
    (target view, received temporary) copies to do once the transfers are complete."""

    def __init__(self) -> None:
        self.works: list = []
        self.keep: list[torch.Tensor] = []
        self.copies: list[tuple[torch.Tensor, torch.Tensor]] = []

    def finish(self) -> None:
        for work in self.works:
            work.wait()
        for target, data in self.copies:
            target.copy_(data.reshape(target.shape))
        self.works, self.keep, self.copies = [], [], []


class LiveExporter:
    """Holds the piece directory of a model (exchanged once) and streams its HF tensors.

    ``chunks``: this rank's model chunks (DDP-wrapped or bare GPTModel). ``bundle``: the
    architecture's bundle (names and rules). ``dst``: the rank that receives the tensors,
    None for every rank, or ``"stage"`` for each pipeline stage's leader (its own stage's
    tensors only; see the module docstring).
    """

    def __init__(self, chunks: list, model: ModelConfig, bundle,
                 dst: int | str | None = 0, group: dist.ProcessGroup | None = None) -> None:
        if isinstance(dst, str) and dst != "stage":
            raise ValueError(f"dst: a rank, None or 'stage', got {dst!r}")
        self.chunks, self.model, self.bundle, self.dst = chunks, model, bundle, dst
        self.group = group
        self.rank = dist.get_rank(group)
        self.shape = bundle.attention_shape(model)
        self.dtype = torch_dtype(model.params_dtype)  # HF dtype (norms/router may live in fp32)
        self.rules: list[TensorRule] = bundle.tensor_rules(model)
        self._ring: dict[int, torch.Tensor] = {}  # reused bucket buffers (iter_buckets ring)
        local, shapes = _local_pieces(chunks)
        self.device = next(iter(local.values())).device if local else torch.device("cpu")
        mine = [(key, off, tuple(t.shape), t.dtype) for (key, off), t in local.items()]
        gathered: list = [None] * dist.get_world_size(group)
        stage = _pipeline_rank() if dst == "stage" else 0
        dist.all_gather_object(gathered, (self.rank, mine, shapes, stage), group=group)
        self.pieces: dict[str, list[_Piece]] = {}
        self.global_shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        #: pipeline stage of every rank, and each stage's leader (lowest rank with pieces)
        self.stages = {rank: s for rank, _, _, s in gathered}
        self.stage = self.stages[self.rank]
        self.leaders: dict[int, int] = {}
        self._stage_of: dict[tuple[str, tuple[int, ...]], int] = {}
        for rank, items, _, s in sorted(gathered, key=lambda g: g[0]):
            if items:
                self.leaders.setdefault(s, rank)
        for rank, items, key_shapes, _ in gathered:
            self.global_shapes.update(key_shapes)
            for key, off, sizes, dtype in items:
                self.pieces.setdefault(key, []).append(_Piece(key, rank, off, sizes))
                self.dtypes[key] = dtype
        for rule in self.rules:
            if rule.mcore not in self.pieces:
                raise KeyError(f"live model has no tensor {rule.mcore!r} (rule for {rule.hf})")

    def _tasks(self) -> list[tuple[TensorRule, tuple[int, ...]]]:
        """Every (rule, position) in global order; with ``dst="stage"`` this rank's stage's
        only."""
        tasks = [(rule, pos) for rule in self.rules
                 for pos in rule.positions(self.model.num_layers, self.model.num_experts)]
        if self.dst != "stage":
            return tasks
        return [task for task in tasks if self._task_stage(*task) == self.stage]

    @property
    def is_leader(self) -> bool:
        """Whether this rank receives tensors (``dst="stage"``: leads its stage)."""
        if self.dst == "stage":
            return self.leaders.get(self.stage) == self.rank
        return self.dst is None or self.rank == self.dst

    def _task_stage(self, rule: TensorRule, position: tuple[int, ...]) -> int:
        """The pipeline stage holding the main replicas of a task's region (memoised)."""
        key = (rule.mcore, position)
        if key not in self._stage_of:
            stages = {self.stages[piece.rank] for piece, *_ in self._overlaps(rule, position)}
            if len(stages) != 1:
                raise RuntimeError(f"{rule.mcore}{list(position)}: main replicas on pipeline "
                                   f"stages {sorted(stages)}; expected exactly one")
            self._stage_of[key] = stages.pop()
        return self._stage_of[key]

    def _dst(self, rule: TensorRule, position: tuple[int, ...]) -> int | None:
        if self.dst == "stage":
            return self.leaders[self._task_stage(rule, position)]
        return self.dst  # type: ignore[return-value]

    def _task_bytes(self, rule: TensorRule, position: tuple[int, ...]) -> int:
        rest = self.global_shapes[rule.mcore][len(position):]
        numel = int(torch.tensor(rest).prod()) if rest else 1
        return numel * torch.tensor([], dtype=self.dtypes[rule.mcore]).element_size()

    def _receives(self) -> bool:
        """Whether this rank receives the tasks it iterates."""
        return self.is_leader

    def _assemble(self, rule: TensorRule, position: tuple[int, ...],
                  local: dict[tuple[str, tuple[int, ...]], torch.Tensor]) -> torch.Tensor | None:
        """Collect the region ``position`` of ``rule.mcore`` from its owners."""
        out = torch.empty(self._rest(rule, position), dtype=self.dtypes[rule.mcore],
                          device=self.device) if self._receives() else None
        pending = _Pending()
        self._post(rule, position, local, out, pending)
        pending.finish()
        return out

    def _rest(self, rule: TensorRule, position: tuple[int, ...]) -> tuple[int, ...]:
        return self.global_shapes[rule.mcore][len(position):]

    def _post(self, rule: TensorRule, position: tuple[int, ...],
              local: dict[tuple[str, tuple[int, ...]], torch.Tensor],
              out: torch.Tensor | None, pending: _Pending) -> None:
        """Start collecting the region ``position`` of ``rule.mcore`` into ``out`` (None on
        ranks that do not receive): local pieces are copied now, transfers are posted
        asynchronously into ``pending`` (:meth:`_Pending.finish` completes them)."""
        receiver = self._dst(rule, position)
        for piece, src, dst, shape in self._overlaps(rule, position):
            if piece.rank == self.rank:
                data = local[(piece.key, piece.offsets)][src]
                if out is not None:  # straight into place
                    out[dst] = data.reshape(out[dst].shape)
                    data = out[dst] if out[dst].is_contiguous() else data
                if receiver is None or piece.rank != receiver:  # others need it
                    pending.keep.append(data.contiguous())  # alive until the sends finish
                    pending.works += self._move(pending.keep[-1], piece.rank, receiver)
                continue
            if out is None:
                continue  # neither owner nor receiver of this piece
            target = out[dst]
            if target.is_contiguous():
                pending.works += self._move(target, piece.rank, receiver)  # in place
                continue
            data = torch.empty(shape, dtype=self.dtypes[rule.mcore], device=self.device)
            pending.works += self._move(data, piece.rank, receiver)
            pending.copies.append((target, data))

    def _overlaps(self, rule: TensorRule, position: tuple[int, ...]
                  ) -> Iterator[tuple[_Piece, tuple[slice, ...], tuple[slice, ...], list[int]]]:
        """The pieces of ``rule.mcore`` overlapping region ``position``: (piece, slices in
        the piece, slices in the region's tensor, overlap shape)."""
        rest = self._rest(rule, position)
        lo = (*position, *(0,) * len(rest))
        hi = tuple(p + 1 for p in position) + rest
        for piece in self.pieces[rule.mcore]:
            p_hi = tuple(o + s for o, s in zip(piece.offsets, piece.sizes, strict=True))
            a = [max(x, y) for x, y in zip(lo, piece.offsets, strict=True)]
            b = [min(x, y) for x, y in zip(hi, p_hi, strict=True)]
            if any(y <= x for x, y in zip(a, b, strict=True)):
                continue
            src = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, piece.offsets, strict=True))
            dst = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo, strict=True))
            yield piece, src, dst[len(position):], [y - x for x, y in zip(a, b, strict=True)]

    def _move(self, data: torch.Tensor, owner: int, receiver: int | None) -> list:
        """Send ``data`` from ``owner`` to ``receiver`` (None: every rank; async; returns
        work handles)."""
        if receiver is None:
            return [dist.broadcast(data, src=owner, group=self.group, async_op=True)]
        if owner == receiver:
            return []
        if self.rank == owner:
            return [dist.isend(data, dst=receiver, group=self.group)]
        if self.rank == receiver:
            return [dist.irecv(data, src=owner, group=self.group)]
        return []

    def _bucket_tasks(self, bucket_bytes: int
                      ) -> Iterator[list[tuple[TensorRule, tuple[int, ...]]]]:
        """Tasks grouped into buckets of at most ``bucket_bytes`` (Megatron bytes; one
        oversized task alone). Depends only on the config, so equal on every rank."""
        bucket: list[tuple[TensorRule, tuple[int, ...]]] = []
        size = 0
        for rule, position in self._tasks():
            nbytes = self._task_bytes(rule, position)
            if size and size + nbytes > bucket_bytes:
                yield bucket
                bucket, size = [], 0
            bucket.append((rule, position))
            size += nbytes
        if bucket:
            yield bucket

    def _layout(self, tasks: list[tuple[TensorRule, tuple[int, ...]]]) -> tuple[list, int]:
        """Where each task's HF tensors go in a bucket's flat buffer: per task, ``direct``
        (the Megatron tensor is assembled in place and the HF tensors are views of it) and
        byte offsets; and the buffer size."""
        plan, offset = [], 0
        for rule, position in tasks:
            rest = self._rest(rule, position)
            meta = torch.empty(rest, dtype=self.dtype, device="meta")
            hf = to_hf(rule, meta, self.shape, self.model.vocab_size)
            direct = rule.kind != "qkv" and self.dtypes[rule.mcore] == self.dtype
            if direct:  # one region for the whole Megatron tensor (padded vocab rows too)
                plan.append((rule, position, True, [offset], [tuple(t.shape) for t in hf]))
                offset += _aligned(meta.numel() * meta.element_size())
                continue
            offsets = []
            for tensor in hf:
                offsets.append(offset)
                offset += _aligned(tensor.numel() * tensor.element_size())
            plan.append((rule, position, False, offsets, [tuple(t.shape) for t in hf]))
        return plan, offset

    def _buffer(self, nbytes: int, slot: int | None) -> torch.Tensor:
        """A uint8 buffer of ``nbytes``: fresh, or ring slot ``slot`` (kept and reused, so
        its pages are already mapped)."""
        if slot is None:
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        buf = self._ring.get(slot)
        if buf is None or buf.numel() < nbytes:
            buf = self._ring[slot] = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return buf[:nbytes]

    def iter_buckets(self, bucket_bytes: int = 512 * 1024**2, ring: int = 0,
                     prefetch: bool = False) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Buckets of (HF name, full tensor) of at most ``bucket_bytes`` (one oversized tensor
        alone); empty lists on ranks that do not receive.

        Each bucket is a :class:`FlatBucket`: its tensors are contiguous views into one
        ``uint8`` buffer (``bucket.buffer``), each at a 64-byte aligned offset, so it can be
        shipped without another copy. The Megatron tensors are assembled straight into the
        buffer where the HF split is a view (everything but fused QKV and dtype changes);
        every transfer of a bucket is posted before the first wait. ``ring``: 0 gives every
        bucket a fresh buffer; ``ring`` = k ≥ 2 reuses k buffers kept on the exporter, so a
        bucket's tensors are only valid until the iterator has been advanced k - 1 more
        times (the consumer must be done with them by then).

        ``prefetch``: post bucket i + 1's transfers (and copy its local pieces) before
        yielding bucket i, so the link stays busy while the consumer handles bucket i (all
        ranks must pass the same value; posting order stays identical on every rank). The
        next buffer is then already being written while bucket i is out: with ``ring`` = k a
        bucket is only valid until the iterator has been advanced k - 2 more times, so
        ``ring`` must be 0 or >= 3.
        """
        if ring == 1 or ring < 0:
            raise ValueError(f"ring must be 0 (fresh buffers) or >= 2, got {ring}")
        if prefetch and ring == 2:
            raise ValueError("ring must be 0 or >= 3 with prefetch (the next bucket's buffer "
                             "is written while the current one is out)")
        local, _ = _local_pieces(self.chunks)
        started = None
        for index, tasks in enumerate(self._bucket_tasks(bucket_bytes)):
            current = self._start_bucket(index, tasks, local, ring)
            if not prefetch:
                yield self._finish_bucket(*current)
                continue
            if started is not None:
                yield self._finish_bucket(*started)
            started = current
        if started is not None:
            yield self._finish_bucket(*started)

    def _start_bucket(self, index: int, tasks: list[tuple[TensorRule, tuple[int, ...]]],
                      local: dict[tuple[str, tuple[int, ...]], torch.Tensor], ring: int
                      ) -> tuple[FlatBucket, _Pending, list]:
        """Lay out bucket ``index``, copy the local pieces and post its transfers."""
        pending = _Pending()
        if not self._receives():
            for rule, position in tasks:
                self._post(rule, position, local, None, pending)
            return FlatBucket(), pending, []
        plan, nbytes = self._layout(tasks)
        buffer = self._buffer(nbytes, index % ring if ring else None)
        bucket = FlatBucket(buffer=buffer)
        splits = []  # (scratch Megatron tensor, rule, its HF views) for non-direct tasks
        for rule, position, direct, offsets, shapes in plan:
            rest = self._rest(rule, position)
            names = rule.hf_names(*position)
            if direct:
                out = _view(buffer, offsets[0], self.dtype, rest)
                hf = to_hf(rule, out, self.shape, self.model.vocab_size)
                bucket += list(zip(names, hf, strict=True))
            else:
                out = torch.empty(rest, dtype=self.dtypes[rule.mcore], device=self.device)
                views = [_view(buffer, o, self.dtype, s)
                         for o, s in zip(offsets, shapes, strict=True)]
                splits.append((out, rule, views))
                bucket += list(zip(names, views, strict=True))
            self._post(rule, position, local, out, pending)
        return bucket, pending, splits

    def _finish_bucket(self, bucket: FlatBucket, pending: _Pending, splits: list
                       ) -> FlatBucket:
        """Wait for a started bucket's transfers and fill its split (non-direct) tensors."""
        pending.finish()
        for out, rule, views in splits:
            for view, tensor in zip(views, to_hf(rule, out, self.shape,
                                                 self.model.vocab_size), strict=True):
                view.copy_(tensor)
        return bucket
