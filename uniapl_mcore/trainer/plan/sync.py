"""Bytes moved, time taken and memory held by one weight sync from the trainer to the rollout
engines (``rollout.weight_sync.transport``: ``object_store`` or ``direct``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from uniapl_mcore.trainer.config import UniaplConfig
from uniapl_mcore.trainer.plan.layout import Layout
from uniapl_mcore.trainer.plan.params import DTYPE_BYTES, count_parameters, stage_parameters

#: link bandwidth the sync estimate assumes (GB/s, one direction): a 200 Gb/s NIC
SYNC_LINK_GB_S = 25.0
#: bucket buffers the live exporter keeps per rank during a sync (a ring with prefetch)
SYNC_RING_BUCKETS = 3


@dataclass(frozen=True)
class SyncEstimate:
    """One weight sync (:func:`sync_estimate`). Bytes unless stated; ``rank0_*`` is global
    rank 0 (object store) or stage 0's leader, which is rank 0 too (direct)."""

    transport: Literal["object_store", "direct"]
    #: the HF weights in the trainer's dtype
    model: int
    #: what rank 0 receives (object store: the other ranks' shards; direct: its stage's
    #: TP/EP peers' parts)
    rank0_in: int
    #: what leaves rank 0 for the engines (object store: the model once per engine; direct:
    #: stage 0 once)
    rank0_out: int
    #: object store: the largest shard another rank sends (0 when every rank holds the
    #: whole model); direct: the largest stage
    largest_sender: int
    #: a lower bound on the sync's duration, seconds (packing, puts and loads add to it)
    seconds: float
    #: object-store bytes on rank 0's host at the peak (0 for direct)
    rank0_host: int
    #: bucket buffers on each rank's GPU
    rank_device: int
    #: engines that load the weights (0: no rollouts)
    readers: int
    #: link bandwidth assumed, GB/s (10^9 bytes per second)
    link_gb_s: float
    #: ranks that send to the engines: 1 (rank 0) for the object store, the stage leaders
    #: for direct
    senders: int


def sync_estimate(cfg: UniaplConfig, layout: Layout,
                  link_gb_s: float = SYNC_LINK_GB_S) -> SyncEstimate:
    """One weight sync of ``cfg`` laid out as ``layout``. ``object_store``: every
    model-parallel rank of data-parallel replica 0 sends its own shard to global rank 0,
    which puts each HF-named bucket into Ray's object store once; every engine actor then
    reads the whole model from there. ``seconds`` is rank 0's link carrying ``rank0_in +
    rank0_out`` at ``link_gb_s``; ``rank0_host`` is this version's buckets plus the kept
    previous version when ``keep_weights_for_restart``. ``direct``: :func:`_direct_estimate`.
    """
    width = DTYPE_BYTES[cfg.model.params_dtype]
    model = count_parameters(cfg.model).total * width
    shards = [stage_parameters(cfg.model, cfg.parallel, s).total * width
              for s in range(cfg.parallel.pipeline_parallel_size)]
    readers = cfg.rollout.num_engines if layout.rollout.needed else 0
    ws = cfg.rollout.weight_sync
    if ws.transport == "direct":
        return _direct_estimate(cfg, model, shards, readers, link_gb_s)
    rank0_in = max(model - shards[0], 0)
    rank0_out = readers * model
    sharded = cfg.parallel.model_parallel_size * cfg.parallel.expert_parallel_size > 1
    return SyncEstimate(
        transport="object_store", model=model, rank0_in=rank0_in, rank0_out=rank0_out,
        largest_sender=max(shards) if sharded else 0,
        seconds=(rank0_in + rank0_out) / (link_gb_s * 1e9),
        rank0_host=model * (2 if ws.keeps_weights else 1),
        rank_device=SYNC_RING_BUCKETS * min(ws.bucket_bytes, model),
        readers=readers, link_gb_s=link_gb_s, senders=1)


def _direct_estimate(cfg: UniaplConfig, model: int, shards: list[int], readers: int,
                     link_gb_s: float) -> SyncEstimate:
    """:func:`sync_estimate` for ``transport: direct`` (``model``, ``shards``: bytes of the
    whole model and of one rank of each stage): each stage's leader gathers its stage from
    its TP/EP peers (receiving all but its own part) and broadcasts the stage once to every
    engine worker (NCCL pipelines one broadcast through all receivers, so the leader's link
    carries the stage once); the stages send concurrently, so ``seconds`` is the largest
    stage over one link (the gathers, inside a stage, are not counted). No object store."""
    width = DTYPE_BYTES[cfg.model.params_dtype]
    unsharded = replace(cfg.parallel, tensor_parallel_size=1, expert_parallel_size=1,
                        context_parallel_size=1, sequence_parallel=False)
    stages = [stage_parameters(cfg.model, unsharded, s).total * width
              for s in range(len(shards))]
    gathered = [max(stage - own, 0) for stage, own in zip(stages, shards, strict=True)]
    slowest = max(stages)  # the gathers run inside a stage's nodes (NVLink): not counted
    ring = SYNC_RING_BUCKETS * min(cfg.rollout.weight_sync.bucket_bytes, model)
    return SyncEstimate(
        transport="direct", model=model, rank0_in=gathered[0],
        rank0_out=stages[0] if readers else 0, largest_sender=max(stages),
        seconds=slowest / (link_gb_s * 1e9) if readers else 0.0, rank0_host=0,
        rank_device=ring, readers=readers, link_gb_s=link_gb_s, senders=len(shards))
