"""Direct weight transfer: a process group from one trainer rank to every engine worker.

A :class:`WeightChannel` joins one sender (group rank 0: the trainer rank that leads a
pipeline stage) and every receiving engine worker (group ranks 1..N) in a process group of
its own, outside the trainer's ``torch.distributed`` world: ``gloo`` over TCP for CPU
tensors, vLLM's stateless NCCL communicator for CUDA tensors (GPU only; imported lazily).
The sender hosts the group's rendezvous store on a free port of its own address
(:func:`local_address`), so no trainer rank relays another rank's tensors.

A bucket crosses as three broadcasts from rank 0: a header (int64 [2]: metadata bytes,
buffer bytes), the metadata (JSON of :data:`~uniapl_mcore.rollout.transport.MetaTuple`
rows, uint8) and the flat buffer (uint8, the exporter's
:class:`~uniapl_mcore.checkpoint.live_export.FlatBucket` as is). A header of zeros ends
the stream. Every receiver gets each bucket once per bucket (one broadcast to all of them),
in a fresh buffer it may keep.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from uniapl_mcore.rollout.transport import MetaTuple, tensor_views

logger = logging.getLogger(__name__)

#: seconds a channel waits for its peers (rendezvous and each broadcast)
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ChannelSpec:
    """Where a channel meets: the sender's ``host``/``port`` (its rendezvous store),
    ``world_size`` (1 sender + receivers), ``backend`` (``gloo`` | ``nccl``), ``name``
    (unique per channel generation: the store prefix)."""

    host: str
    port: int
    world_size: int
    backend: str
    name: str
    timeout_s: float = DEFAULT_TIMEOUT_S


def local_address() -> str:
    """This node's address as the engines reach it: ``NODE_IP`` when set (the multi-node
    launcher exports it), loopback when ``MASTER_ADDR`` is loopback or unset, else the
    address of the interface that routes to ``MASTER_ADDR``."""
    if os.environ.get("NODE_IP"):
        return os.environ["NODE_IP"]
    master = os.environ.get("MASTER_ADDR", "127.0.0.1")
    if master in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((master, int(os.environ.get("MASTER_PORT", "29500"))))
        return probe.getsockname()[0]


class WeightChannel:
    """One member of a channel. ``rank`` 0 sends, the others receive; ``device``: where
    the tensors live (CPU for gloo, the member's CUDA device for NCCL)."""

    def __init__(self, spec: ChannelSpec, rank: int, device: torch.device,
                 store=None) -> None:
        self.spec, self.rank, self.device = spec, rank, device
        timeout = datetime.timedelta(seconds=spec.timeout_s)
        if spec.backend == "gloo":
            import torch.distributed as dist

            if store is None:
                store = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
            self._store = store
            self._group = dist.ProcessGroupGloo(dist.PrefixStore(spec.name, store), rank,
                                                spec.world_size, timeout)
        elif spec.backend == "nccl":
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            if device.type != "cuda":
                raise RuntimeError("weight_sync.transport=direct over NCCL needs CUDA tensors "
                                   f"on every member; this one holds {device}")
            group = StatelessProcessGroup.create(host=spec.host, port=spec.port, rank=rank,
                                                 world_size=spec.world_size)
            self._group = PyNcclCommunicator(group, device=device)
        else:
            raise ValueError(f"channel backend: unknown {spec.backend!r} (gloo | nccl)")

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Broadcast ``tensor`` from rank 0 to every member, in place (blocking)."""
        if self.spec.backend == "gloo":
            import torch.distributed as dist

            options = dist.BroadcastOptions()
            options.rootRank = 0
            self._group.broadcast([tensor], options).wait()
            return
        stream = torch.cuda.current_stream(self.device)
        self._group.broadcast(tensor, src=0, stream=stream)
        stream.synchronize()

    # ------------------------------------------------------------------ sender
    def send_bucket(self, buffer: torch.Tensor, metas: Sequence[MetaTuple]) -> None:
        """Send one flat bucket (uint8 [bytes] on this member's device) laid out as
        ``metas``."""
        meta = json.dumps([list(m) for m in metas]).encode()
        self.broadcast(torch.tensor([len(meta), buffer.numel()], dtype=torch.int64,
                                    device=self.device))
        self.broadcast(torch.frombuffer(bytearray(meta), dtype=torch.uint8).to(self.device))
        self.broadcast(buffer)

    def send_end(self) -> None:
        """Tell the receivers this sender has no more buckets."""
        self.broadcast(torch.zeros(2, dtype=torch.int64, device=self.device))

    # ------------------------------------------------------------------ receiver
    def receive_buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Buckets as (HF name, tensor) views of fresh buffers, until the sender ends.

        A helper thread receives ahead (at most two buckets beyond the one the caller
        holds), so the sender's next broadcast overlaps the caller's load of this one."""
        ahead: queue.Queue = queue.Queue(maxsize=1)

        def receive() -> None:
            try:
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                for bucket in self._receive():
                    ahead.put(bucket)
                ahead.put(None)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller
                ahead.put(err)

        thread = threading.Thread(target=receive, name="uniapl-weight-receive", daemon=True)
        thread.start()
        while True:
            item = ahead.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()

    def _receive(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        while True:
            header = torch.zeros(2, dtype=torch.int64, device=self.device)
            self.broadcast(header)
            meta_bytes, nbytes = (int(v) for v in header.tolist())
            if meta_bytes == 0:
                return
            meta = torch.empty(meta_bytes, dtype=torch.uint8, device=self.device)
            self.broadcast(meta)
            metas = [(n, d, tuple(s), o, b) for n, d, s, o, b in
                     json.loads(bytes(meta.cpu().numpy()).decode())]
            buffer = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
            self.broadcast(buffer)
            yield tensor_views(buffer, metas)


def host_channel(backend: str, world_size: int, name: str, device: torch.device,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[ChannelSpec, object]:
    """For a sender: a rendezvous store on a free port of :func:`local_address` and the
    channel's spec. Returns (spec, store); the sender opens the channel with
    ``WeightChannel(spec, 0, device, store)`` once the receivers were told the spec. NCCL
    channels bring their own store (vLLM's), on a port picked here."""
    host = local_address()
    if backend == "gloo":
        import torch.distributed as dist

        store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        return ChannelSpec(host, int(store.port), world_size, backend, name, timeout_s), store
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return ChannelSpec(host, port, world_size, backend, name, timeout_s), None


class ChannelSet:
    """The channels a receiver belongs to (one per sending stage), kept open across syncs
    and reopened when the specs change (a new generation after an engine restart)."""

    def __init__(self) -> None:
        self.specs: tuple[ChannelSpec, ...] = ()
        self.channels: list[WeightChannel] = []

    def open(self, specs: Sequence[ChannelSpec], rank: int, device: torch.device
             ) -> list[WeightChannel]:
        """The channels of ``specs`` with this receiver at group rank ``rank`` (>= 1),
        opened in order (every sender opens its own concurrently)."""
        specs = tuple(ChannelSpec(**s) if isinstance(s, dict) else s for s in specs)
        if specs != self.specs:
            self.channels = [WeightChannel(spec, rank, device) for spec in specs]
            self.specs = specs
            logger.info("joined %d weight channel(s) as rank %d", len(specs), rank)
        return self.channels

    def receive(self, specs: Sequence[ChannelSpec], rank: int, device: torch.device
                ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Every bucket of every channel (stage by stage)."""
        for channel in self.open(specs, rank, device):
            yield from channel.receive_buckets()


def load_all(buckets: Iterable[list[tuple[str, torch.Tensor]]],
             load: Callable[[list[tuple[str, torch.Tensor]]], int]) -> tuple[int, int]:
    """``load`` every received bucket; (tensors loaded, bytes received). When a load fails
    the stream is still read to its end (so no sender waits for a receiver that gave up),
    then the first error is raised."""
    count = nbytes = 0
    error: BaseException | None = None
    for named in buckets:
        nbytes += sum(t.numel() * t.element_size() for _, t in named)
        if error is not None:
            continue
        try:
            count += load(named)
        except Exception as err:  # noqa: BLE001 - raised once the senders are done
            error = err
    if error is not None:
        raise error
    return count, nbytes
