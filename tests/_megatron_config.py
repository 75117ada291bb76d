"""A tiny Megatron run config for the model / layout unit tests: the policy's sections alone
(model, parallel, optimizer, train), with the defaults of each section (a 2-layer, width-64
model) and the Megatron layer's cross-section checks, without the trainer's other sections.

The trainer's own config (:class:`~uniapl_mcore.trainer.config.UniaplConfig`) composes the
same sections; tests of the training step use that one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from uniapl_mcore.config import load_config
from uniapl_mcore.megatron.config import OptimizerConfig, check_fast_path, check_layout
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig
from uniapl_mcore.trainer.config import TrainConfig


@dataclass
class MegatronRun:
    """model + parallel + optimizer + train, checked as Megatron will build them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_layout(self.model, self.parallel)
        check_fast_path(self.model, self.parallel, self.optimizer)

    def check_world_size(self, world_size: int) -> None:
        self.parallel.check_world_size(world_size)


def load_run(path: str | Path | None = None, overrides: list[str] | None = None) -> MegatronRun:
    """:func:`~uniapl_mcore.config.load_config` of a :class:`MegatronRun`."""
    return load_config(path, overrides, cls=MegatronRun)
