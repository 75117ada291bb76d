"""Command line for ``tools/convert_checkpoint.py``."""

from __future__ import annotations

import argparse
import sys
import time

from uniapl_mcore.checkpoint.hf_io import CheckpointError
from uniapl_mcore.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Convert between Hugging Face checkpoints and "
                                                 "Megatron-Core torch_dist checkpoints.")
    sub = parser.add_subparsers(dest="direction", required=True)
    to_mcore = sub.add_parser("hf-to-mcore", help="HF directory → torch_dist (loads at any "
                                                  "TP/PP/EP)")
    to_mcore.add_argument("--hf", required=True, help="HF model directory (config.json + "
                                                      "safetensors or pytorch_model*.bin)")
    to_mcore.add_argument("--out", required=True, help="output directory (must not exist)")
    to_mcore.add_argument("--threads", type=int, default=2, help="writer threads")
    to_hf = sub.add_parser("mcore-to-hf", help="torch_dist → HF directory (sharded "
                                               "safetensors + index + config.json)")
    to_hf.add_argument("--mcore", required=True,
                       help="torch_dist checkpoint directory with hf/: hf-to-mcore output or a "
                            "training checkpoint's policy (RUN/checkpoints/step_N/policy, "
                            "RUN/checkpoints/latest/policy)")
    to_hf.add_argument("--out", required=True, help="output directory (must not exist)")
    to_hf.add_argument("--max-shard-gb", type=float, default=2.0, help="safetensors shard size")
    to_hf.add_argument("--threads", type=int, default=4,
                       help="slices read, split and written at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    from uniapl_mcore.checkpoint.convert import hf_to_mcore, mcore_to_hf

    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.direction == "hf-to-mcore":
            out = hf_to_mcore(args.hf, args.out, threads=args.threads)
        else:
            out = mcore_to_hf(args.mcore, args.out, int(args.max_shard_gb * 1024**3),
                              threads=args.threads)
    except (CheckpointError, ConfigError) as err:
        print(f"convert_checkpoint: error: {err}", file=sys.stderr)
        return 2
    print(f"convert_checkpoint: wrote {out} in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    return 0
