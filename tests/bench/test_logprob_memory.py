"""The memory benchmark script runs end to end (tiny sizes; the real figures are in the report)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
from logprob_memory_run import run_benchmark  # noqa: E402

pytestmark = pytest.mark.slow


def test_benchmark_smoke():
    report = run_benchmark(vocab=2048, tokens=96, dtype="float32", chunk_tokens=32,
                           timeout_s=300)
    assert set(report) >= {"vocab_parallel", "gather", "memory_ratio"}
    assert report["logp_sum_rel_diff"] <= 1e-6
    assert report["gather"]["peak_growth_gib"] > 0
    with pytest.raises(ValueError, match="vocab"):
        run_benchmark(vocab=2047)
