"""Process bodies and settings shared by the trainer end-to-end tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: A small, fast run of the embedded toy task (tiny policy, short responses).
TINY = [
    "prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.sampling.max_new_tokens=12",
    "rollout.cpus_per_engine=1", "eval.max_prompts=4", "eval.max_new_tokens=8",
    "eval.interval_steps=0", "train.micro_batch_size=4", "data.max_response_tokens=48",
    "model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
    "model.head_dim=16", "logging.tensorboard=false", "checkpoint.keep_last=3",
    "discriminator.batch_size=8", "discriminator.update_every_steps=1",
]

#: Metrics that measure wall-clock time (differ between otherwise identical runs).
TIMING_PREFIXES = ("time/", "perf/")


def train_body(overrides: list[str], run_dir: str, ray_address: str) -> None:
    """One rank of ``uniapl train`` with ``overrides`` into ``run_dir``."""
    from uniapl_mcore.config import load_config
    from uniapl_mcore.log import setup_logging
    from uniapl_mcore.runtime.dist_env import DistEnv
    from uniapl_mcore.trainer.config import UniaplConfig
    from uniapl_mcore.trainer.loop import run_training

    setup_logging(DistEnv.from_environ().rank)
    cfg = load_config(None, [*overrides, f"ray_address={ray_address}"], cls=UniaplConfig)
    run_training(cfg, run_dir)


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text()
            .splitlines()]


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without the wall-clock metrics."""
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in records]


def all_finite(record: dict[str, Any]) -> bool:
    return all(v is None or not isinstance(v, float) or math.isfinite(v)
               for v in record.values())
