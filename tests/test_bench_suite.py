"""The benchmark suite's entry point: runs benchmarks in subprocesses, one table, one file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_collects_figures_and_skips_what_cannot_run(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/bench/run_all.py"), "--quick",
                           "--only", "packing,rewards,gpu_mfu", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())["benchmarks"]
    assert report["packing"]["status"] == "ok"
    fill = {f["name"]: f for f in report["packing"]["figures"]}["packing.ffd_fill"]
    assert 0 < fill["baseline"] < fill["value"] <= 1
    assert abs(fill["ratio"] - fill["value"] / fill["baseline"]) < 1e-9
    rewards = report["rewards"]["figures"][0]
    assert rewards["value"] > 0 and rewards["baseline"] > 0
    if report["gpu_mfu"]["status"] != "ok":  # no CUDA here: skipped, never failed
        assert report["gpu_mfu"]["status"].startswith("skipped")
    for line in ("packing.ffd_fill", "rewards.pool_2_workers", "# gpu_mfu: "):
        assert line in proc.stdout


def test_run_all_rejects_unknown_names(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools/bench/run_all.py"), "--only",
                           "nope", "--json", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr
