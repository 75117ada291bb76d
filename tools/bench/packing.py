#!/usr/bin/env python3
"""Sequence-packing fill on a long-tailed length distribution, against padded batching.

512 sequences with log-normal lengths (median 400) clipped to 50..4096 tokens, packed
first-fit-decreasing into 8192-token micro-batches; baselines measured in the same run:
4 sequences per micro-batch padded to the longest, and padded to a fixed 4096. Prints one
line per figure (fill = real tokens / token slots).

    python tools/bench/packing.py [--sequences 512] [--micro-batch-tokens 8192]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from uniapl_mcore.data.packing import PackItem, pack, padded_batch_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--micro-batch-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    lengths = np.clip(rng.lognormal(np.log(400), 1.0, size=args.sequences), 50, 4096).astype(int)
    items = [PackItem([1] * (n + 1), [0] + [1] * n, key=i) for i, n in enumerate(lengths)]
    _, packed = pack(items, micro_batch_tokens=args.micro_batch_tokens, pad_id=0)
    padded = padded_batch_stats(lengths.tolist(), micro_batch_size=4)
    fixed = padded_batch_stats(lengths.tolist(), micro_batch_size=4, fixed_length=4096)
    emit([higher_is_better("packing.ffd_fill", packed.fill, "fraction", padded.fill),
          higher_is_better("packing.ffd_fill_vs_fixed_4096", packed.fill, "fraction",
                           fixed.fill),
          Figure("packing.micro_batches", packed.micro_batches, "count")], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
