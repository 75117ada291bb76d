"""Weight sync: a live sharded Megatron model → HF-named buckets → every engine in the pool.

Two transports (``rollout.weight_sync.transport``), both called by every trainer rank
together (the exporter runs collectives):

- ``object_store``, :func:`sync_from_megatron`: the tensors are gathered to one rank
  (``dst``, rank 0 by default), which holds the pool and puts packed buckets into Ray's
  shared-memory object store for every engine;
- ``direct``, :class:`DirectSync`: each pipeline stage's leader sends its own stage's
  buckets straight to every engine worker over a process group (no rank-0 funnel).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from uniapl_mcore.rollout.pool import EnginePool

logger = logging.getLogger(__name__)


def sync_from_megatron(pool: EnginePool | None, chunks: list, model, bundle, version: int,
                       bucket_bytes: int = 512 * 1024**2, exporter: Any = None,
                       dst: int = 0) -> dict[str, float] | None:
    """Push the trainer's current weights to ``pool`` as ``version``.

    ``chunks``: this rank's model chunks; ``model``/``bundle``: the architecture's
    ModelConfig and bundle; ``exporter``: a reusable ``LiveExporter`` (its piece directory is
    built once, with a collective, when None). ``pool`` is used on rank ``dst`` only (pass
    None elsewhere). Returns the pool's per-phase timings on ``dst`` (``produce_s`` is the
    exporter's gather and HF conversion), None on the other ranks.
    """
    from uniapl_mcore.checkpoint.live_export import LiveExporter

    start = time.perf_counter()
    if exporter is None:
        exporter = LiveExporter(chunks, model, bundle, dst=dst)
    # Three reused bucket buffers with prefetch: bucket k + 1's transfers run while bucket k
    # is handed out. The pool waits for bucket k's put (a copy into the object store) before
    # it asks for bucket k + 2, and only that request starts writing bucket k + 3 into k's
    # buffer; bucket k + 1, still being put then, is untouched.
    buckets = exporter.iter_buckets(bucket_bytes, ring=3, prefetch=True)
    if dist.get_rank() != dst:
        for _ in buckets:  # take part in the collectives
            pass
        return None
    if pool is None:
        raise ValueError(f"pool: rank {dst} pushes the weights and needs the engine pool")
    timings = pool.sync_weights(buckets, version)
    timings["wall_s"] = time.perf_counter() - start
    logger.info("weight sync v%d: %.1f MB in %.3f s", version, timings["bytes"] / 1e6,
                timings["wall_s"])
    return timings


class DirectSync:
    """Direct weight transfer (``rollout.weight_sync.transport: direct``), trainer side.

    Each pipeline stage's leader gathers its stage's tensors from its own TP/EP peers
    (``LiveExporter(dst="stage")``) and broadcasts them, bucket by bucket, over a channel of
    its own to every engine worker (:mod:`uniapl_mcore.rollout.channel`: gloo on CPU, NCCL
    when the model is on CUDA). No rank holds more than its shard plus a ring of three
    buckets; rank 0 only holds the pool and its own stage. Channels are opened at the first
    sync and reopened after an engine restart (the restarted engine serves again after the
    next sync). Every trainer rank constructs it and calls :meth:`sync` together.
    """

    def __init__(self, chunks: list, model, bundle, timeout_s: float | None = None) -> None:
        from uniapl_mcore.checkpoint.live_export import LiveExporter
        from uniapl_mcore.rollout.channel import DEFAULT_TIMEOUT_S

        self.exporter = LiveExporter(chunks, model, bundle, dst="stage")
        self.backend = "nccl" if self.exporter.device.type == "cuda" else "gloo"
        self.timeout_s = timeout_s or DEFAULT_TIMEOUT_S
        self.channel = None
        self.generation = 0
        self._open_specs: list[dict] = []  # rank 0: the channels the engines are in
        self._restarts_seen = -1  # rank 0: the pool's restart count when channels opened

    def sync(self, pool: EnginePool | None, version: int, bucket_bytes: int = 512 * 1024**2
             ) -> dict[str, float] | None:
        """Push the current weights as ``version`` (collective over the trainer's world;
        ``pool`` on rank 0 only). Returns rank 0's timings, None elsewhere."""
        start = time.perf_counter()
        plan: list = [None]
        if dist.get_rank() == 0:
            if pool is None:
                raise ValueError("pool: rank 0 drives the weight sync and needs the pool")
            restarts = pool.counters["restarts"]
            reopen = self.channel is None or restarts != self._restarts_seen
            plan = [(reopen, pool.num_receivers() if reopen else 0)]
            self._restarts_seen = restarts
        dist.broadcast_object_list(plan, src=0)
        reopen, receivers = plan[0]
        spec, store = self._host(receivers) if reopen else (None, None)
        specs: list = [None] * dist.get_world_size()
        if reopen:
            dist.all_gather_object(specs, spec)
        else:
            specs = []
        calls = None
        if pool is not None:
            opened = [asdict(s) for s in specs if s is not None] if reopen \
                else self._open_specs
            self._open_specs = opened
            calls = pool.begin_direct(version, opened)
        sent = self._send(spec, store, bucket_bytes)
        if pool is None:
            return None
        timings = pool.finish_direct(calls, version)
        timings.update(sent)
        timings["wall_s"] = time.perf_counter() - start
        logger.info("direct weight sync v%d: %.1f MB per engine in %.3f s", version,
                    timings["bytes"] / 1e6, timings["wall_s"])
        return timings

    def _host(self, receivers: int):
        """On a stage leader: a fresh channel's rendezvous store and spec (None elsewhere)."""
        from uniapl_mcore.rollout.channel import host_channel

        self.channel = None
        if not self.exporter.is_leader:
            return None, None
        self.generation += 1
        name = f"uniapl-weights/g{self.generation}/s{self.exporter.stage}/"
        return host_channel(self.backend, 1 + receivers, name, self.exporter.device,
                            self.timeout_s)

    def _send(self, spec, store, bucket_bytes: int) -> dict[str, float]:
        """Open the channel if new, stream this stage's buckets (leaders) or take part in
        the stage's gathers (other ranks); timings of this rank.

        A leader broadcasts bucket k on a helper thread while the exporter gathers bucket
        k + 1 (at most one bucket in flight, as the exporter's ring of three buffers with
        prefetch allows); ``send_s`` is the time the gather waited for a send."""
        from concurrent.futures import ThreadPoolExecutor

        from uniapl_mcore.rollout.channel import WeightChannel

        t = {"produce_s": 0.0, "send_s": 0.0, "sent_bytes": 0.0}
        if spec is not None:
            tick = time.perf_counter()
            self.channel = WeightChannel(spec, 0, self.exporter.device, store)
            t["open_s"] = time.perf_counter() - tick
        buckets = iter(self.exporter.iter_buckets(bucket_bytes, ring=3, prefetch=True))
        in_flight = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="uniapl-weight-send") as pool:
            while True:
                tick = time.perf_counter()
                bucket = next(buckets, None)  # bucket k - 1 may still be sending
                t["produce_s"] += time.perf_counter() - tick
                tick = time.perf_counter()
                if in_flight is not None:
                    in_flight.result()
                    in_flight = None
                t["send_s"] += time.perf_counter() - tick
                if bucket is None:
                    break
                if self.exporter.is_leader and bucket:
                    in_flight = pool.submit(self._send_bucket, bucket)
                    t["sent_bytes"] += bucket.buffer.numel()
        if self.exporter.is_leader:
            self.channel.send_end()
        return t

    def _send_bucket(self, bucket) -> None:
        """Broadcast one flat bucket (on the sender thread)."""
        from uniapl_mcore.rollout.transport import flat_metas, meta_tuples

        if self.exporter.device.type == "cuda":
            torch.cuda.set_device(self.exporter.device)
        metas = flat_metas(bucket)
        if metas is None:
            raise RuntimeError("direct weight sync: the exporter's bucket is not flat")
        self.channel.send_bucket(bucket.buffer, meta_tuples(metas))
