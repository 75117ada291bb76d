"""Weight channels (gloo, CPU): one sender's buckets reach every receiver byte for byte, in
fresh buffers; a receiver whose load fails still reads the stream to its end, so the sender
finishes, and then reports the error."""

from __future__ import annotations

import multiprocessing as mp

import torch

from uniapl_mcore.checkpoint.live_export import FlatBucket
from uniapl_mcore.rollout.channel import ChannelSet, host_channel, load_all


def _buckets() -> list[FlatBucket]:
    """Two flat buckets of named tensors (mixed dtypes, 64-byte aligned views)."""
    out = []
    for b in range(2):
        buffer = torch.zeros(512, dtype=torch.uint8)
        a = buffer[:96].view(torch.float32).view(4, 6)
        a.copy_(torch.arange(24, dtype=torch.float32).view(4, 6) + b)
        c = buffer[128:136].view(torch.int64)
        c.fill_(7 + b)
        out.append(FlatBucket([(f"w{b}.a", a), (f"w{b}.c", c)], buffer=buffer))
    return out


def _receiver(spec: dict, rank: int, fail: bool, results) -> None:
    channels = ChannelSet()
    got: dict[str, list] = {}

    def load(named):
        if fail:
            raise ValueError("refused on purpose")
        got.update((n, t.tolist()) for n, t in named)
        return len(named)

    for _ in range(2):  # two versions over the same, reused channel
        try:
            count, nbytes = load_all(channels.receive([spec], rank, torch.device("cpu")), load)
            results.put((rank, "ok", count, nbytes, got))
        except ValueError as err:
            results.put((rank, "error", str(err), 0, {}))


def test_broadcast_to_receivers_and_drain_on_error():
    from dataclasses import asdict

    from uniapl_mcore.rollout.channel import WeightChannel
    from uniapl_mcore.rollout.transport import flat_metas, meta_tuples

    spec, store = host_channel("gloo", 3, "test/g1/s0/", torch.device("cpu"), timeout_s=60)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(asdict(spec), r, r == 2, results))
             for r in (1, 2)]
    for proc in procs:
        proc.start()
    try:
        sender = WeightChannel(spec, 0, torch.device("cpu"), store)
        for _ in range(2):
            for bucket in _buckets():
                sender.send_bucket(bucket.buffer, meta_tuples(flat_metas(bucket)))
            sender.send_end()
        found = [results.get(timeout=60) for _ in range(4)]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    ok = [f for f in found if f[1] == "ok"]
    errors = [f for f in found if f[1] == "error"]
    assert [f[0] for f in ok] == [1, 1] and [f[0] for f in errors] == [2, 2]
    assert all(e[2] == "refused on purpose" for e in errors)
    _, _, count, nbytes, got = ok[0]
    assert count == 4 and nbytes == 2 * (96 + 8)  # tensor bytes (not the alignment gaps)
    expected = {n: t.tolist() for bucket in _buckets() for n, t in bucket}
    assert got == expected
