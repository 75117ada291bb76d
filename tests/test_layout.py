"""The data-parallel arithmetic of :class:`ParallelConfig` (what ``init_parallel`` checks
Megatron's groups against and the dry-run planner sizes a job with)."""

from __future__ import annotations

import pytest

from uniapl_mcore.config import ConfigError
from uniapl_mcore.runtime.layout import ParallelConfig


@pytest.mark.parametrize(("world", "sizes", "dp", "etp", "expert_dp"), [
    (1, {}, 1, 1, 1),
    (8, {}, 8, 1, 8),                                             # pure data parallelism
    (8, {"tensor_parallel_size": 2}, 4, 2, 4),                    # dense: expert-DP = DP
    (16, {"tensor_parallel_size": 2, "pipeline_parallel_size": 2,
          "expert_parallel_size": 2}, 4, 2, 2),                   # 2·1·4 / (2·2)
    (16, {"context_parallel_size": 2, "expert_parallel_size": 4}, 8, 1, 4),  # 1·2·8 / (1·4)
    (128, {"tensor_parallel_size": 8, "pipeline_parallel_size": 2,
           "expert_parallel_size": 8}, 8, 8, 1),                  # the Qwen3-235B example
    (256, {"tensor_parallel_size": 8, "pipeline_parallel_size": 4,
           "expert_parallel_size": 4}, 8, 8, 2),
])
def test_data_parallel_sizes(world, sizes, dp, etp, expert_dp):
    par = ParallelConfig(**sizes)
    par.check_world_size(world)
    assert par.data_parallel_size(world) == dp
    assert par.expert_tensor_parallel_size == etp
    assert par.expert_data_parallel_size(world) == expert_dp
    # every rank is in one (TP · CP · DP) block per stage, split into ETP · EP · expert-DP
    assert etp * par.expert_parallel_size * expert_dp == \
        par.tensor_parallel_size * par.context_parallel_size * dp


def test_world_size_errors_name_the_derived_sizes():
    with pytest.raises(ConfigError, match=r"^parallel: world size 12 is not divisible by .* = 8$"):
        ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=4).check_world_size(12)
    with pytest.raises(ConfigError, match="^parallel.expert_parallel_size: 4 must divide the "
                                          "data-parallel size 2$"):
        ParallelConfig(tensor_parallel_size=4, expert_parallel_size=4).check_world_size(8)
