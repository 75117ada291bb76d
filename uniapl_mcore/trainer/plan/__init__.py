"""Dry run of a training config: the parallel layout it implies, a per-GPU memory estimate
and the cost of a weight sync.

``uniapl train --config X --dry-run`` prints :func:`dry_run`. Nothing here imports torch or
Megatron or touches a device: everything is arithmetic on the config, returned as frozen
dataclasses (bytes, GiB = 2**30 bytes, GB = 10**9 bytes and seconds, as each field says).

- :mod:`.params`: parameter counts per rank (:func:`stage_parameters`) and of the whole
  model (:func:`count_parameters`);
- :mod:`.layout`: :func:`plan_layout` → :class:`Layout`: the trainer's data-parallel and
  expert-data-parallel sizes (:class:`~uniapl_mcore.runtime.layout.ParallelConfig`'s
  arithmetic, which ``init_parallel`` checks Megatron's groups against), the pipeline split,
  the rollouts and micro-batches per step, and where the discriminator, the reference model
  and the rollout engines go; it raises :class:`ConfigError` with a one-line reason when
  ``world_size`` GPUs cannot host that layout;
- :mod:`.memory`: :func:`estimate_memory` → :class:`MemoryEstimate`, the memory of one GPU
  itemised in two phases:

  - **training**: the policy's parameters, fp32 gradient buffers and optimizer state, the
    activations of the micro-batches in flight, the logits working set, the frozen
    reference and discriminator, the (asleep or awake) colocated rollout engine, CUDA
    overhead;
  - **generation**: colocated engines awake, while the trainer's parameters, gradient
    buffers and optimizer state stay on the GPU (this backend offloads none of them) and no
    activations are alive;
- :mod:`.sync`: :func:`sync_estimate` → :class:`SyncEstimate`, one weight sync;
- :mod:`.report`: :func:`dry_run` and :func:`format_report`, the text.

Assumptions (each is a documented constant or formula):

- parameters are counted exactly from :class:`ModelConfig` as Megatron builds them
  (:func:`count_parameters`, checked against real models by the tests);
- Megatron mixed precision: params in ``params_dtype``, gradients reduced into fp32 DDP
  buffers (``grad_reduce_in_fp32=True``, never sharded), Adam m and v in fp32 plus an fp32
  master copy when params are bf16/fp16 — sharded over the data-parallel group (dense
  params, CP included) or the expert-data-parallel group (expert params) when
  ``optimizer.use_distributed_optimizer``;
- experts are split over TP like the dense MLP: :func:`uniapl_mcore.runtime.parallel.
  init_parallel` leaves Megatron's ``expert_tensor_parallel_size`` at its default (= TP),
  and the parallel state, not ``TransformerConfig``, decides the expert shards. So
  expert-data-parallel = CP·DP / EP (``ParallelConfig.expert_tensor_parallel_size`` and
  ``expert_data_parallel_size``);
- activations: flash attention (no s² term), no dropout — the per-tensor accounting of
  Korthikanti et al. 2022 (§4.1) redone for GQA, qk-norm, SwiGLU and top-k MoE
  (:func:`activation_bytes_per_token`), less what ``model.recompute`` drops
  (:func:`kept_activation_bytes`); 1F1B keeps ``min(PP - stage, micro-batches)``
  micro-batches in flight; FP8 is not modelled (its FP8 copies of GEMM inputs make the
  estimate for an FP8 run slightly high, its weight caches slightly low);
- the last stage holds one micro-batch's logits in fp32 for the backward pass plus their
  fp32 gradient (8 bytes per element of ``tokens × vocab/TP``), and the chunked log-prob
  code's working set (3 fp32 ``chunk × vocab/TP`` buffers);
- the discriminator is one replica of TP·PP Ray actors (its own processes) on the
  trainer's GPUs: the worst GPU holds one shard of it plus that actor's CUDA context;
  offloaded, it takes GPU memory only while it scores or updates, when no policy
  activations are alive;
- vLLM takes ``gpu_memory_utilization × GPU memory`` while awake and only its CUDA context
  while asleep (sleep level 1 moves its weights to host memory), one engine bundle per GPU;
  the torch engine runs on the CPU.
"""

from uniapl_mcore.trainer.plan.layout import (
    DiscriminatorPlacement,
    Layout,
    ReferencePlacement,
    RolloutPlacement,
    StageBatches,
    TrainerLayout,
    plan_layout,
)
from uniapl_mcore.trainer.plan.memory import (
    GIB,
    HEADROOM_FRACTION,
    MemoryEstimate,
    MemoryItem,
    TrainingBytes,
    activation_bytes_per_token,
    engine_weight_bytes,
    estimate_memory,
    kept_activation_bytes,
    single_gpu_training_bytes,
)
from uniapl_mcore.trainer.plan.params import (
    DTYPE_BYTES,
    ModelParams,
    ParamCount,
    count_parameters,
    embedding_parameters,
    head_parameters,
    layer_parameters,
    stage_parameters,
)
from uniapl_mcore.trainer.plan.report import dry_run, format_report
from uniapl_mcore.trainer.plan.sync import (
    SYNC_LINK_GB_S,
    SYNC_RING_BUCKETS,
    SyncEstimate,
    sync_estimate,
)

__all__ = [
    "DTYPE_BYTES", "GIB", "HEADROOM_FRACTION", "SYNC_LINK_GB_S", "SYNC_RING_BUCKETS",
    "DiscriminatorPlacement", "Layout", "MemoryEstimate", "MemoryItem", "ModelParams",
    "ParamCount", "ReferencePlacement", "RolloutPlacement", "StageBatches", "SyncEstimate",
    "TrainerLayout", "TrainingBytes", "activation_bytes_per_token", "count_parameters",
    "dry_run", "embedding_parameters", "engine_weight_bytes", "estimate_memory",
    "format_report", "head_parameters", "kept_activation_bytes", "layer_parameters",
    "plan_layout", "single_gpu_training_bytes", "stage_parameters", "sync_estimate",
]
