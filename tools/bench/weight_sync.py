#!/usr/bin/env python
"""Benchmark: weight sync from Megatron shards (TP=2, gloo on CPU) to two torch engine actors.

Builds a small random Qwen3 (fp32, >= 100 MB), converts it to torch_dist, loads it at TP=2,
streams it with the live exporter into two Ray engine actors, and compares the throughput with
a plain memory copy of the same bytes measured in the same run (the baseline). Prints one
line per figure (``tools/bench/figures.py``); ``--json FILE`` also writes them.

    .venv/bin/python tools/bench/weight_sync.py [--hidden 768 --layers 8 --vocab 32000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402


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


def body(hf: str, mcore: str, ray_address: str, repeats: int, bucket_bytes: int):
    """One TP=2 rank: build, load, sync ``repeats`` times; rank 0 returns its figures."""
    import torch.distributed as dist

    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.checkpoint.live_export import LiveExporter
    from uniapl_mcore.config import ParallelConfig
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import TrainableModel
    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.rollout.pool import EnginePool, default_spec
    from uniapl_mcore.rollout.weight_sync import sync_from_megatron
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
        pool = None
        if dist.get_rank() == 0:
            from uniapl_mcore.runtime.ray_cluster import init_ray

            init_ray(ray_address, log_to_driver=False)
            pool = EnginePool(default_spec(hf, load_checkpoint=False, num_threads=1), 2,
                              cpus_per_engine=0, keep_weights_for_restart=False)
        runs = []
        for version in range(1, repeats + 1):
            dist.barrier()
            timings = sync_from_megatron(pool, [gpt], model, bundle, version,
                                         bucket_bytes=bucket_bytes, exporter=exporter)
            if timings is not None:
                timings["memcpy_s"] = _memcpy_s(int(timings["bytes"]))
                runs.append(timings)
        if pool is not None:
            pool.shutdown()
        return runs or None
    finally:
        layout.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    import ray
    import torch
    import transformers

    from uniapl_mcore.checkpoint.convert import hf_to_mcore
    from uniapl_mcore.runtime.ray_cluster import init_ray
    from uniapl_mcore.testing import run_distributed

    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        config = transformers.Qwen3Config(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
            num_hidden_layers=args.layers, num_attention_heads=12, num_key_value_heads=4,
            head_dim=64, max_position_embeddings=512, tie_word_embeddings=False)
        with torch.device("cpu"):
            transformers.Qwen3ForCausalLM(config).save_pretrained(hf)
        mcore = hf_to_mcore(hf, Path(tmp) / "mcore")
        init_ray(None, num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")  # keep test traffic on loopback
        try:
            runs = run_distributed(body, 2, args=(str(hf), str(mcore),
                                                  ray.get_runtime_context().gcs_address,
                                                  args.repeats, args.bucket_mb * 1024**2),
                                   timeout_s=900)[0]
        finally:
            ray.shutdown()
    best = min(runs[1:] or runs, key=lambda r: r["total_s"])  # first run warms up
    mb = best["bytes"] / 1e6
    print(f"weight sync of {mb:.1f} MB to 2 engines; phases (s): " + ", ".join(
        f"{phase} {best[phase]:.4f}" for phase in ("produce_s", "pack_s", "put_s",
                                                  "load_wait_s", "finish_s", "total_s")))
    emit([Figure("weight_sync.bytes", mb, "MB"),
          higher_is_better("weight_sync.throughput", mb / best["total_s"], "MB/s",
                           mb / best["memcpy_s"])], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
