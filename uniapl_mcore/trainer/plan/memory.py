"""Per-GPU memory of a run (bytes; reported in GiB = 2**30 bytes), itemised for the training
and the generation phase. The assumptions are listed in :mod:`uniapl_mcore.trainer.plan`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers
from uniapl_mcore.trainer.config import UniaplConfig
from uniapl_mcore.trainer.plan.layout import Layout, plan_layout
from uniapl_mcore.trainer.plan.params import (
    DTYPE_BYTES,
    ModelParams,
    ParamCount,
    count_parameters,
    format_params,
    stage_parameters,
)

GIB = 1024**3
#: Per trainer process: CUDA context (~0.5 GiB) + NCCL communicators and cuBLAS / Transformer
#: Engine workspaces (~1 GiB), in GiB.
CUDA_OVERHEAD_GIB = 1.5
#: CUDA context of another process on the same GPU (a sleeping vLLM engine, a discriminator
#: actor), in GiB.
PROCESS_CONTEXT_GIB = 0.5
#: fp32 gradient buffer bytes per parameter (Megatron DDP with ``grad_reduce_in_fp32``).
GRAD_BYTES = 4
#: Adam first and second moments, fp32 each: bytes per parameter.
ADAM_BYTES = 8
#: fp32 master copy of a bf16/fp16 parameter: bytes per parameter.
MASTER_BYTES = 4
#: Logits kept per element on the last stage: fp32 logits saved for backward + fp32 gradient.
LOGITS_BYTES = 8
#: fp32 ``[chunk, vocab/TP]`` buffers alive at once in the vocab-parallel log-prob code.
LOGPROB_CHUNK_BUFFERS = 3
#: Warn when the peak exceeds this fraction of the GPU (allocator fragmentation headroom).
HEADROOM_FRACTION = 0.92

Phase = Literal["training", "generation"]


@dataclass(frozen=True)
class MemoryItem:
    """One line of the memory table: what one GPU holds in each phase."""

    name: str
    #: bytes during training (forward / backward / optimizer step)
    training: float
    #: bytes during generation (colocated engines awake, no activations)
    generation: float
    note: str = ""

    @property
    def training_gib(self) -> float:
        return self.training / GIB

    @property
    def generation_gib(self) -> float:
        return self.generation / GIB

    def gib(self, phase: Phase) -> float:
        """GiB in ``phase``."""
        return self.training_gib if phase == "training" else self.generation_gib


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU memory of the pipeline stage with the highest peak (:func:`estimate_memory`)."""

    #: memory of one GPU, GiB
    gpu_memory_gib: float
    #: the pipeline stage reported (the highest peak)
    stage: int
    #: that stage's items
    items: tuple[MemoryItem, ...]
    #: (training, generation) bytes of every pipeline stage, first to last
    stage_totals: tuple[tuple[float, float], ...]
    #: over-budget and headroom warnings, one line each
    warnings: tuple[str, ...]
    #: policy weights on one vLLM engine GPU, bytes (0.0: the torch engine)
    engine_weight_bytes: float
    params: ModelParams
    layout: Layout

    @property
    def training_bytes(self) -> float:
        return sum(i.training for i in self.items)

    @property
    def generation_bytes(self) -> float:
        return sum(i.generation for i in self.items)

    @property
    def peak_phase(self) -> Phase:
        return "training" if self.training_bytes >= self.generation_bytes else "generation"

    @property
    def peak_bytes(self) -> float:
        return max(self.training_bytes, self.generation_bytes)

    @property
    def training_gib(self) -> float:
        return self.training_bytes / GIB

    @property
    def generation_gib(self) -> float:
        return self.generation_bytes / GIB

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def fraction(self) -> float:
        """Peak / GPU memory."""
        return self.peak_bytes / (self.gpu_memory_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.gpu_memory_gib * GIB

    @property
    def stage_totals_gib(self) -> tuple[tuple[float, float], ...]:
        """(training, generation) GiB of every pipeline stage."""
        return tuple((t / GIB, g / GIB) for t, g in self.stage_totals)

    @property
    def engine_weights_gib(self) -> float:
        return self.engine_weight_bytes / GIB


@dataclass(frozen=True)
class TrainingBytes:
    """Memory of training a model with Adam on one GPU, in bytes
    (:func:`single_gpu_training_bytes`)."""

    parameters: float
    gradients: float
    optimizer: float
    #: activations under ``model.recompute``
    activations: float
    #: logits + the chunked log-prob working set
    logits: float
    #: CUDA context and workspaces
    overhead: float

    @property
    def total(self) -> float:
        return (self.parameters + self.gradients + self.optimizer + self.activations
                + self.logits + self.overhead)


# --------------------------------------------------------------------------- activations


def activation_bytes_per_token(model: ModelConfig, parallel: ParallelConfig) -> float:
    """Activation bytes one transformer layer keeps per token for backward (one GPU).

    Korthikanti et al. 2022 (§4.1) count the tensors autograd saves; redone for this
    architecture with flash attention (saves q, k, v, output; no ``5·a·s/h`` score term),
    no dropout and no recomputation, in elements of ``params_dtype``:

    - attention: input-norm input ``H``, QKV input ``H``, q/k/v ``(nh + 2·ng)·d``, qk-norm
      inputs ``(nh + ng)·d``, attention output ``nh·d`` (also the projection's input);
    - MLP: pre-MLP-norm input ``H``, fc1 input ``H``, fc1 output ``2F``, SwiGLU output ``F``;
    - MoE instead of the dense MLP: pre-MLP-norm input ``H``, router/dispatch input ``H``,
      fp32 router logits and probabilities ``2E`` (× 4 bytes), and per routed copy (``k``
      per token) the permuted input ``H`` and the fc2 output ``H`` kept for the weighted
      combine, fc1 output ``2I`` and SwiGLU output ``I`` (divided by the expert TP size).

    Without sequence parallelism the ``H``-sized tensors are replicated on every TP rank,
    with it they are divided by TP; the other dense tensors are divided by TP. Routed copies
    are not divided by sequence parallelism: the dispatcher gathers the TP group's tokens
    onto every expert-TP rank, and on average each GPU receives ``k`` copies per token of its
    own micro-batch (the ``k·T·EP`` copies of an EP group over its ``EP`` ranks).
    """
    tp = parallel.tensor_parallel_size
    width = DTYPE_BYTES[model.params_dtype]
    h, d = model.hidden_size, model.head_dim
    nh, ng = model.num_attention_heads, model.num_query_groups
    replicated = 4 * h  # two norm inputs, QKV input, fc1 / router input
    if parallel.sequence_parallel:
        replicated /= tp
    sharded = (nh + 2 * ng) * d + nh * d + ((nh + ng) * d if model.qk_norm else 0)
    if not model.num_experts:
        sharded += 3 * model.ffn_hidden_size
        return width * (replicated + sharded / tp)
    k = model.moe_router_topk
    routed = k * (2 * h + 3 * model.moe_ffn_hidden_size / parallel.expert_tensor_parallel_size)
    router_fp32 = 2 * model.num_experts
    return width * (replicated + sharded / tp + routed) + 4 * router_fp32


def _selective_savings_per_token(model: ModelConfig, parallel: ParallelConfig) -> float:
    """Bytes per token and layer that selective recomputation of ``model.recompute.modules``
    does not keep (the terms of :func:`activation_bytes_per_token` it drops).

    ``core_attn``: nothing under flash attention (its inputs q, k, v stay as the checkpoint's
    inputs; only unfused attention's s² scores would go); ``mlp``: fc1 and SwiGLU outputs;
    ``moe``: the routed copies and the router's fp32 logits / probabilities; ``moe_act``: the
    experts' SwiGLU outputs; ``layernorm``: the two norm outputs (QKV / fc1 inputs).
    """
    tp = parallel.tensor_parallel_size
    width = DTYPE_BYTES[model.params_dtype]
    modules = set(model.recompute.modules)
    etp = parallel.expert_tensor_parallel_size
    saved = 0.0
    if "mlp" in modules and not model.num_experts:
        saved += width * 3 * model.ffn_hidden_size / tp
    if model.num_experts:
        k, inner = model.moe_router_topk, model.moe_ffn_hidden_size / etp
        if "moe" in modules:
            saved += width * k * (2 * model.hidden_size + 3 * inner) + 4 * 2 * model.num_experts
        elif "moe_act" in modules:
            saved += width * k * inner
    if "layernorm" in modules:
        saved += width * 2 * model.hidden_size / (tp if parallel.sequence_parallel else 1)
    return saved


def kept_activation_bytes(model: ModelConfig, parallel: ParallelConfig, tokens: float,
                          layers: int, in_flight: int) -> float:
    """Activation bytes alive at the peak of one pipeline stage of ``layers`` layers with
    ``in_flight`` micro-batches of ``tokens`` tokens each, under ``model.recompute``.

    - none: every layer keeps :func:`activation_bytes_per_token`;
    - selective: less :func:`_selective_savings_per_token` (the recomputed module's own
      working set during backward is ignored: one layer, one module);
    - full, ``uniform`` with ``n = num_layers``: each group of ``n`` layers keeps only its
      input (``H`` per token, divided by TP under sequence parallelism), plus the ``n``
      layers of the group being recomputed, once;
    - full, ``block``: the first ``n`` layers keep only their input, the others everything,
      plus one recomputed layer, once.
    """
    full = activation_bytes_per_token(model, parallel)
    rc = model.recompute
    if rc.granularity == "none":
        return full * tokens * layers * in_flight
    if rc.granularity == "selective":
        return (full - _selective_savings_per_token(model, parallel)) * tokens * layers * \
            in_flight
    width = DTYPE_BYTES[model.params_dtype]
    tp = parallel.tensor_parallel_size
    layer_input = width * model.hidden_size / (tp if parallel.sequence_parallel else 1)
    n = min(rc.num_layers, layers)
    if rc.method == "uniform":
        groups = -(-layers // n)
        return tokens * (layer_input * groups * in_flight + full * n)
    return tokens * ((layer_input * n + full * (layers - n)) * in_flight + full)


def _recompute_note(model: ModelConfig) -> str:
    rc = model.recompute
    if rc.granularity == "full":
        return f"; full recompute ({rc.method}, {rc.num_layers})"
    if rc.granularity == "selective":
        return f"; selective recompute ({', '.join(rc.modules)})"
    return ""


# --------------------------------------------------------------------------- trained state


def _trainable_bytes(params: ParamCount, dtype: str, distributed: bool, dense_dp: int,
                     expert_dp: int) -> tuple[float, float, float]:
    """(parameter, gradient, optimizer) bytes of a trained model on one GPU."""
    width = DTYPE_BYTES[dtype]
    per_param = ADAM_BYTES + (MASTER_BYTES if width < 4 else 0)
    dense_share = dense_dp if distributed else 1
    expert_share = expert_dp if distributed else 1
    optimizer = per_param * (params.dense / dense_share + params.expert / expert_share)
    return params.total * width, params.total * GRAD_BYTES, optimizer


def _logits_bytes(model: ModelConfig, tp: int, tokens: float, chunk: int) -> tuple[float, float]:
    """(logits kept for backward, chunked log-prob working set) bytes on the last stage."""
    if model.value_head:
        return 0.0, 0.0
    v_local = model.padded_vocab_size(tp) // tp
    kept = tokens * v_local * LOGITS_BYTES
    if model.padded_vocab_size(tp) > model.vocab_size:
        kept += tokens * v_local * 4  # the masked copy of the padded vocabulary
    return kept, min(chunk, tokens) * v_local * 4 * LOGPROB_CHUNK_BUFFERS


def single_gpu_training_bytes(model: ModelConfig, micro_batch_tokens: int,
                              logprob_chunk_tokens: int = 0) -> TrainingBytes:
    """Memory of training ``model`` with Adam on one GPU (no parallelism; one micro-batch of
    ``micro_batch_tokens`` tokens in flight), in bytes, itemised like :func:`estimate_memory`
    (the logits include the chunked log-prob working set when ``logprob_chunk_tokens``)."""
    parallel = ParallelConfig()
    params = stage_parameters(model, parallel, 0)
    p_bytes, g_bytes, o_bytes = _trainable_bytes(params, model.params_dtype, True, 1, 1)
    act = kept_activation_bytes(model, parallel, micro_batch_tokens, model.num_layers, 1)
    logits, chunk = _logits_bytes(model, 1, micro_batch_tokens, logprob_chunk_tokens)
    return TrainingBytes(parameters=p_bytes, gradients=g_bytes, optimizer=o_bytes,
                         activations=act, logits=logits + chunk,
                         overhead=CUDA_OVERHEAD_GIB * GIB)


# --------------------------------------------------------------------------- items


def _policy_items(cfg: UniaplConfig, layout: Layout, stage: int) -> list[MemoryItem]:
    """Policy + reference items of one pipeline stage."""
    t = layout.trainer
    model, par = cfg.model, cfg.parallel
    params = stage_parameters(model, par, stage)
    dist_opt = cfg.optimizer.use_distributed_optimizer
    p_bytes, g_bytes, o_bytes = _trainable_bytes(params, model.params_dtype, dist_opt,
                                                 t.dense_dp, t.expert_dp)
    micro = max(s.micro_batches_per_dp_rank for s in layout.stages)
    in_flight = min(t.pp - stage, micro)
    tokens = cfg.data.micro_batch_tokens / t.cp
    layers = t.stage_layers[stage]
    act = kept_activation_bytes(model, par, tokens, layers, in_flight)
    logits, chunk = (_logits_bytes(model, t.tp, tokens, cfg.loss.logprob_chunk_tokens)
                     if stage == t.pp - 1 else (0.0, 0.0))
    ref = layout.reference
    ref_bytes = p_bytes if ref.needed and not ref.offload else 0.0
    shard = f"/{t.dense_dp} DP" if dist_opt else "unsharded"
    if params.expert and dist_opt:
        shard += f", experts /{t.expert_dp} expert-DP"
    dtype = model.params_dtype
    ref_note = "offloaded to host" if ref.offload else "frozen, params only"
    return [
        MemoryItem("policy parameters", p_bytes, p_bytes,
                   f"{format_params(params.total)} params in {dtype}"),
        MemoryItem("policy gradients", g_bytes, g_bytes, "fp32 DDP buffers"),
        MemoryItem("optimizer state", o_bytes, o_bytes,
                   ("fp32 master + " if DTYPE_BYTES[dtype] < 4 else "") + f"Adam m, v; {shard}"),
        MemoryItem("activations", act, 0.0,
                   f"{in_flight} micro-batch(es) × {layers} layers × "
                   f"{tokens:.0f} tokens" + _recompute_note(model)),
        MemoryItem("logits + log-prob chunks", logits + chunk, 0.0,
                   "last stage" if logits + chunk else "not on this stage"),
        MemoryItem("reference model", ref_bytes, ref_bytes,
                   ref_note if ref.needed else "not needed"),
    ]


def _discriminator_item(cfg: UniaplConfig, layout: Layout) -> MemoryItem:
    """One GPU's shard of the discriminator (its heaviest pipeline stage) + its actor's
    CUDA context. Trainable: parameters, fp32 gradients and unsharded optimizer state (one
    replica: no data parallelism) and, in the training phase, the activations of one update
    micro-batch (``2·max(1, batch_size // 2)`` rows right-padded to ``max_tokens``)."""
    info = layout.discriminator
    disc = cfg.discriminator
    if not info.needed:
        return MemoryItem("discriminator", 0.0, 0.0, "not needed")
    if disc.offload:
        return MemoryItem("discriminator", 0.0, 0.0,
                          f"{disc.role}, offloaded to host between uses")
    par, model = disc.parallel, disc.model
    params = max((stage_parameters(model, par, s) for s in range(par.pipeline_parallel_size)),
                 key=lambda p: p.total)
    context = PROCESS_CONTEXT_GIB * GIB
    where = f"{format_params(params.total)} params/GPU, TP {info.tp} × PP {info.pp}"
    if disc.role == "frozen":
        size = params.total * DTYPE_BYTES[model.params_dtype] + context
        return MemoryItem("discriminator", size, size, f"frozen, {where}")
    p_bytes, g_bytes, o_bytes = _trainable_bytes(
        params, model.params_dtype, disc.optimizer.use_distributed_optimizer, 1, 1)
    rows = 2 * max(1, disc.batch_size // 2)
    act = kept_activation_bytes(model, par, rows * disc.max_tokens,
                                max(pipeline_stage_layers(model.num_layers, par)), 1)
    static = p_bytes + g_bytes + o_bytes + context
    return MemoryItem("discriminator", static + act, static,
                      f"trainable: + grads, optimizer, {rows}×{disc.max_tokens}-token "
                      f"activations; {where}")


def _engine_item(layout: Layout, gpu_bytes: float) -> MemoryItem:
    """A colocated vLLM engine's share of one GPU (``gpu_bytes``: the GPU's memory)."""
    info = layout.rollout
    if not info.needed:
        return MemoryItem("rollout engine", 0.0, 0.0, "no rollouts")
    if info.engine != "vllm":
        return MemoryItem("rollout engine", 0.0, 0.0, "torch engine on CPU")
    if info.placement == "disaggregated":
        return MemoryItem("rollout engine", 0.0, 0.0, f"disaggregated on {info.gpus} own GPUs")
    awake = info.engines_per_gpu * info.gpu_memory_utilization * gpu_bytes
    if info.sleep_mode:
        return MemoryItem("rollout engine", PROCESS_CONTEXT_GIB * GIB, awake,
                          f"vLLM {info.gpu_memory_utilization:.2f} × GPU awake, CUDA context "
                          "asleep")
    return MemoryItem("rollout engine", awake, awake,
                      f"vLLM {info.gpu_memory_utilization:.2f} × GPU, never asleep")


def engine_weight_bytes(cfg: UniaplConfig) -> float:
    """Policy weights one GPU of a vLLM engine holds (bytes): the whole model in
    ``rollout.dtype`` split over ``engine_tensor_parallel_size``."""
    return count_parameters(cfg.model).total * DTYPE_BYTES[cfg.rollout.dtype] / \
        cfg.rollout.engine_tensor_parallel_size


def _warnings(cfg: UniaplConfig, layout: Layout, training: float, generation: float,
              gpu_bytes: float) -> tuple[str, ...]:
    """Over-budget and headroom warnings (``training``, ``generation``, ``gpu_bytes``: bytes)."""
    out = []
    gib = gpu_bytes / GIB
    if training > gpu_bytes:
        hint = "raise TP/PP/EP, lower data.micro_batch_tokens"
        if not cfg.optimizer.use_distributed_optimizer:
            hint += ", enable optimizer.use_distributed_optimizer"
        if layout.reference.needed and not cfg.reference.offload:
            hint += ", set reference.offload"
        out.append(f"training phase needs {training / GIB:.1f} GiB > {gib:.0f} GiB: {hint}")
    if generation > gpu_bytes:
        out.append(f"generation phase needs {generation / GIB:.1f} GiB > {gib:.0f} GiB: lower "
                   "rollout.vllm.gpu_memory_utilization, offload the reference / "
                   "discriminator, or use disaggregated engines")
    peak = max(training, generation)
    if HEADROOM_FRACTION * gpu_bytes < peak <= gpu_bytes:
        out.append(f"peak uses {peak / gpu_bytes:.0%} of the GPU: little headroom for "
                   "allocator fragmentation")
    ro = layout.rollout
    if ro.needed and ro.engine == "vllm":
        budget = ro.gpu_memory_utilization * gpu_bytes
        weights = engine_weight_bytes(cfg)
        if weights >= 0.9 * budget:
            out.append(f"vLLM engine weights ({weights / GIB:.1f} GiB per GPU) leave no room "
                       f"for the KV cache in its {budget / GIB:.1f} GiB budget: raise "
                       "rollout.engine_tensor_parallel_size or gpu_memory_utilization")
        if ro.placement == "colocated" and not ro.sleep_mode:
            out.append("colocated vLLM engines without rollout.vllm.enable_sleep_mode keep "
                       "their memory during training")
    return tuple(out)


# --------------------------------------------------------------------------- estimate


def estimate_memory(cfg: UniaplConfig, world_size: int, gpu_memory_gib: float = 80.0, *,
                    total_gpus: int | None = None) -> MemoryEstimate:
    """Per-GPU memory of the training and generation phases on ``world_size`` GPUs of
    ``gpu_memory_gib`` GiB, itemised.

    The pipeline stage with the highest peak is reported (stage 0 holds the embedding and
    the most in-flight micro-batches, the last stage the output layer and logits).

    Raises:
        ConfigError: as :func:`~uniapl_mcore.trainer.plan.layout.plan_layout`.
    """
    layout = plan_layout(cfg, world_size, total_gpus=total_gpus)
    gpu_bytes = gpu_memory_gib * GIB
    shared = [_discriminator_item(cfg, layout), _engine_item(layout, gpu_bytes),
              MemoryItem("CUDA context + workspaces", CUDA_OVERHEAD_GIB * GIB,
                         CUDA_OVERHEAD_GIB * GIB, "per process, estimate")]
    per_stage = [_policy_items(cfg, layout, s) + shared for s in range(layout.trainer.pp)]
    totals = [(sum(i.training for i in items), sum(i.generation for i in items))
              for items in per_stage]
    # the highest peak (to 0.1 GiB), then the highest training total
    stage = max(range(len(per_stage)),
                key=lambda s: (round(max(totals[s]) / GIB, 1), totals[s][0]))
    training, generation = totals[stage]
    return MemoryEstimate(
        gpu_memory_gib=gpu_memory_gib, stage=stage, items=tuple(per_stage[stage]),
        stage_totals=tuple(totals),
        warnings=_warnings(cfg, layout, training, generation, gpu_bytes),
        engine_weight_bytes=engine_weight_bytes(cfg) if layout.rollout.engine == "vllm"
        else 0.0,
        params=count_parameters(cfg.model), layout=layout)
