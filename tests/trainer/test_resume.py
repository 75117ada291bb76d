"""Kill-and-resume: a run SIGKILLed mid-step, then again while writing a checkpoint, and
restarted with the same command on the same run directory ends with exactly the metrics of
an uninterrupted run (CPU, same seed; wall-clock metrics aside)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._train_bodies import TINY, comparable, read_records

pytestmark = pytest.mark.slow

#: with PPO mini-batches (π_old pass, an LR schedule stepped per update) and rollout IS
RUN = [*TINY, "loss.objective=uniapl", "train.max_steps=5", "checkpoint.save_interval_steps=2",
       "eval.interval_steps=2", "discriminator.role=trainable", "train.mini_batches=2",
       "loss.rollout_is.level=token"]
#: Layouts of the kill-and-resume run: one process (the CLI process itself is SIGKILLed), and
#: two pipeline stages of 1 and 2 layers (both ranks SIGKILL themselves; the CLI, which
#: spawned them, reports the dead ranks and exits 1).
LAYOUTS = {"one-process": [],
           "pp2-uneven": ["model.num_layers=3", "parallel.pipeline_parallel_size=2"]}


def _train(run_dir: Path, ray_address: str, fault: str | None = None,
           run: list[str] = RUN) -> int:
    """Run ``uniapl train``; its output goes to a file, not a pipe: helper processes of a
    SIGKILLed run (e.g. checkpoint writers) may outlive it and would hold a pipe open."""
    env = dict(os.environ, UNIAPL_FAULT=fault or "")
    cmd = [sys.executable, "-m", "uniapl_mcore.cli", "train", "--run-dir", str(run_dir), *run,
           f"ray_address={ray_address}"]
    log = run_dir.parent / f"{run_dir.name}-{fault or 'clean'}.log"
    with open(log, "w") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=900).returncode
    if code not in (0, -9, 1):
        print(log.read_text()[-3000:])
    return code


def _killed(run_dir: Path, code: int, fault: str) -> bool:
    """Whether the run ended by the fault's SIGKILL (of the CLI process, or of its ranks)."""
    return code == -9 or (code == 1 and "died with exit code -9" in _log(run_dir, fault))


def _log(run_dir: Path, fault: str | None = None) -> str:
    return (run_dir.parent / f"{run_dir.name}-{fault or 'clean'}.log").read_text()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_killed_runs_resume_to_identical_metrics(ray_cluster, tmp_path, layout):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run = [*RUN, *LAYOUTS[layout]]
    assert _train(straight, ray_cluster, run=run) == 0
    # killed during step 3 (after its optimizer update): resumes from step 2
    assert _killed(killed, _train(killed, ray_cluster, fault="step:3", run=run), "step:3")
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_000002"
    # resumed, then killed while checkpoint 4 is half written: step 2 stays the latest
    assert _killed(killed, _train(killed, ray_cluster, fault="checkpoint:4", run=run),
                   "checkpoint:4")
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert (killed / "checkpoints" / ".tmp.step_000004").is_dir()
    assert _train(killed, ray_cluster, run=run) == 0
    assert not (killed / "checkpoints" / ".tmp.step_000004").exists()
    want, got = comparable(read_records(straight)), comparable(read_records(killed))
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4, 5]
    assert got == want


def test_resume_refuses_a_changed_data_mix(ray_cluster, tmp_path):
    run_dir = tmp_path / "run"
    base = [*TINY, "loss.objective=sft", "eval.at_start=false"]
    assert _train(run_dir, ray_cluster, run=[*base, "train.max_steps=1"]) == 0
    assert _train(run_dir, ray_cluster, run=[*base, "train.max_steps=2",
                                              "prompts_per_step=6"]) == 2
    err = _log(run_dir).strip().splitlines()[-1]
    assert err.startswith("uniapl train: config error: ") and "step_000001" in err, err
    assert "prompts_per_step: saved 4, now 6" in err, err
