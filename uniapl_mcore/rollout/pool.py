"""A pool of rollout engines as Ray actors: load-balanced dispatch, restart-and-retry, weight
sync with a version check, per-phase timings.

Requests are cut into calls of ``requests_per_call`` prompts; each call goes to the current
(right weight version, alive) engine with the fewest calls in flight. A call is all-or-nothing:
its results are stored under the request indices only when the whole call returned, so an
engine that dies mid-call loses nothing (the call is re-queued) and duplicates nothing (the
dead call's partial work is never seen). Ray restarts the dead actor (``max_restarts``); if
the pool keeps the last synced weights (packed buckets in the object store) it re-syncs the
restarted engine before using it again, otherwise the engine stays stale and is skipped.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.rollout.engine import CHECKPOINT_VERSION, NO_WEIGHTS
from uniapl_mcore.rollout.placement import EnginePlacement, PlacementSpec
from uniapl_mcore.rollout.transport import PackedBucket, pack_bucket, unpack_bucket
from uniapl_mcore.rollout.types import GenerationRequest, GenerationResult, StaleWeightsError

logger = logging.getLogger(__name__)


class PoolError(RuntimeError):
    """The pool could not serve a batch (all engines stale or dead, retries exhausted)."""


@dataclass(frozen=True)
class EngineSpec:
    """How each actor builds its engine: ``kind`` torch | vllm, the model directory, whether
    to load its checkpoint (version 0) or start empty (version -1), engine keyword args."""

    kind: str
    model_dir: str
    load_checkpoint: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def build(self):
        if self.kind == "torch":
            from uniapl_mcore.rollout.torch_engine import TorchEngine

            return TorchEngine(self.model_dir, load_checkpoint=self.load_checkpoint,
                               **self.options)
        if self.kind == "vllm":
            from uniapl_mcore.rollout.vllm_engine import VllmEngine

            return VllmEngine(self.model_dir, load_checkpoint=self.load_checkpoint,
                              **self.options)
        raise ValueError(f"engine: unknown kind {self.kind!r} (torch | vllm)")

    @property
    def initial_version(self) -> int:
        return CHECKPOINT_VERSION if self.load_checkpoint else NO_WEIGHTS


class EngineActor:
    """The body of one Ray engine actor (wrapped with ``ray.remote`` by the pool)."""

    def __init__(self, spec: EngineSpec) -> None:
        logging.basicConfig(level=logging.INFO)
        self.engine = spec.build()
        self._shares = getattr(self.engine, "accepts_shared_weights", False)

    def generate(self, requests: Sequence[GenerationRequest],
                 weight_version: int | None) -> list[GenerationResult]:
        return self.engine.generate(requests, weight_version)

    def begin_weight_update(self, version: int) -> None:
        self.engine.begin_weight_update(version)

    def load_packed(self, bucket: PackedBucket) -> tuple[int, float]:
        """Load one packed bucket; (tensors loaded, seconds)."""
        start = time.perf_counter()
        if hasattr(self.engine, "load_packed"):  # the engine takes the packed form itself
            count = self.engine.load_packed(bucket)
        elif self._shares:  # object-store buffers outlive the call while the engine uses them
            count = self.engine.load_weights(unpack_bucket(bucket), share=True)
        else:
            count = self.engine.load_weights(unpack_bucket(bucket))
        return count, time.perf_counter() - start

    def receivers(self) -> int:
        """How many processes of this engine receive weights (its workers)."""
        return int(getattr(self.engine, "num_workers", 1))

    def receive_direct(self, specs: list[dict[str, Any]], first_rank: int
                       ) -> tuple[int, int, float]:
        """Receive a direct weight transfer (:mod:`uniapl_mcore.rollout.channel`): every
        bucket of every channel in ``specs``, this engine's workers at group ranks
        ``first_rank``...; (tensors loaded, bytes received, seconds)."""
        start = time.perf_counter()
        if hasattr(self.engine, "receive_direct"):  # its workers receive themselves
            count, nbytes = self.engine.receive_direct(specs, first_rank)
            return count, nbytes, time.perf_counter() - start
        from uniapl_mcore.rollout.channel import ChannelSet, load_all

        if not hasattr(self, "_channels"):
            self._channels = ChannelSet()
        device = getattr(self.engine, "device", torch.device("cpu"))
        if any(s["backend"] == "gloo" for s in specs):
            device = torch.device("cpu")  # gloo moves host tensors; the engine copies them
        count, nbytes = load_all(self._channels.receive(specs, first_rank, device),
                                 self.engine.load_weights)
        return count, nbytes, time.perf_counter() - start

    def receive_bare(self, specs: list[dict[str, Any]], first_rank: int) -> tuple[int, float]:
        """Receive a stream from the channels ``specs`` and drop it (the transport's own
        floor, for benchmarks; the engine's weights are untouched); (bytes, seconds). Only
        for engines whose actor receives (not vLLM's workers)."""
        from uniapl_mcore.rollout.channel import ChannelSet, load_all

        start = time.perf_counter()
        if not hasattr(self, "_channels"):
            self._channels = ChannelSet()
        _, nbytes = load_all(self._channels.receive(specs, first_rank, torch.device("cpu")),
                             len)
        return nbytes, time.perf_counter() - start

    def finish_weight_update(self, version: int) -> int:
        self.engine.finish_weight_update(version)
        return self.engine.weight_version

    def weight_version(self) -> int:
        return self.engine.weight_version

    def sleep(self, level: int = 1) -> None:
        self.engine.sleep(level)

    def wake_up(self) -> None:
        self.engine.wake_up()

    def health(self) -> dict[str, Any]:
        import os

        return {**self.engine.health(), "pid": os.getpid()}


@dataclass
class _Call:
    indices: list[int]
    attempts: int = 0


class EnginePool:
    """``num_engines`` engine actors built from ``spec``.

    ``cpus_per_engine`` / ``gpus_per_engine``: Ray resources per actor, used to build a
    ``disaggregated`` :class:`~uniapl_mcore.rollout.placement.PlacementSpec` (one bundle per
    GPU, i.e. per TP rank) when ``placement`` is None; pass ``placement`` for colocated
    engines or other shapes. Every engine gets its own placement group (removed by
    :meth:`shutdown`); see :mod:`uniapl_mcore.rollout.placement`. ``sleep_level``: what
    :meth:`sleep` does by default (1: weights to host memory; 2: drop them).
    ``keep_weights_for_restart``: keep the last synced buckets in the object store to re-sync
    an engine Ray restarted. ``max_restarts``: per actor (-1: unlimited).
    """

    def __init__(self, spec: EngineSpec, num_engines: int, *, cpus_per_engine: float = 1.0,
                 gpus_per_engine: int = 0, requests_per_call: int = 8, max_retries: int = 3,
                 keep_weights_for_restart: bool = True, max_restarts: int = -1,
                 call_timeout_s: float = 1800.0, placement: PlacementSpec | None = None,
                 sleep_level: int = 1) -> None:
        import ray

        if num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {num_engines}")
        if requests_per_call < 1:
            raise ValueError(f"requests_per_call must be >= 1, got {requests_per_call}")
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        if not ray.is_initialized():
            raise PoolError("ray is not initialised (call ray.init first)")
        self.spec, self.requests_per_call, self.max_retries = spec, requests_per_call, max_retries
        self.keep_weights, self.call_timeout_s = keep_weights_for_restart, call_timeout_s
        self.sleep_level = sleep_level
        if placement is None:
            tp = max(gpus_per_engine, 1)
            placement = PlacementSpec("disaggregated", tensor_parallel_size=tp,
                                      cpus_per_bundle=cpus_per_engine / tp,
                                      gpus=gpus_per_engine > 0)
        self.placement = EnginePlacement(placement, num_engines)
        try:
            actor_cls = ray.remote(EngineActor)
            self.actors = [actor_cls.options(max_restarts=max_restarts, max_task_retries=0,
                                             **self.placement.options(i)).remote(spec)
                           for i in range(num_engines)]
            self.version = spec.initial_version
            self.engine_versions = ray.get([a.weight_version.remote() for a in self.actors])
        except BaseException:
            self.placement.remove()
            raise
        self.asleep = False
        self._kept: list = []  # ObjectRefs of the last synced packed buckets
        self.timings: dict[str, float] = defaultdict(float)
        self.counters: dict[str, int] = defaultdict(int)

    @property
    def colocated(self) -> bool:
        """Whether the engines share the trainer's devices (and sleep during training)."""
        return self.placement.spec.mode == "colocated"

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in request order, from engines at ``self.version``."""
        import ray

        start = time.perf_counter()
        queue = [_Call(list(range(i, min(i + self.requests_per_call, len(requests)))))
                 for i in range(0, len(requests), self.requests_per_call)]
        results: list[GenerationResult | None] = [None] * len(requests)
        inflight: dict[Any, tuple[int, _Call]] = {}
        load = [0] * len(self.actors)
        while queue or inflight:
            while queue:
                engine = self._pick(load)
                if engine is None:
                    break
                call = queue.pop(0)
                ref = self.actors[engine].generate.remote([requests[i] for i in call.indices],
                                                          self.version)
                inflight[ref] = (engine, call)
                load[engine] += 1
            if not inflight:
                raise PoolError(f"no engine can serve weight version {self.version} "
                                f"(engine versions: {self.engine_versions})")
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=self.call_timeout_s)
            if not done:
                raise PoolError(f"no engine call finished within {self.call_timeout_s} s")
            engine, call = inflight.pop(done[0])
            load[engine] -= 1
            try:
                out = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - any failure: retry elsewhere
                self._on_failure(engine, call, err, queue)
                continue
            for index, result in zip(call.indices, out, strict=True):
                results[index] = result
            self.counters["calls_done"] += 1
        self.timings["generate_s"] += time.perf_counter() - start
        self.counters["requests"] += len(requests)
        return results  # type: ignore[return-value]

    def _pick(self, load: list[int]) -> int | None:
        """The least-loaded current engine with room for one more call (two in flight)."""
        ready = [i for i, v in enumerate(self.engine_versions)
                 if v == self.version and v != NO_WEIGHTS and load[i] < 2]
        return min(ready, key=lambda i: load[i]) if ready else None

    def _on_failure(self, engine: int, call: _Call, err: Exception,
                    queue: list[_Call]) -> None:
        call.attempts += 1
        if call.attempts > self.max_retries:
            raise PoolError(f"requests {call.indices[0]}..{call.indices[-1]} failed "
                            f"{call.attempts} times; last error: {err}") from err
        if _is_stale(err):
            logger.warning("engine %d refused a call as stale; skipping it", engine)
            self.engine_versions[engine] = NO_WEIGHTS
            self.counters["stale_refusals"] += 1
        else:
            logger.warning("engine %d failed (%s); retrying its %d requests",
                           engine, type(err).__name__, len(call.indices))
            self.counters["engine_failures"] += 1
            self._revive(engine)
        queue.insert(0, call)

    def _revive(self, engine: int) -> None:
        """Wait for Ray's restart of ``engine``; re-sync it from the kept buckets if needed."""
        import ray

        start = time.perf_counter()
        actor = self.actors[engine]
        for _ in range(60):
            try:
                version = ray.get(actor.weight_version.remote(), timeout=60)
                break
            except Exception:  # noqa: BLE001 - still restarting
                time.sleep(0.5)
        else:
            self.engine_versions[engine] = NO_WEIGHTS
            logger.error("engine %d did not come back; excluded", engine)
            return
        if version != self.version and self._kept:
            version = self._push([actor], self._kept, self.version)[0]
        self.engine_versions[engine] = version
        self.counters["restarts"] += 1
        self.timings["restart_s"] += time.perf_counter() - start

    # ------------------------------------------------------------------ weights
    def sync_weights(self, buckets: Iterable[Sequence[tuple[str, torch.Tensor]]],
                     version: int) -> dict[str, float]:
        """Stream HF-named buckets into every engine and publish ``version``.

        Phases (seconds): ``produce_s`` (pulling buckets from the iterator: the exporter's
        gather and conversion), ``pack_s`` and ``put_s`` (into the object store; on a helper
        thread, overlapping the next bucket's production; a bucket must stay valid until the
        iterator has been advanced once more, when its put is waited for), ``load_wait_s``
        (waiting for the engines' loads), ``finish_s``. Engines that fail the version check
        are marked stale and never served.
        """
        import ray

        if version <= self.version:
            raise ValueError(f"version must increase: pool at {self.version}, got {version}")
        t: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        ray.get([a.begin_weight_update.remote(version) for a in self.actors])
        refs, loads = [], []

        def ship(bucket: Sequence[tuple[str, torch.Tensor]]) -> int:
            """Pack, put and dispatch one bucket (on a helper thread, overlapping the
            producer's gather/convert of the next bucket)."""
            tick = time.perf_counter()
            packed = pack_bucket(bucket)
            t["pack_s"] += time.perf_counter() - tick
            tick = time.perf_counter()
            ref = ray.put(packed)
            t["put_s"] += time.perf_counter() - tick
            refs.append(ref)
            loads.extend(a.load_packed.remote(ref) for a in self.actors)
            return packed.nbytes

        shipped = []
        with ThreadPoolExecutor(max_workers=1) as shipper:
            iterator = iter(buckets)
            while True:
                # At most one bucket in flight while the next is produced: bounds memory,
                # and lets the producer reuse a ring of two buffers (each bucket's tensors
                # stay valid until the iterator is advanced once more).
                for future in shipped[:-1]:
                    future.result()
                tick = time.perf_counter()
                bucket = next(iterator, None)
                t["produce_s"] += time.perf_counter() - tick
                if bucket is None:
                    break
                if bucket:
                    shipped.append(shipper.submit(ship, bucket))
            nbytes = sum(f.result() for f in shipped)
        tick = time.perf_counter()
        ray.get(loads)
        t["load_wait_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        self.engine_versions = ray.get([a.finish_weight_update.remote(version)
                                        for a in self.actors])
        t["finish_s"] = time.perf_counter() - tick
        self.version = version
        self._kept = refs if self.keep_weights else []
        stale = [i for i, v in enumerate(self.engine_versions) if v != version]
        if stale:
            raise PoolError(f"engines {stale} did not reach weight version {version}")
        t["total_s"] = time.perf_counter() - start
        t["bytes"] = float(nbytes)
        for key, value in t.items():
            self.timings[f"sync_{key}"] += value
        self.counters["syncs"] += 1
        return dict(t)

    def begin_direct(self, version: int, specs: list[dict[str, Any]]) -> list:
        """Open a direct transfer of ``version`` (:mod:`uniapl_mcore.rollout.channel`): every
        engine begins its update and starts receiving from the channels ``specs`` (one per
        sending stage, as dicts of :class:`~uniapl_mcore.rollout.channel.ChannelSpec`);
        returns the receive calls for :meth:`finish_direct`. The senders send meanwhile."""
        import ray

        if version <= self.version:
            raise ValueError(f"version must increase: pool at {self.version}, got {version}")
        self._direct_start = time.perf_counter()
        ray.get([a.begin_weight_update.remote(version) for a in self.actors])
        ranks = self.receiver_ranks()
        return [a.receive_direct.remote(specs, r) for a, r in zip(self.actors, ranks,
                                                                  strict=True)]

    def receiver_ranks(self) -> list[int]:
        """Each engine's first group rank in a direct-transfer channel (rank 0 sends)."""
        import ray

        counts = ray.get([a.receivers.remote() for a in self.actors])
        return [1 + sum(counts[:i]) for i in range(len(counts))]

    def num_receivers(self) -> int:
        """Processes that receive a direct transfer (every worker of every engine)."""
        import ray

        return sum(ray.get([a.receivers.remote() for a in self.actors]))

    def finish_direct(self, calls: list, version: int) -> dict[str, float]:
        """Wait for the receive ``calls`` of :meth:`begin_direct`, then publish ``version``.
        Timings (seconds): ``receive_wait_s``, ``finish_s``, ``total_s``; ``bytes``
        received by one engine; ``load_s`` the slowest engine's receive-and-load time."""
        import ray

        t: dict[str, float] = {}
        tick = time.perf_counter()
        received = ray.get(calls)
        t["receive_wait_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        self.engine_versions = ray.get([a.finish_weight_update.remote(version)
                                        for a in self.actors])
        t["finish_s"] = time.perf_counter() - tick
        self.version = version
        self._kept = []  # nothing kept: a restarted engine waits for the next sync
        stale = [i for i, v in enumerate(self.engine_versions) if v != version]
        if stale:
            raise PoolError(f"engines {stale} did not reach weight version {version}")
        t["total_s"] = time.perf_counter() - self._direct_start
        t["bytes"] = float(received[0][1])
        t["load_s"] = max(r[2] for r in received)
        for key, value in t.items():
            self.timings[f"sync_{key}"] += value
        self.counters["syncs"] += 1
        return t

    def _push(self, actors: list, refs: list, version: int) -> list[int]:
        import ray

        ray.get([a.begin_weight_update.remote(version) for a in actors])
        ray.get([a.load_packed.remote(ref) for ref in refs for a in actors])
        return ray.get([a.finish_weight_update.remote(version) for a in actors])

    def refresh_versions(self) -> list[int]:
        """Ask every engine for its version (e.g. after an out-of-band change).

        An engine Ray is restarting is waited for and re-synced (:meth:`_revive`) instead of
        failing the call.
        """
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError

        refs = [a.weight_version.remote() for a in self.actors]
        for engine, ref in enumerate(refs):
            try:
                version = ray.get(ref)
            except (ActorUnavailableError, RayActorError):
                self._revive(engine)
                continue
            if version in (0, NO_WEIGHTS) and version != self.version and self._kept:
                # back at its start-up weights: Ray restarted it since we last looked
                version = self._push([self.actors[engine]], self._kept, self.version)[0]
                self.counters["restarts"] += 1
            self.engine_versions[engine] = version
        return list(self.engine_versions)

    # ------------------------------------------------------------------ lifecycle
    def sleep(self, level: int | None = None) -> None:
        """Put every engine to sleep (free accelerator memory); ``level`` 1 keeps the weights
        in host memory, 2 drops them (the next :meth:`sync_weights` must precede generation).
        Default: the pool's ``sleep_level``."""
        import ray

        level = self.sleep_level if level is None else level
        start = time.perf_counter()
        ray.get([a.sleep.remote(level) for a in self.actors])
        if level == 2:  # the engines forgot their weights: none may serve until a sync
            self.engine_versions = [NO_WEIGHTS] * len(self.actors)
        self.asleep = True
        self.counters["sleeps"] += 1
        self.timings["sleep_s"] += time.perf_counter() - start

    def wake_up(self) -> None:
        """Wake every engine (weights and caches back onto its devices)."""
        import ray

        start = time.perf_counter()
        ray.get([a.wake_up.remote() for a in self.actors])
        self.asleep = False
        self.counters["wakes"] += 1
        self.timings["wake_s"] += time.perf_counter() - start

    @contextmanager
    def generation_phase(self) -> Iterator[EnginePool]:
        """The rollout half of a colocated step: engines awake inside, asleep after.

        Contract for a colocated trainer (engines on the trainer's GPUs)::

            pool.sleep()                         # once, before the first training step
            for step in ...:
                with pool.generation_phase():    # wake_up on entry
                    sync_from_megatron(pool, ...)    # the new policy
                    results = pool.generate(...)
                train_step(results)              # engines asleep: full device memory

        The trainer frees its own scratch (e.g. ``torch.cuda.empty_cache()``) before entering
        and runs no forward/backward inside. Weight sync belongs inside the phase (engines
        awake); with ``sleep_level`` 2 it is required, since the engines dropped their
        weights. The engines go back to sleep when the block exits, also on an exception.
        For a disaggregated pool (own devices) this is a no-op: its engines never sleep.
        """
        if not self.colocated:
            yield self
            return
        if self.asleep:
            self.wake_up()
        try:
            yield self
        finally:
            self.sleep()

    def health(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.health.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self._kept = [], []
        self.placement.remove()


def _is_stale(err: Exception) -> bool:
    cause = getattr(err, "cause", None)
    return isinstance(err, StaleWeightsError) or isinstance(cause, StaleWeightsError) or \
        "StaleWeightsError" in str(err)[:2000]


def default_spec(model_dir: str | Path, kind: str = "torch", load_checkpoint: bool = True,
                 **options: Any) -> EngineSpec:
    """An :class:`EngineSpec` with its path as a string (picklable, node-independent)."""
    return EngineSpec(kind, str(model_dir), load_checkpoint, dict(options))
