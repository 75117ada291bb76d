"""The parallel section of a run and its arithmetic: sizes of every parallel dimension for a
world size, and the pipeline split (transformer layers per stage).

Pure arithmetic on :class:`ParallelConfig`: :func:`uniapl_mcore.runtime.parallel.init_parallel`
builds the process groups from it, and the dry-run planner sizes a job with the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from uniapl_mcore.config import check


@dataclass
class ParallelConfig:
    """Parallel layout. The data-parallel sizes are derived from the world size
    (:meth:`data_parallel_size`, :meth:`expert_data_parallel_size`).

    Megatron DDP communication (GPU fast path; off by default):

    - ``overlap_grad_reduce``: reduce each bucket of gradients (all-reduce, or reduce-scatter
      with the distributed optimizer) as soon as backward has produced it, overlapping the
      rest of the backward pass;
    - ``overlap_param_gather``: the distributed optimizer's parameter all-gather is left
      pending after the optimizer step and finished bucket by bucket in the next forward
      pass (needs ``overlap_grad_reduce`` and ``optimizer.use_distributed_optimizer``);
    - ``ddp_bucket_size``: parameters per bucket (None: Megatron's max(40 M, 1 M × DP)).

    Pipeline split (transformer layers per stage; :func:`pipeline_stage_layers`):
    ``first_stage_layers`` / ``last_stage_layers`` fix the layers of the first / last stage
    (Megatron's ``num_layers_in_{first,last}_pipeline_stage``); the stages not fixed share the
    rest equally. Both None: an even split when ``pipeline_parallel_size`` divides the layers,
    else a balanced one chosen automatically.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    context_parallel_size: int = 1
    expert_parallel_size: int = 1
    sequence_parallel: bool = False
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False
    ddp_bucket_size: int | None = None
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

    def __post_init__(self) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "context_parallel_size",
                     "expert_parallel_size"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(not self.sequence_parallel or self.tensor_parallel_size > 1, "sequence_parallel",
              "needs tensor_parallel_size > 1")
        check(not self.overlap_param_gather or self.overlap_grad_reduce, "overlap_param_gather",
              "needs overlap_grad_reduce (Megatron overlaps the gather only together with the "
              "gradient reduce)")
        check(self.ddp_bucket_size is None or self.ddp_bucket_size > 0, "ddp_bucket_size",
              f"must be > 0 when set, got {self.ddp_bucket_size}")
        for name in ("first_stage_layers", "last_stage_layers"):
            value = getattr(self, name)
            check(value is None or value >= 1, name, f"must be >= 1 when set, got {value}")
            check(value is None or self.pipeline_parallel_size > 1, name,
                  "needs pipeline_parallel_size > 1 (one stage holds every layer)")

    @property
    def model_parallel_size(self) -> int:
        """Ranks that hold one model replica: tp · pp · cp."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.context_parallel_size

    def data_parallel_size(self, world_size: int) -> int:
        """Model replicas on ``world_size`` ranks: world / (tp · pp · cp), in ranks (floored;
        :meth:`check_world_size` refuses a world size it does not divide). Megatron's
        ``get_data_parallel_world_size()``; CP ranks are not counted (the distributed
        optimizer shards dense state over DP · CP)."""
        return world_size // self.model_parallel_size

    @property
    def expert_tensor_parallel_size(self) -> int:
        """TP size of the expert weights as built: :func:`uniapl_mcore.runtime.parallel.
        init_parallel` leaves Megatron's ``expert_tensor_parallel_size`` unset, whose default
        is the dense TP size, so experts are split over TP like the dense MLP."""
        return self.tensor_parallel_size

    def expert_data_parallel_size(self, world_size: int) -> int:
        """Ranks on ``world_size`` that hold the same expert shard (the group the distributed
        optimizer shards expert state over): TP · CP · DP / (ETP · EP), in ranks. With ETP =
        TP this is CP · DP / EP; for a dense model (EP 1) it is the dense DP · CP group.
        World 16, TP 2, PP 2, EP 2 → DP 4, expert-DP 2 · 1 · 4 / (2 · 2) = 2."""
        dp = self.data_parallel_size(world_size)
        return self.tensor_parallel_size * self.context_parallel_size * dp // \
            (self.expert_tensor_parallel_size * self.expert_parallel_size)

    def check_world_size(self, world_size: int) -> None:
        """Fail with one line when ``world_size`` cannot host this layout."""
        mp = self.model_parallel_size
        check(world_size % mp == 0, "parallel",
              f"world size {world_size} is not divisible by tensor_parallel_size × "
              f"pipeline_parallel_size × context_parallel_size = {mp}")
        dp = self.data_parallel_size(world_size)
        check(dp % self.expert_parallel_size == 0 or self.expert_parallel_size == 1,
              "parallel.expert_parallel_size",
              f"{self.expert_parallel_size} must divide the data-parallel size {dp}")


def pipeline_stage_layers(num_layers: int, parallel: ParallelConfig,
                          layers_field: str = "model.num_layers") -> tuple[int, ...]:
    """Transformer layers on each pipeline stage, first to last: ``pipeline_parallel_size``
    counts summing to ``num_layers``, as Megatron builds them.

    ``parallel.first_stage_layers`` / ``last_stage_layers`` fix the end stages and the other
    stages share the remaining layers equally (Megatron's rule). With neither set: an even
    split when the stage count divides ``num_layers``, else :func:`balanced_stage_layers`.

    Raises:
        ConfigError: no split realises the layout; the field is relative to the parallel
            section (``first_stage_layers`` …); ``layers_field`` names the layer count in the
            message.
    """
    pp = parallel.pipeline_parallel_size
    check(num_layers >= pp, "pipeline_parallel_size",
          f"{pp} stages need at least one layer each, {layers_field}={num_layers}")
    first, last = parallel.first_stage_layers, parallel.last_stage_layers
    if first is None and last is None:
        return (num_layers // pp,) * pp if num_layers % pp == 0 else \
            balanced_stage_layers(num_layers, pp)
    fixed = {name: value for name, value in (("first_stage_layers", first),
                                             ("last_stage_layers", last)) if value is not None}
    free, rest = pp - len(fixed), num_layers - sum(fixed.values())
    field_name = next(iter(fixed))
    setting = " + ".join(f"{name}={value}" for name, value in fixed.items())
    if free == 0:
        check(rest == 0, field_name, f"{setting} must equal {layers_field}={num_layers} "
                                     f"(pipeline_parallel_size={pp}: no other stage)")
    else:
        check(rest >= free and rest % free == 0, field_name,
              f"{setting} leaves {rest} of {layers_field}={num_layers} layers for the other "
              f"{free} stage(s), which need an equal count >= 1 each (leave both null for a "
              "balanced split)")
    counts = [rest // free if free else 0] * pp
    counts[0] = first if first is not None else counts[0]
    counts[-1] = last if last is not None else counts[-1]
    return tuple(counts)


def balanced_stage_layers(num_layers: int, stages: int) -> tuple[int, ...]:
    """An uneven split of ``num_layers`` over ``stages`` (2 ≤ stages ≤ num_layers) that
    Megatron can build: equal middle stages, first and last stage free.

    Picks the split whose largest stage is smallest; among those, the one with the lighter
    end stages (under 1F1B the first stage keeps the most micro-batches in flight, the last
    one holds the logits), and an odd remainder goes to the last stage. 94 layers: PP 4 →
    (23, 24, 24, 23), PP 8 → (11, 12 × 6, 11); 5 layers at PP 4 → (1, 1, 1, 2).
    """
    if stages == 2:
        return (num_layers // 2, num_layers - num_layers // 2)
    options = []
    for middle in range(1, num_layers):
        ends = num_layers - (stages - 2) * middle
        if ends < 2:
            break
        options.append(((max(middle, -(-ends // 2)), -middle), middle, ends))
    _, middle, ends = min(options)
    return (ends // 2, *(middle,) * (stages - 2), ends - ends // 2)


def stage_layer_range(num_layers: int, parallel: ParallelConfig, pp_rank: int) -> range:
    """Global indices of the transformer layers on pipeline stage ``pp_rank`` (local layer
    ``i`` of that stage is global layer ``range[i]``; HF names use the global index)."""
    counts = pipeline_stage_layers(num_layers, parallel)
    start = sum(counts[:pp_rank])
    return range(start, start + counts[pp_rank])
