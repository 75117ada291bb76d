#!/usr/bin/env python
"""Benchmark: weight sync from Megatron shards (TP=2, gloo on CPU) to two torch engine actors,
by both transports, for one or more model sizes.

For each model (a random fp32 Qwen3, converted to torch_dist and loaded at TP=2) it measures,
in the same run and between the same processes:

- ``object_store``: tensors gathered to rank 0, packed buckets put into Ray's object store
  (the last version kept for engine restarts, as by default);
- ``direct``: the stage leader (rank 0 here) broadcasts its buckets over a gloo channel to
  both engines, which load them;
- the transport's floor: the same bytes, in buckets of the same sizes, broadcast over the
  same channel to the same engine processes, which drop them (no export, no load);
- a plain memory copy of the same bytes;
- trainer rank 0's resident-memory growth during each sync (sampled every 2 ms; peak minus
  the resident size before the sync), to show whether it grows with the model.

Prints one line per figure (``tools/bench/figures.py``); ``--json FILE`` also writes them.

    .venv/bin/python tools/bench/weight_sync.py [--models 512x8x32000,1024x28x32000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class RssPeak:
    """Peak resident-memory growth (bytes) of this process while the block runs."""

    def __enter__(self) -> RssPeak:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _memcpy_s(nbytes: int, repeats: int = 3) -> float:
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return best


def _floor(direct, pool, bucket_bytes: int, repeats: int) -> float | None:
    """Best seconds to broadcast the direct sync's bucket sizes over its own channel to the
    engines, which drop them (collective; rank 0 returns it)."""
    import ray
    import torch
    import torch.distributed as dist

    sizes = [b.buffer.numel() for b in direct.exporter.iter_buckets(bucket_bytes) if b]
    best = None
    buffers = [torch.ones(max(sizes, default=0), dtype=torch.uint8) for _ in range(2)]
    for _ in range(repeats):
        dist.barrier()
        if not direct.exporter.is_leader:
            continue
        start = time.perf_counter()
        calls = []
        if pool is not None:
            calls = [a.receive_bare.remote(direct._open_specs, r)
                     for a, r in zip(pool.actors, pool.receiver_ranks(), strict=True)]
        for i, n in enumerate(sizes):
            direct.channel.send_bucket(buffers[i % 2][:n], [("floor", "uint8", (n,), 0, n)])
        direct.channel.send_end()
        ray.get(calls)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best if dist.get_rank() == 0 else None


def body(hf: str, mcore: str, ray_address: str, repeats: int, bucket_bytes: int):
    """One TP=2 rank: build, load, sync ``repeats`` times per transport, measure the floor;
    rank 0 returns {transport: [timings]} plus ``floor_s``."""
    import torch.distributed as dist

    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.checkpoint.live_export import LiveExporter
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import TrainableModel
    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.rollout.pool import EnginePool, default_spec
    from uniapl_mcore.rollout.weight_sync import DirectSync, sync_from_megatron
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    _, bundle, model = load_hf_architecture(hf)
    parallel = ParallelConfig(tensor_parallel_size=2)
    layout = init_parallel(parallel, seed=0)
    try:
        config = transformer_config(model, parallel)
        gpt = build_gpt_model(model, config, layout.is_first_stage, layout.is_last_stage)
        load_checkpoint(mcore, TrainableModel([gpt], None, None, config),
                        include_optimizer=False)
        exporter = LiveExporter([gpt], model, bundle, dst=0)
        direct = DirectSync([gpt], model, bundle)
        pool = None
        if dist.get_rank() == 0:
            from uniapl_mcore.runtime.ray_cluster import init_ray

            init_ray(ray_address, log_to_driver=False)
            pool = EnginePool(default_spec(hf, load_checkpoint=False, num_threads=1), 2,
                              cpus_per_engine=0, keep_weights_for_restart=True)
        found: dict = {"object_store": [], "direct": []}
        version = 0
        for transport in ("object_store", "direct"):
            for _ in range(repeats + 1):  # the first run of each warms up
                version += 1
                dist.barrier()
                with RssPeak() as peak:
                    if transport == "direct":
                        timings = direct.sync(pool, version, bucket_bytes)
                    else:
                        timings = sync_from_megatron(pool, [gpt], model, bundle, version,
                                                     bucket_bytes=bucket_bytes,
                                                     exporter=exporter)
                if timings is not None:
                    timings["rss_growth"] = float(peak.growth)
                    found[transport].append(timings)
        found["floor_s"] = _floor(direct, pool, bucket_bytes, repeats)
        if pool is None:
            return None
        found["memcpy_s"] = _memcpy_s(int(found["direct"][-1]["bytes"]))
        pool.shutdown()
        return found
    finally:
        layout.destroy()


def _model_dir(root: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, int]:
    """A random fp32 Qwen3 HF directory and its parameter count."""
    import torch
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
        num_hidden_layers=layers, num_attention_heads=12, num_key_value_heads=4,
        head_dim=64, max_position_embeddings=512, tie_word_embeddings=False)
    with torch.device("cpu"):
        hf_model = transformers.Qwen3ForCausalLM(config)
        params = sum(p.numel() for p in hf_model.parameters())
        hf_model.save_pretrained(root)
    return root, params


def measure(spec: str, repeats: int, bucket_bytes: int, tmp: Path) -> list[Figure]:
    """Figures of one model ``HIDDENxLAYERSxVOCAB``."""
    import ray

    from uniapl_mcore.checkpoint.convert import hf_to_mcore
    from uniapl_mcore.runtime.ray_cluster import init_ray
    from uniapl_mcore.testing import run_distributed

    hidden, layers, vocab = (int(v) for v in spec.split("x"))
    hf, params = _model_dir(tmp / f"hf-{spec}", hidden, layers, vocab)
    mcore = hf_to_mcore(hf, tmp / f"mcore-{spec}")
    init_ray(None, num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # keep benchmark traffic on loopback
    try:
        found = run_distributed(body, 2, args=(str(hf), str(mcore),
                                               ray.get_runtime_context().gcs_address,
                                               repeats, bucket_bytes), timeout_s=1800)[0]
    finally:
        ray.shutdown()
    name = f"weight_sync.{params / 1e6:.0f}M"
    best = {t: min(found[t][1:], key=lambda r: r["total_s"]) for t in ("object_store", "direct")}
    mb = best["direct"]["bytes"] / 1e6
    floor = mb / found["floor_s"]
    memcpy = mb / found["memcpy_s"]
    for transport, run in best.items():
        print(f"{name} {transport}: {run['bytes'] / 1e6:.1f} MB per engine; phases (s): "
              + ", ".join(f"{k} {v:.4f}" for k, v in sorted(run.items())
                          if k.endswith("_s")))
    growth = {t: max(r["rss_growth"] for r in found[t][1:]) / 1e6 for t in best}
    return [Figure(f"{name}.bytes", mb, "MB"),
            higher_is_better(f"{name}.direct_vs_floor", mb / best["direct"]["total_s"],
                             "MB/s", floor),
            higher_is_better(f"{name}.object_store_vs_floor",
                             mb / best["object_store"]["total_s"], "MB/s", floor),
            higher_is_better(f"{name}.direct_vs_memcpy", mb / best["direct"]["total_s"],
                             "MB/s", memcpy),
            higher_is_better(f"{name}.object_store_vs_memcpy",
                             mb / best["object_store"]["total_s"], "MB/s", memcpy),
            higher_is_better(f"{name}.floor_vs_memcpy", floor, "MB/s", memcpy),
            Figure(f"{name}.rank0_rss_growth.direct", growth["direct"], "MB",
                   bucket_bytes / 1e6, growth["direct"] / (bucket_bytes / 1e6)),
            Figure(f"{name}.rank0_rss_growth.object_store", growth["object_store"], "MB",
                   bucket_bytes / 1e6, growth["object_store"] / (bucket_bytes / 1e6))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="512x8x32000,1024x28x32000",
                        help="comma-separated HIDDENxLAYERSxVOCAB (random Qwen3 models)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models.split(","):
            figures += measure(spec, args.repeats, args.bucket_mb * 1024**2, Path(tmp))
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
