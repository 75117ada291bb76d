"""``tools/bench/trl_grpo.py --quick`` (the peer comparison with TRL's GRPOTrainer) runs end
to end at tiny settings and reports its figures. Skipped without the ``bench`` extra (trl).
The ratio targets are reported by the benchmark, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench" / "trl_grpo.py"
TINY = ["--quick", "--num-layers", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
        "--max-new-tokens", "12", "--steps", "1", "--train-prompts", "2", "--repeats", "1",
        "--rounds", "1"]


def test_quick_reports_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(BENCH), *TINY, "--json", str(out),
                           "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = {f["name"]: f for f in json.loads(out.read_text())}
    for name in ("trl.grpo_step_tokens_per_s", "trl.train_phase_tokens_per_s"):
        figure = figures[name]
        assert figure["unit"] == "tokens/s"
        assert figure["value"] > 0 and figure["baseline"] > 0
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"])
    for side in ("ours_step", "trl_step", "ours_train", "trl_train"):
        assert 0.0 <= figures[f"trl.{side}_padding_frac"]["value"] < 1.0
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    # one timed step each; the training phase fed both sides the same sequences
    assert results["ours-step"]["steps"] == results["trl-step"]["steps"] == 1
    assert results["ours-train"]["tokens"] == results["trl-train"]["tokens"]
