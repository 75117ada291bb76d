"""MetricsLog (metrics.jsonl / TensorBoard / progress bar), read_metrics, plot_reward_curve."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from uniapl_mcore.config import ConfigError
from uniapl_mcore.trainer.config import LoggingConfig
from uniapl_mcore.trainer.metrics_log import (
    MetricsLog,
    moving_average,
    plot_reward_curve,
    read_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUIET = LoggingConfig(progress_bar="off", tensorboard=False)


def _record(step: int) -> dict:
    return {"step": step, "train/loss": 1.0 / step, "rollout/reward_mean": step / 10,
            "perf/step_s": 0.5, "note": f"s{step}"}


def _run(run_dir: Path, steps: range, resume_step: int = 0,
         cfg: LoggingConfig = QUIET) -> None:
    with MetricsLog(run_dir, cfg, total_steps=10, enabled=True) as log:
        log.open(resume_step)
        for step in steps:
            log.log(_record(step))


def test_resume_drops_later_steps_and_torn_line(tmp_path: Path) -> None:
    reference, run = tmp_path / "reference", tmp_path / "run"
    _run(reference, range(1, 6))
    _run(run, range(1, 6))
    metrics = run / "metrics.jsonl"
    first_three = b"".join(metrics.read_bytes().splitlines(keepends=True)[:3])
    with open(metrics, "ab") as f:
        f.write(b'{"step": 6, "train/lo')  # killed mid-write
    with MetricsLog(run, QUIET, total_steps=10, enabled=True) as log:
        log.open(resume_step=3)
        assert metrics.read_bytes() == first_three  # kept lines byte-identical
        for step in range(4, 6):
            log.log(_record(step))
    assert metrics.read_bytes() == (reference / "metrics.jsonl").read_bytes()
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4, 5]
    assert not list(run.glob(".metrics.jsonl.tmp*"))


def test_resume_without_changes_keeps_file(tmp_path: Path) -> None:
    _run(tmp_path, range(1, 4))
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with MetricsLog(tmp_path, QUIET, total_steps=10, enabled=True) as log:
        log.open(resume_step=7)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_non_finite_written_as_null_and_key_order(tmp_path: Path) -> None:
    with MetricsLog(tmp_path, QUIET, total_steps=3, enabled=True) as log:
        log.open(0)
        log.log({"step": 1, "train/loss": float("nan"), "perf/x": float("inf"),
                 "eval/reward_strict": np.float32(0.25), "flag": True, "n": np.int64(3)})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert text == ('{"step": 1, "train/loss": null, "perf/x": null, '
                    '"eval/reward_strict": 0.25, "flag": true, "n": 3}\n')


def test_bad_records_raise(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, QUIET, total_steps=3, enabled=True)
    with pytest.raises(RuntimeError, match="before open"):
        log.log({"step": 1})
    log.open(0)
    with pytest.raises(ValueError, match="integer 'step'"):
        log.log({"train/loss": 1.0})
    with pytest.raises(TypeError, match="record.obj"):
        log.log({"step": 1, "obj": object()})
    log.close()


def test_tensorboard_event_file(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = LoggingConfig(progress_bar="off", tensorboard=True)
    _run(tmp_path, range(1, 4), cfg=cfg)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"] and "note" not in acc.Tags()["scalars"]
    values = [(e.step, e.value) for e in acc.Scalars("rollout/reward_mean")]
    assert [s for s, _ in values] == [1, 2, 3]
    assert values[2][1] == pytest.approx(0.3)


def test_disabled_is_a_no_op(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = LoggingConfig(progress_bar="on", tensorboard=True, wandb_project="p")
    with MetricsLog(run, cfg, total_steps=10, enabled=False) as log:
        log.open(0)
        log.log(_record(1))
        log.write_console("hello")
    assert not run.exists()


def test_progress_bar_off_logs_console(tmp_path: Path, caplog, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="uniapl_mcore.trainer.metrics_log"):
        with MetricsLog(tmp_path, QUIET, total_steps=10, enabled=True) as log:
            log.open(0)
            log.log(_record(1))
            log.write_console("eval done")
    assert "eval done" in caplog.text
    assert capsys.readouterr().err == ""


def test_progress_bar_on(tmp_path: Path, capsys) -> None:
    cfg = LoggingConfig(progress_bar="on", tensorboard=False)
    with MetricsLog(tmp_path, cfg, total_steps=10, enabled=True) as log:
        log.open(resume_step=2)
        log.log(_record(3))
        log.log({"step": 3, "eval/reward_strict": 0.5})
        log.write_console("a message")
        log.log(_record(5))
    err = capsys.readouterr().err
    assert "5/10" in err and "a message" in err
    assert "loss=0.2" in err and "reward=0.5" in err and "eval=0.5" in err


def test_wandb_missing_is_a_config_error(tmp_path: Path) -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed")
    cfg = LoggingConfig(progress_bar="off", tensorboard=False, wandb_project="proj")
    log = MetricsLog(tmp_path, cfg, total_steps=10, enabled=True)
    with pytest.raises(ConfigError, match="pip install wandb.*logging.wandb_project"):
        log.open(0)
    log.close()


def test_read_metrics_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2,,}\n{"step": 3}\n{"step": 4, "x"')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "x"')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_moving_average() -> None:
    assert moving_average([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([], window=10) == []


def test_plot_reward_curve(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(1, 13):
        lines.append({"step": step, "train/loss": 1.0, "rollout/reward_mean": step / 20})
        if step % 5 == 0:
            lines.append({"step": step, "eval/reward_strict": step / 20,
                          "eval/reward_partial": step / 15})
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "plots" / "reward.png"
    points = plot_reward_curve(metrics, out)
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert points["eval_steps"] == [5, 10]
    assert points["reward_strict"] == [0.25, 0.5]
    assert points["reward_partial"] == pytest.approx([1 / 3, 2 / 3])
    assert points["train_key"] == "rollout/reward_mean"
    assert points["train_steps"] == list(range(1, 13))
    assert points["train_reward"] == pytest.approx([s / 20 for s in range(1, 13)])
    # window 10: the last point averages steps 3..12
    assert points["train_reward_smoothed"][-1] == pytest.approx(sum(range(3, 13)) / 200)
    assert not list(out.parent.glob(".*tmp*"))


def test_plot_reward_curve_falls_back_and_empty(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "pref/reward_mean": 0.4}\n{"step": 2, "pref/reward_mean": '
                       'null}\n')
    points = plot_reward_curve(metrics, tmp_path / "a.png")
    assert points["train_key"] == "pref/reward_mean" and points["train_reward"] == [0.4]
    metrics.write_text('{"step": 1, "train/loss": 2.0}\n')
    points = plot_reward_curve(metrics, tmp_path / "b.png")
    assert points["eval_steps"] == [] and points["train_steps"] == []
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC
