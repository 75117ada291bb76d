"""Rollout: engine protocol, torch and vLLM engines, the Ray engine pool, weight sync from
Megatron, and whole-batch rollout/trainer log-prob mismatch figures."""

from uniapl_mcore.rollout.config import (
    RolloutConfig,
    SamplingConfig,
    VllmConfig,
    WeightSyncConfig,
)
from uniapl_mcore.rollout.engine import NO_WEIGHTS, RolloutEngine, update_weights
from uniapl_mcore.rollout.mismatch import mismatch_metrics, pad_logprobs
from uniapl_mcore.rollout.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    StaleWeightsError,
)

__all__ = [
    "NO_WEIGHTS", "GenerationRequest", "GenerationResult", "RolloutConfig",
    "RolloutEngine", "Sample", "SamplingConfig", "SamplingParams", "StaleWeightsError",
    "VllmConfig", "WeightSyncConfig", "mismatch_metrics", "pad_logprobs",
    "update_weights",
]
