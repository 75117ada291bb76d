"""Rollout test fixtures (the Ray cluster fixture lives in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """A tiny fp32 Qwen3 HF directory (random weights)."""
    from tests.checkpoint.hf_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("rollout") / "hf", "qwen3")


@pytest.fixture(scope="session")
def tiny_hf32(tmp_path_factory):
    """A tiny fp32 Qwen3 HF directory with head_dim 32 (a size vLLM's CPU kernels have)."""
    from tests.checkpoint.hf_models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("rollout32") / "hf", "qwen3", head_dim=32)
