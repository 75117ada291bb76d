"""Uneven pipeline stages: ``parallel.first_stage_layers`` / ``last_stage_layers``, the
automatic balanced split, one-line errors, and agreement with Megatron's own layer
placement (``get_transformer_layer_offset`` / ``get_num_layers_to_build``)."""

from __future__ import annotations

import pytest

from tests._megatron_config import load_run
from uniapl_mcore.config import ConfigError
from uniapl_mcore.megatron.config import check_layout
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers, stage_layer_range


def _split(layers: int, pp: int, first: int | None = None,
           last: int | None = None) -> tuple[int, ...]:
    parallel = ParallelConfig(pipeline_parallel_size=pp, first_stage_layers=first,
                              last_stage_layers=last)
    return pipeline_stage_layers(layers, parallel)


@pytest.mark.parametrize(("layers", "pp", "first", "last", "expected"), [
    (4, 2, None, None, (2, 2)),                     # even: Megatron's default split
    (3, 2, None, None, (1, 2)),                     # automatic: odd layer to the last stage
    (5, 4, None, None, (1, 1, 1, 2)),
    (94, 4, None, None, (23, 24, 24, 23)),          # Qwen3-235B-A22B
    (94, 8, None, None, (11, 12, 12, 12, 12, 12, 12, 11)),
    (10, 3, None, None, (3, 4, 3)),
    (4, 2, 1, None, (1, 3)),                        # the free stage takes the rest
    (10, 4, 1, None, (1, 3, 3, 3)),
    (10, 4, None, 4, (2, 2, 2, 4)),
    (10, 4, 2, 4, (2, 2, 2, 4)),
])
def test_stage_layers(layers, pp, first, last, expected):
    counts = _split(layers, pp, first, last)
    assert counts == expected
    ranges = [stage_layer_range(layers, ParallelConfig(pipeline_parallel_size=pp,
                                                       first_stage_layers=first,
                                                       last_stage_layers=last), r)
              for r in range(pp)]
    assert [i for r in ranges for i in r] == list(range(layers))  # contiguous, in order


def test_balanced_split_minimises_the_largest_stage():
    for layers in range(2, 40):
        for pp in range(2, layers + 1):
            counts = _split(layers, pp)
            assert sum(counts) == layers and min(counts) >= 1
            assert len(set(counts[1:-1])) <= 1  # Megatron: equal middle stages
            if layers % pp:
                best = max(counts)
                # no split with equal middle stages has a smaller largest stage
                for middle in range(1, layers):
                    ends = layers - (pp - 2) * middle
                    if pp > 2 and ends >= 2:
                        assert max(middle, -(-ends // 2)) >= best


@pytest.mark.parametrize(("overrides", "expected"), [
    (["parallel.pipeline_parallel_size=4", "model.num_layers=3"],
     "parallel.pipeline_parallel_size: 4 stages need at least one layer each, "
     "model.num_layers=3"),
    (["parallel.first_stage_layers=1"],
     "parallel.first_stage_layers: needs pipeline_parallel_size > 1 (one stage holds every "
     "layer)"),
    (["parallel.pipeline_parallel_size=2", "parallel.last_stage_layers=0"],
     "parallel.last_stage_layers: must be >= 1 when set, got 0"),
    (["parallel.pipeline_parallel_size=2", "model.num_layers=3",
      "parallel.first_stage_layers=2", "parallel.last_stage_layers=2"],
     "parallel.first_stage_layers: first_stage_layers=2 + last_stage_layers=2 must equal "
     "model.num_layers=3 (pipeline_parallel_size=2: no other stage)"),
    (["parallel.pipeline_parallel_size=2", "model.num_layers=3",
      "parallel.first_stage_layers=3"],
     "parallel.first_stage_layers: first_stage_layers=3 leaves 0 of model.num_layers=3 layers "
     "for the other 1 stage(s), which need an equal count >= 1 each (leave both null for a "
     "balanced split)"),
    (["parallel.pipeline_parallel_size=4", "model.num_layers=10",
      "parallel.last_stage_layers=3"],
     "parallel.last_stage_layers: last_stage_layers=3 leaves 7 of model.num_layers=10 layers "
     "for the other 3 stage(s), which need an equal count >= 1 each (leave both null for a "
     "balanced split)"),
    (["parallel.pipeline_parallel_size=2", "model.num_layers=3",
      "model.recompute.granularity=full", "model.recompute.num_layers=2"],
     "model.recompute.num_layers: 2 exceeds the 1 layers of the smallest pipeline stage"),
])
def test_impossible_splits_fail_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_run(None, overrides)
    assert str(info.value) == expected


def test_yaml_keys_and_megatron_kwargs():
    from uniapl_mcore.models.gpt import transformer_config

    cfg = load_run(None, ["model.num_layers=4", "parallel.pipeline_parallel_size=2",
                             "parallel.first_stage_layers=1"])
    tc = transformer_config(cfg.model, cfg.parallel)
    assert (tc.num_layers_in_first_pipeline_stage, tc.num_layers_in_last_pipeline_stage) == (1, 3)
    even = load_run(None, ["model.num_layers=4", "parallel.pipeline_parallel_size=2"])
    tc = transformer_config(even.model, even.parallel)
    assert tc.num_layers_in_first_pipeline_stage is tc.num_layers_in_last_pipeline_stage is None


@pytest.mark.parametrize(("layers", "pp", "first", "last"), [
    (3, 2, None, None), (5, 4, None, None), (94, 4, None, None), (94, 8, None, None),
    (10, 4, 1, None), (10, 4, None, 1), (10, 4, 2, 4), (8, 2, None, None), (7, 3, 3, None)])
def test_megatron_places_the_same_layers(layers, pp, first, last):
    """Megatron's layer offset and layer count per stage (which its sharded state dict and
    layer numbers use) equal :func:`stage_layer_range`."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from uniapl_mcore.models.gpt import transformer_config

    parallel = ParallelConfig(pipeline_parallel_size=pp, first_stage_layers=first,
                              last_stage_layers=last)
    model = ModelConfig(num_layers=layers)
    check_layout(model, parallel)
    tc = transformer_config(model, parallel)
    for rank in range(pp):
        offset = get_transformer_layer_offset(tc, pp_rank=rank)
        count = get_num_layers_to_build(tc, pp_rank=rank)
        assert range(offset, offset + count) == stage_layer_range(layers, parallel, rank)
