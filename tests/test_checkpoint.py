"""Training-state checkpoints: save at TP=2, resume at PP=2 and at one process, same losses
(the production policy update, ``tests/_bodies.train_losses``)."""

from __future__ import annotations

import shutil

import pytest

from uniapl_mcore.megatron.checkpointing import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    step_dir_name,
)
from uniapl_mcore.testing import DistributedRunError, run_distributed

from ._bodies import save_initial_weights, train_losses

BASE = ["optimizer.lr_decay_steps=4", "optimizer.warmup_steps=1", "optimizer.weight_decay=0.01",
        "checkpoint.save_at_end=true"]
RTOL = 1e-5


@pytest.mark.slow
def test_save_at_tp2_resume_at_pp2_and_one_process(tmp_path):
    init = run_distributed(save_initial_weights, 1, args=(BASE, str(tmp_path / "init")))[0]
    ref = run_distributed(train_losses, 1, args=(BASE + ["train.max_steps=4"],),
                          kwargs={"init_from": init})[0]

    saved_run = tmp_path / "tp2"
    first = run_distributed(train_losses, 2, args=(BASE + ["train.max_steps=2",
                                                           "parallel.tensor_parallel_size=2"],
                                                   str(saved_run)), kwargs={"init_from": init})[0]
    assert [s for s, *_ in first] == [1, 2]
    assert latest_checkpoint(saved_run / "checkpoints").name == step_dir_name(2)

    for name, world, layout in (("pp2", 2, ["parallel.pipeline_parallel_size=2"]),
                                ("one", 1, [])):
        run_dir = tmp_path / name
        shutil.copytree(saved_run, run_dir)
        resumed = run_distributed(train_losses, world,
                                  args=(BASE + ["train.max_steps=4"] + layout, str(run_dir)),
                                  kwargs={"init_from": init})[0]  # π_ref: the initial weights
        assert [s for s, *_ in resumed] == [3, 4], name  # resumed after step 2, not from 0
        for (step, loss, norm), (_, ref_loss, ref_norm) in zip(resumed, ref[2:], strict=True):
            assert abs(loss - ref_loss) <= RTOL * abs(ref_loss), (name, step, loss, ref_loss)
            assert abs(norm - ref_norm) <= RTOL * abs(ref_norm), (name, step, norm, ref_norm)
        assert latest_checkpoint(run_dir / "checkpoints").name == step_dir_name(4)


def _fake_checkpoint(root, step):
    path = root / step_dir_name(step)
    path.mkdir(parents=True)
    (path / "metadata.json").write_text("{}")
    return path


def test_interrupted_save_is_invisible(tmp_path):
    root = tmp_path / "checkpoints"
    done = _fake_checkpoint(root, 2)
    (root / "latest").write_text(done.name + "\n")
    (root / f".tmp.{step_dir_name(4)}").mkdir()  # a save that died before its rename
    assert latest_checkpoint(root) == done
    assert [s for s, _ in list_checkpoints(root)] == [2]


def test_prune_keeps_newest_and_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _fake_checkpoint(root, step)
    (root / "latest").write_text(step_dir_name(4))
    prune_checkpoints(root, keep_last=2)
    assert [s for s, _ in list_checkpoints(root)] == [3, 4]


def test_bad_pointers_and_directories_name_the_path(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    assert latest_checkpoint(root) is None
    (root / "latest").write_text("step_000009\n")
    with pytest.raises(FileNotFoundError, match=r"latest names 'step_000009', which is not"):
        latest_checkpoint(root)
    with pytest.raises(FileNotFoundError, match=r"not a dist_checkpointing checkpoint"):
        load_checkpoint(tmp_path, trainable=None)  # type: ignore[arg-type]


def test_checkpoint_of_another_shape_is_one_clear_error(tmp_path):
    init = run_distributed(save_initial_weights, 1, args=([], str(tmp_path / "init")))[0]
    with pytest.raises(DistributedRunError) as info:  # the child's failure, re-raised
        run_distributed(train_losses, 1, args=(["model.ffn_hidden_size=64",
                                                 "train.max_steps=1"],),
                        kwargs={"init_from": init})
    message = str(info.value)
    assert "CheckpointError" in message and "does not fit this model" in message
    assert "decoder.layers.mlp.linear_fc1.weight" in message and init in message
