"""``mcore-to-hf`` on a training run's checkpoints: the ``latest`` pointer in a path, and one
line saying what to do for the wrong directory or a checkpoint from before ``hf/``."""

from __future__ import annotations

import pytest

from uniapl_mcore.checkpoint.convert import mcore_to_hf
from uniapl_mcore.checkpoint.convert_cli import main as convert_main
from uniapl_mcore.checkpoint.hf_io import CheckpointError
from uniapl_mcore.checkpoint.paths import resolve_latest


def _run(tmp_path, *, side_files: bool = True):
    """A run directory whose step 3 holds a (weightless) policy checkpoint without hf/."""
    run = tmp_path / "run"
    policy = run / "checkpoints" / "step_000003" / "policy"
    policy.mkdir(parents=True)
    (policy / "metadata.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step_000003\n")
    if side_files:
        (run / "policy_hf").mkdir()
        (run / "policy_hf" / "config.json").write_text("{}")
    return run


def test_latest_pointer_resolves_inside_a_path(tmp_path):
    run = _run(tmp_path)
    step = run / "checkpoints" / "step_000003"
    assert resolve_latest(run / "checkpoints" / "latest" / "policy") == step / "policy"
    assert resolve_latest(run / "checkpoints" / "latest") == step
    assert resolve_latest(step / "policy") == step / "policy"
    assert resolve_latest(tmp_path / "nope" / "latest") == tmp_path / "nope" / "latest"


def test_latest_naming_a_missing_checkpoint_is_one_line(tmp_path):
    run = _run(tmp_path)
    (run / "checkpoints" / "latest").write_text("step_000009\n")
    with pytest.raises(CheckpointError, match=r"latest names 'step_000009', which is not a "
                                              r"checkpoint directory$"):
        resolve_latest(run / "checkpoints" / "latest" / "policy")


def test_checkpoint_without_hf_side_dir_says_what_to_copy(tmp_path):
    run = _run(tmp_path)
    policy = run / "checkpoints" / "step_000003" / "policy"
    with pytest.raises(CheckpointError) as err:
        mcore_to_hf(run / "checkpoints" / "latest" / "policy", tmp_path / "out")
    assert str(err.value) == (f"{policy}: no hf/config.json (saved before training "
                              f"checkpoints carried it): copy {run / 'policy_hf'}/* into "
                              f"{policy / 'hf'}/ and convert again")
    assert not (tmp_path / "out").exists()


def test_checkpoint_without_policy_hf_names_the_run_dir_placeholder(tmp_path):
    run = _run(tmp_path, side_files=False)
    with pytest.raises(CheckpointError, match=r"copy <run-dir>/policy_hf/\* into "):
        mcore_to_hf(run / "checkpoints" / "step_000003" / "policy", tmp_path / "out")


def test_step_directory_points_at_its_policy(tmp_path, capsys):
    run = _run(tmp_path)
    step = run / "checkpoints" / "step_000003"
    assert convert_main(["mcore-to-hf", "--mcore", str(run / "checkpoints" / "latest"),
                         "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"convert_checkpoint: error: {step}: a training checkpoint, not a model; "
                   f"convert its policy: {step / 'policy'}\n")
