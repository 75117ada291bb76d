"""RNG states saved as safetensors + JSON restore every generator exactly; the older pickle
files load only through ``torch.load(weights_only=True)``; anything else is one line."""

from __future__ import annotations

import random
import subprocess

import numpy as np
import pytest
import torch

from uniapl_mcore.checkpoint.hf_io import CheckpointError
from uniapl_mcore.trainer.rng_state import (
    legacy_rng_file,
    read_rng_state,
    rng_file,
    rng_state,
    save_rng_state,
    set_rng_state,
)


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.standard_normal(), torch.rand(3).tolist())


def _restores_exactly(save, load) -> None:
    """``save()`` with every generator mid-stream (cached gaussians included), draw, then
    ``load()``: the same draws again."""
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # and in NumPy's
    save()
    expected = _draws()
    load()
    assert _draws() == expected


def test_safetensors_round_trip_restores_every_generator(tmp_path):
    _restores_exactly(lambda: save_rng_state(rng_file(tmp_path, 0)),
                      lambda: set_rng_state(read_rng_state(tmp_path, 0)))
    assert not legacy_rng_file(tmp_path, 0).exists()


def test_legacy_pickle_loads_with_weights_only(tmp_path):
    # the format before safetensors: torch.save of the generators' own states
    _restores_exactly(lambda: torch.save(rng_state(), legacy_rng_file(tmp_path, 1)),
                      lambda: set_rng_state(read_rng_state(tmp_path, 1)))


def test_legacy_pickle_with_other_objects_is_refused(tmp_path):
    path = legacy_rng_file(tmp_path, 0)
    torch.save({**rng_state(), "hook": subprocess.Popen}, path)
    with pytest.raises(CheckpointError) as err:
        read_rng_state(tmp_path, 0)
    message = str(err.value)
    assert message.startswith(f"{path}: refused to load this RNG state")
    assert "\n" not in message
    assert "GLOBAL" in message and "Popen" in message


def test_damaged_file_is_one_line(tmp_path):
    rng_file(tmp_path, 0).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=r"rank_00000.safetensors: damaged RNG state"):
        read_rng_state(tmp_path, 0)


def test_missing_file_is_none(tmp_path):
    assert read_rng_state(tmp_path, 3) is None
