#!/usr/bin/env python3
"""Peak memory of log-prob + entropy at TP=2: vocab-parallel vs gathering full-vocab logits.

    python tools/bench/logprob_memory.py [--vocab 151936] [--tokens 4096] [--dtype bfloat16]
                                         [--json FILE]

(See ``logprob_memory_run.py`` for the method.) The baseline, measured in the
same run, is the full-vocabulary gather; both ratios are baseline / ours (higher is better).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import emit, lower_is_better  # noqa: E402
from logprob_memory_run import DTYPES, run_benchmark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--chunk-tokens", type=int, default=1024)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    report = run_benchmark(args.vocab, args.tokens, args.dtype, args.chunk_tokens)
    ours, gather = report["vocab_parallel"], report["gather"]
    print(f"vocab {args.vocab}, {args.tokens} tokens, {args.dtype}, TP=2; log-prob sums differ "
          f"by rel {report['logp_sum_rel_diff']:.2e}")
    emit([lower_is_better("logprob.peak_rss_growth_per_rank", ours["peak_growth_gib"], "GiB",
                          gather["peak_growth_gib"]),
          lower_is_better("logprob.seconds", ours["seconds"], "s", gather["seconds"])],
         args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
