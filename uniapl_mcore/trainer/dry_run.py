"""Dry run of a training config: the parallel layout it implies and a per-GPU memory estimate.

``uniapl train --config X --dry-run`` prints :func:`dry_run`. Nothing here imports torch or
Megatron or touches a device: everything is arithmetic on the config.

:func:`plan_layout` derives the trainer's data-parallel and expert-data-parallel sizes, the
pipeline split, the rollouts and micro-batches per step, and where the discriminator, the
reference model and the rollout engines go; it raises :class:`ConfigError` with a one-line
reason when ``world_size`` GPUs cannot host that layout.

:func:`estimate_memory` itemises the memory of one GPU (GiB = 2**30 bytes) in two phases:

- **training**: the policy's parameters, fp32 gradient buffers and optimizer state, the
  activations of the micro-batches in flight, the logits working set, the frozen reference
  and discriminator, the (asleep or awake) colocated rollout engine, CUDA overhead;
- **generation**: colocated engines awake, while the trainer's parameters, gradient buffers
  and optimizer state stay on the GPU (this backend offloads none of them) and no
  activations are alive.

Assumptions (each is a documented constant or formula below):

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
  expert-data-parallel = CP·DP / EP (:func:`expert_tensor_parallel_size`);
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

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from uniapl_mcore.config import ConfigError
from uniapl_mcore.megatron.config import check_layout
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers
from uniapl_mcore.trainer.config import UniaplConfig

logger = logging.getLogger(__name__)

GIB = 1024**3
#: Bytes per element of each parameter dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
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


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamCount:
    """Parameters held by one GPU (elements): ``dense`` (everything but routed experts)
    and ``expert`` (routed-expert weights, sharded over EP and optimised over expert-DP)."""

    dense: int
    expert: int

    @property
    def total(self) -> int:
        return self.dense + self.expert


def _split(size: int, parts: int) -> int:
    """Elements per rank of a dimension of ``size`` split ``parts`` ways (ceil)."""
    return -(-size // parts)


def _qkv_width(model: ModelConfig) -> int:
    """Output width of the fused QKV projection: (heads + 2·KV heads) · head_dim."""
    return (model.num_attention_heads + 2 * model.num_query_groups) * model.head_dim


def layer_parameters(model: ModelConfig, tp: int = 1, ep: int = 1,
                     etp: int | None = None) -> ParamCount:
    """Parameters of one transformer layer on one rank (elements).

    Attention: fused QKV (+ bias), output projection (both TP-sharded), q/k RMSNorm
    (``head_dim`` each, replicated), input RMSNorm. MLP: SwiGLU ``fc1`` [2F, H] and ``fc2``
    [H, F] (TP-sharded) and the pre-MLP RMSNorm; for MoE, a replicated router [E, H] and
    ``E/EP`` local experts of width ``moe_ffn_hidden_size`` split over the expert TP size
    ``etp`` (no shared expert).
    """
    h, d = model.hidden_size, model.head_dim
    qkv = _qkv_width(model)
    dense = _split(qkv, tp) * h + h * _split(model.num_attention_heads * d, tp) + h
    if model.qkv_bias:
        dense += _split(qkv, tp)
    if model.qk_norm:
        dense += 2 * d
    dense += h  # pre-MLP norm (fused into fc1 in the TE spec: the same count)
    if not model.num_experts:
        return ParamCount(dense + 3 * _split(model.ffn_hidden_size, tp) * h, 0)
    dense += model.num_experts * h  # router
    etp = tp if etp is None else etp
    expert = _split(model.num_experts, ep) * 3 * _split(model.moe_ffn_hidden_size, etp) * h
    return ParamCount(dense, expert)


def embedding_parameters(model: ModelConfig, tp: int = 1) -> int:
    """Word-embedding rows per rank × hidden (vocabulary padded for ``tp``)."""
    return model.padded_vocab_size(tp) // tp * model.hidden_size


def head_parameters(model: ModelConfig, tp: int = 1, pp: int = 1) -> int:
    """Final norm + output layer on the last stage: a value head [1, H], a vocabulary
    projection (untied), or the tied copy of the embedding the last stage keeps when PP > 1."""
    h = model.hidden_size
    if model.value_head:
        return h + h
    if model.tie_word_embeddings and pp == 1:
        return h
    return h + embedding_parameters(model, tp)


def stage_parameters(model: ModelConfig, parallel: ParallelConfig, stage: int) -> ParamCount:
    """Parameters on one GPU of pipeline stage ``stage`` under ``parallel`` (its layers as
    :func:`~uniapl_mcore.runtime.layout.pipeline_stage_layers` splits them)."""
    tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
    layer = layer_parameters(model, tp, parallel.expert_parallel_size,
                             expert_tensor_parallel_size(parallel))
    layers = pipeline_stage_layers(model.num_layers, parallel)[stage]
    dense = layers * layer.dense
    if stage == 0:
        dense += embedding_parameters(model, tp)
    if stage == pp - 1:
        dense += head_parameters(model, tp, pp)
    return ParamCount(dense, layers * layer.expert)


def count_parameters(model: ModelConfig) -> dict[str, int]:
    """Whole-model parameter counts (elements, unpadded layout: TP = PP = EP = 1).

    Keys: ``total``; ``embedding`` (input embedding plus an untied vocabulary output
    layer); ``non_embedding``; ``active`` (per token: only ``top-k`` of the routed experts);
    ``expert`` (all routed-expert weights).
    """
    whole = stage_parameters(model, ParallelConfig(), 0)
    embedding = embedding_parameters(model)
    if not model.tie_word_embeddings and not model.value_head:
        embedding *= 2
    expert_each = 3 * model.moe_ffn_hidden_size * model.hidden_size
    inactive = model.num_layers * (model.num_experts - model.moe_router_topk) * expert_each \
        if model.num_experts else 0
    return {"total": whole.total, "embedding": embedding,
            "non_embedding": whole.total - embedding, "active": whole.total - inactive,
            "expert": whole.expert}


# --------------------------------------------------------------------------- layout


def expert_tensor_parallel_size(parallel: ParallelConfig) -> int:
    """The TP size of expert weights as built: Megatron's parallel state is initialised
    without ``expert_tensor_parallel_size``, whose default is the dense TP size."""
    return parallel.tensor_parallel_size


def _expert_dp(parallel: ParallelConfig, dp: int) -> int:
    """Ranks holding the same expert shard: TP·CP·DP / (ETP·EP)."""
    return parallel.tensor_parallel_size * parallel.context_parallel_size * dp // \
        (expert_tensor_parallel_size(parallel) * parallel.expert_parallel_size)


def _stage_batches(cfg: UniaplConfig, dp: int) -> list[dict[str, Any]]:
    """Rows per optimizer step of each stage, and micro-batches per DP rank (worst case:
    every row at its longest, ``micro_batch_tokens // row_tokens`` rows per micro-batch)."""
    prompts = cfg.prompts_per_step
    g = cfg.rollout.samples_per_prompt
    g_sft = cfg.sft_samples_per_prompt or g
    out = []
    for stage in cfg.resolved_stages():
        n_sft = math.ceil(stage.expert_fraction(cfg.data.expert_fraction) * prompts)
        n_pref = prompts - n_sft if stage.has_pref else 0
        pref_rollouts = n_pref * g
        sft_rollouts = n_sft * g_sft if stage.needs_sft_rollouts else 0
        rollout_tokens = cfg.rollout.sampling.max_new_tokens if (pref_rollouts or sft_rollouts) \
            else 0
        row_tokens = cfg.data.max_prompt_tokens + max(cfg.data.max_response_tokens if n_sft
                                                      else 0, rollout_tokens)
        rows = n_sft + pref_rollouts + sft_rollouts
        per_rank = math.ceil(rows / dp)
        per_micro = max(1, cfg.data.micro_batch_tokens // row_tokens)
        out.append({"name": stage.name, "objective": stage.objective, "steps": stage.steps,
                    "sft_rows": n_sft, "pref_prompts": n_pref,
                    "samples_per_prompt": g, "sft_samples_per_prompt": g_sft,
                    "pref_rollouts": pref_rollouts, "sft_rollouts": sft_rollouts,
                    "rollouts": pref_rollouts + sft_rollouts, "train_rows": rows,
                    "rows_per_dp_rank": per_rank, "max_row_tokens": row_tokens,
                    "micro_batches_per_dp_rank": math.ceil(per_rank / per_micro)})
    return out


def _discriminator_layout(cfg: UniaplConfig, world_size: int) -> dict[str, Any]:
    disc = cfg.discriminator
    needed = disc.enabled and any(s.needs_discriminator for s in cfg.resolved_stages())
    par = disc.parallel
    processes = par.tensor_parallel_size * par.pipeline_parallel_size
    out: dict[str, Any] = {"role": disc.role, "needed": needed, "offload": disc.offload,
                           "tp": par.tensor_parallel_size, "pp": par.pipeline_parallel_size,
                           "processes": processes if needed else 0}
    if not needed:
        return out
    if processes > world_size:
        raise ConfigError("discriminator.parallel",
                          f"TP × PP = {processes} discriminator processes need more GPUs than "
                          f"the trainer's {world_size}")
    check_layout(disc.model, par, "discriminator")
    return out


def _rollout_layout(cfg: UniaplConfig, world_size: int, total_gpus: int) -> dict[str, Any]:
    ro = cfg.rollout
    gpus = ro.num_engines * ro.gpus_per_engine
    out: dict[str, Any] = {
        "engine": ro.engine, "placement": ro.placement, "num_engines": ro.num_engines,
        "tp_each": ro.engine_tensor_parallel_size, "gpus": gpus, "engines_per_gpu": 0,
        "gpu_memory_utilization": ro.vllm.gpu_share if ro.engine == "vllm" else 0.0,
        "sleep_mode": ro.engine == "vllm" and ro.vllm.gpu_sleep,
        "needed": cfg.any_rl}
    if not gpus:
        return out  # the torch engine runs on CPUs
    if ro.placement == "colocated":
        if gpus > world_size:
            raise ConfigError("rollout.num_engines",
                              f"{ro.num_engines} colocated engines × TP "
                              f"{ro.engine_tensor_parallel_size} need {gpus} GPUs but the "
                              f"trainer has {world_size}")
        out["engines_per_gpu"] = 1
    elif world_size + gpus > total_gpus:
        raise ConfigError("rollout.placement",
                          f"disaggregated engines need {gpus} GPUs besides the trainer's "
                          f"{world_size}, but only {total_gpus} GPUs are available; use "
                          f"placement colocated or pass total_gpus >= {world_size + gpus}")
    return out


def plan_layout(cfg: UniaplConfig, world_size: int, *,
                total_gpus: int | None = None) -> dict[str, Any]:
    """The parallel layout of ``cfg`` on ``world_size`` trainer GPUs.

    Args:
        cfg: the run config.
        world_size: trainer processes (one GPU each), e.g. ``nnodes × nproc_per_node``.
        total_gpus: GPUs in the whole job (trainer + disaggregated engines); None:
            ``world_size`` (the launch's GPUs are all there are).
    Returns:
        ``{"world_size", "total_gpus", "trainer", "stages", "discriminator", "reference",
        "rollout"}`` (see :func:`format_report` for what each holds).
    Raises:
        ConfigError: one line naming the field when the GPUs cannot host the layout.
    """
    if world_size < 1:
        raise ConfigError("world_size", f"must be >= 1, got {world_size}")
    total_gpus = world_size if total_gpus is None else total_gpus
    cfg.check_world_size(world_size)
    par, model = cfg.parallel, cfg.model
    dp = world_size // par.model_parallel_size
    experts = model.num_experts
    trainer = {
        "gpus": world_size, "tp": par.tensor_parallel_size, "pp": par.pipeline_parallel_size,
        "cp": par.context_parallel_size, "ep": par.expert_parallel_size, "dp": dp,
        "expert_dp": _expert_dp(par, dp) if experts else dp * par.context_parallel_size,
        "sequence_parallel": par.sequence_parallel,
        "stage_layers": pipeline_stage_layers(model.num_layers, par),
        "experts_per_rank": experts // par.expert_parallel_size if experts else 0,
        "distributed_optimizer": cfg.optimizer.use_distributed_optimizer,
        "params_dtype": model.params_dtype,
    }
    stages = _stage_batches(cfg, dp)
    needs_ref = any(s.needs_reference for s in cfg.resolved_stages())
    layout = {
        "world_size": world_size, "total_gpus": total_gpus, "trainer": trainer,
        "stages": stages,
        "discriminator": _discriminator_layout(cfg, world_size),
        "reference": {"needed": needs_ref, "offload": cfg.reference.offload},
        "rollout": _rollout_layout(cfg, world_size, total_gpus),
    }
    logger.debug("planned layout: %s", layout)
    return layout


# --------------------------------------------------------------------------- memory


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
    routed = k * (2 * h + 3 * model.moe_ffn_hidden_size / expert_tensor_parallel_size(parallel))
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
    etp = expert_tensor_parallel_size(parallel)
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
    """(logits kept for backward, chunked log-prob working set) on the last stage."""
    if model.value_head:
        return 0.0, 0.0
    v_local = model.padded_vocab_size(tp) // tp
    kept = tokens * v_local * LOGITS_BYTES
    if model.padded_vocab_size(tp) > model.vocab_size:
        kept += tokens * v_local * 4  # the masked copy of the padded vocabulary
    return kept, min(chunk, tokens) * v_local * 4 * LOGPROB_CHUNK_BUFFERS


@dataclass
class _Item:
    name: str
    training: float  # bytes
    generation: float  # bytes
    note: str = ""


def _policy_items(cfg: UniaplConfig, layout: dict[str, Any], stage: int) -> list[_Item]:
    """Policy + reference items of one pipeline stage."""
    t = layout["trainer"]
    model, par = cfg.model, cfg.parallel
    params = stage_parameters(model, par, stage)
    dist_opt = cfg.optimizer.use_distributed_optimizer
    p_bytes, g_bytes, o_bytes = _trainable_bytes(params, model.params_dtype, dist_opt,
                                                 t["dp"] * t["cp"], t["expert_dp"])
    micro = max(s["micro_batches_per_dp_rank"] for s in layout["stages"])
    in_flight = min(t["pp"] - stage, micro)
    tokens = cfg.data.micro_batch_tokens / t["cp"]
    layers = t["stage_layers"][stage]
    act = kept_activation_bytes(model, par, tokens, layers, in_flight)
    logits, chunk = (_logits_bytes(model, t["tp"], tokens, cfg.loss.logprob_chunk_tokens)
                     if stage == t["pp"] - 1 else (0.0, 0.0))
    ref = layout["reference"]
    ref_bytes = p_bytes if ref["needed"] and not ref["offload"] else 0.0
    shard = f"/{t['dp'] * t['cp']} DP" if dist_opt else "unsharded"
    if params.expert and dist_opt:
        shard += f", experts /{t['expert_dp']} expert-DP"
    dtype = model.params_dtype
    ref_note = "offloaded to host" if ref["offload"] else "frozen, params only"
    return [
        _Item("policy parameters", p_bytes, p_bytes,
              f"{_billions(params.total)} params in {dtype}"),
        _Item("policy gradients", g_bytes, g_bytes, "fp32 DDP buffers"),
        _Item("optimizer state", o_bytes, o_bytes,
              ("fp32 master + " if DTYPE_BYTES[dtype] < 4 else "") + f"Adam m, v; {shard}"),
        _Item("activations", act, 0.0,
              f"{in_flight} micro-batch(es) × {layers} layers × "
              f"{tokens:.0f} tokens" + _recompute_note(model)),
        _Item("logits + log-prob chunks", logits + chunk, 0.0,
              "last stage" if logits + chunk else "not on this stage"),
        _Item("reference model", ref_bytes, ref_bytes,
              ref_note if ref["needed"] else "not needed"),
    ]


def _recompute_note(model: ModelConfig) -> str:
    rc = model.recompute
    if rc.granularity == "full":
        return f"; full recompute ({rc.method}, {rc.num_layers})"
    if rc.granularity == "selective":
        return f"; selective recompute ({', '.join(rc.modules)})"
    return ""


def single_gpu_training_bytes(model: ModelConfig, micro_batch_tokens: int,
                              logprob_chunk_tokens: int = 0) -> dict[str, float]:
    """Memory of training ``model`` with Adam on one GPU (no parallelism; one micro-batch of
    ``micro_batch_tokens`` tokens in flight), in bytes, itemised like :func:`estimate_memory`:
    ``parameters``, ``gradients``, ``optimizer``, ``activations`` (under ``model.recompute``),
    ``logits`` (+ the chunked log-prob working set when ``logprob_chunk_tokens``),
    ``overhead`` (CUDA context and workspaces) and ``total``."""
    parallel = ParallelConfig()
    params = stage_parameters(model, parallel, 0)
    p_bytes, g_bytes, o_bytes = _trainable_bytes(params, model.params_dtype, True, 1, 1)
    act = kept_activation_bytes(model, parallel, micro_batch_tokens, model.num_layers, 1)
    logits, chunk = _logits_bytes(model, 1, micro_batch_tokens, logprob_chunk_tokens)
    items = {"parameters": p_bytes, "gradients": g_bytes, "optimizer": o_bytes,
             "activations": act, "logits": logits + chunk,
             "overhead": CUDA_OVERHEAD_GIB * GIB}
    items["total"] = sum(items.values())
    return items


def _discriminator_item(cfg: UniaplConfig, layout: dict[str, Any]) -> _Item:
    """One GPU's shard of the discriminator (its heaviest pipeline stage) + its actor's
    CUDA context. Trainable: parameters, fp32 gradients and unsharded optimizer state (one
    replica: no data parallelism) and, in the training phase, the activations of one update
    micro-batch (``2·max(1, batch_size // 2)`` rows right-padded to ``max_tokens``)."""
    info = layout["discriminator"]
    disc = cfg.discriminator
    if not info["needed"]:
        return _Item("discriminator", 0.0, 0.0, "not needed")
    if disc.offload:
        return _Item("discriminator", 0.0, 0.0, f"{disc.role}, offloaded to host between uses")
    par, model = disc.parallel, disc.model
    params = max((stage_parameters(model, par, s) for s in range(par.pipeline_parallel_size)),
                 key=lambda p: p.total)
    context = PROCESS_CONTEXT_GIB * GIB
    where = f"{_billions(params.total)} params/GPU, TP {info['tp']} × PP {info['pp']}"
    if disc.role == "frozen":
        size = params.total * DTYPE_BYTES[model.params_dtype] + context
        return _Item("discriminator", size, size, f"frozen, {where}")
    p_bytes, g_bytes, o_bytes = _trainable_bytes(
        params, model.params_dtype, disc.optimizer.use_distributed_optimizer, 1, 1)
    rows = 2 * max(1, disc.batch_size // 2)
    act = kept_activation_bytes(model, par, rows * disc.max_tokens,
                                max(pipeline_stage_layers(model.num_layers, par)), 1)
    static = p_bytes + g_bytes + o_bytes + context
    return _Item("discriminator", static + act, static,
                 f"trainable: + grads, optimizer, {rows}×{disc.max_tokens}-token "
                 f"activations; {where}")


def _engine_item(cfg: UniaplConfig, layout: dict[str, Any], gpu_bytes: float) -> _Item:
    info = layout["rollout"]
    if not info["needed"]:
        return _Item("rollout engine", 0.0, 0.0, "no rollouts")
    if info["engine"] != "vllm":
        return _Item("rollout engine", 0.0, 0.0, "torch engine on CPU")
    if info["placement"] == "disaggregated":
        return _Item("rollout engine", 0.0, 0.0, f"disaggregated on {info['gpus']} own GPUs")
    awake = info["engines_per_gpu"] * info["gpu_memory_utilization"] * gpu_bytes
    if info["sleep_mode"]:
        return _Item("rollout engine", PROCESS_CONTEXT_GIB * GIB, awake,
                     f"vLLM {info['gpu_memory_utilization']:.2f} × GPU awake, CUDA context "
                     "asleep")
    return _Item("rollout engine", awake, awake,
                 f"vLLM {info['gpu_memory_utilization']:.2f} × GPU, never asleep")


def engine_weight_bytes(cfg: UniaplConfig) -> float:
    """Policy weights one GPU of a vLLM engine holds (bytes): the whole model in
    ``rollout.dtype`` split over ``engine_tensor_parallel_size``."""
    return count_parameters(cfg.model)["total"] * DTYPE_BYTES[cfg.rollout.dtype] / \
        cfg.rollout.engine_tensor_parallel_size


def _warnings(cfg: UniaplConfig, layout: dict[str, Any], training: float, generation: float,
              gpu_bytes: float) -> list[str]:
    out = []
    gib = gpu_bytes / GIB
    if training > gpu_bytes:
        hint = "raise TP/PP/EP, lower data.micro_batch_tokens"
        if not cfg.optimizer.use_distributed_optimizer:
            hint += ", enable optimizer.use_distributed_optimizer"
        if layout["reference"]["needed"] and not cfg.reference.offload:
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
    ro = layout["rollout"]
    if ro["needed"] and ro["engine"] == "vllm":
        budget = ro["gpu_memory_utilization"] * gpu_bytes
        weights = engine_weight_bytes(cfg)
        if weights >= 0.9 * budget:
            out.append(f"vLLM engine weights ({weights / GIB:.1f} GiB per GPU) leave no room "
                       f"for the KV cache in its {budget / GIB:.1f} GiB budget: raise "
                       "rollout.engine_tensor_parallel_size or gpu_memory_utilization")
        if ro["placement"] == "colocated" and not ro["sleep_mode"]:
            out.append("colocated vLLM engines without rollout.vllm.enable_sleep_mode keep "
                       "their memory during training")
    return out


def estimate_memory(cfg: UniaplConfig, world_size: int, gpu_memory_gib: float = 80.0, *,
                    total_gpus: int | None = None) -> dict[str, Any]:
    """Per-GPU memory (GiB) of the training and generation phases, itemised.

    The pipeline stage with the highest peak is reported (stage 0 holds the embedding and
    the most in-flight micro-batches, the last stage the output layer and logits).

    Returns:
        ``{"gpu_memory_gib", "stage", "items": [{"name", "training", "generation",
        "note"}], "training_gib", "generation_gib", "peak_gib", "peak_phase", "fraction",
        "fits", "warnings", "stage_totals_gib" ((training, generation) per pipeline stage),
        "engine_weights_gib", "params", "layout"}``.
    Raises:
        ConfigError: as :func:`plan_layout`.
    """
    layout = plan_layout(cfg, world_size, total_gpus=total_gpus)
    gpu_bytes = gpu_memory_gib * GIB
    shared = [_discriminator_item(cfg, layout), _engine_item(cfg, layout, gpu_bytes),
              _Item("CUDA context + workspaces", CUDA_OVERHEAD_GIB * GIB,
                    CUDA_OVERHEAD_GIB * GIB, "per process, estimate")]
    per_stage = [_policy_items(cfg, layout, s) + shared
                 for s in range(layout["trainer"]["pp"])]

    totals = [(sum(i.training for i in items), sum(i.generation for i in items))
              for items in per_stage]
    # the highest peak (to 0.1 GiB), then the highest training total
    stage = max(range(len(per_stage)),
                key=lambda s: (round(max(totals[s]) / GIB, 1), totals[s][0]))
    items = per_stage[stage]
    training = sum(i.training for i in items)
    generation = sum(i.generation for i in items)
    top = max(training, generation)
    return {
        "gpu_memory_gib": gpu_memory_gib,
        "stage": stage,
        "items": [{"name": i.name, "training": i.training / GIB,
                   "generation": i.generation / GIB, "note": i.note} for i in items],
        "training_gib": training / GIB,
        "generation_gib": generation / GIB,
        "peak_gib": top / GIB,
        "peak_phase": "training" if training >= generation else "generation",
        "fraction": top / gpu_bytes,
        "fits": top <= gpu_bytes,
        "warnings": _warnings(cfg, layout, training, generation, gpu_bytes),
        "stage_totals_gib": [(t / GIB, g / GIB) for t, g in totals],
        "engine_weights_gib": engine_weight_bytes(cfg) / GIB
        if layout["rollout"]["engine"] == "vllm" else 0.0,
        "params": count_parameters(cfg.model),
        "layout": layout,
    }


#: link bandwidth the sync estimate assumes (GB/s, one direction): a 200 Gb/s NIC
SYNC_LINK_GB_S = 25.0
#: bucket buffers the live exporter keeps per rank during a sync (a ring with prefetch)
SYNC_RING_BUCKETS = 3


def sync_estimate(cfg: UniaplConfig, layout: dict[str, Any],
                  link_gb_s: float = SYNC_LINK_GB_S) -> dict[str, Any]:
    """Bytes moved and memory held by one weight sync. ``object_store``: every model-parallel
    rank of data-parallel replica 0 sends its own shard to global rank
    0, which puts each HF-named bucket into Ray's object store once; every engine actor then
    reads the whole model from there.

    Returns (bytes unless stated): ``model`` (the HF weights, trainer dtype), ``rank0_in``
    (what rank 0 receives), ``rank0_out`` (what leaves rank 0's node for the engines),
    ``largest_sender`` (the biggest shard another rank sends), ``seconds`` (rank 0's link
    carrying ``rank0_in + rank0_out`` at ``link_gb_s``; a lower bound: packing, puts and the
    engines' loads add to it), ``rank0_host`` (object-store bytes at the peak: this version's
    buckets plus the kept previous version when ``keep_weights_for_restart``) and
    ``rank_device`` (bucket buffers per rank), and ``link_gb_s``.
    """
    width = DTYPE_BYTES[cfg.model.params_dtype]
    model = count_parameters(cfg.model)["total"] * width
    shards = [stage_parameters(cfg.model, cfg.parallel, s).total * width
              for s in range(cfg.parallel.pipeline_parallel_size)]
    readers = cfg.rollout.num_engines if layout["rollout"]["needed"] else 0
    ws = cfg.rollout.weight_sync
    if ws.transport == "direct":
        return _direct_estimate(cfg, model, shards, readers, link_gb_s)
    rank0_in = max(model - shards[0], 0)
    rank0_out = readers * model
    return {
        "transport": "object_store",
        "model": model, "rank0_in": rank0_in, "rank0_out": rank0_out,
        "largest_sender": max(shards) if cfg.parallel.model_parallel_size
        * cfg.parallel.expert_parallel_size > 1 else 0,
        "seconds": (rank0_in + rank0_out) / (link_gb_s * 1e9),
        "rank0_host": model * (2 if ws.keeps_weights else 1),
        "rank_device": SYNC_RING_BUCKETS * min(ws.bucket_bytes, model),
        "readers": readers, "link_gb_s": link_gb_s,
    }


def _direct_estimate(cfg: UniaplConfig, model: int, shards: list[int], readers: int,
                     link_gb_s: float) -> dict[str, Any]:
    """:func:`sync_estimate` for ``transport: direct``: each stage's leader gathers its
    stage from its TP/EP peers (receiving all but its own part) and broadcasts the stage
    once to every engine worker (NCCL pipelines one broadcast through all receivers, so the
    leader's link carries the stage once); the stages send concurrently, so ``seconds`` is
    the largest stage over one link (the gathers, inside a stage, are not counted). Same
    keys, with ``rank0_*`` being stage 0's leader and ``largest_sender`` the largest stage;
    no object store (``rank0_host`` 0)."""
    from dataclasses import replace

    width = DTYPE_BYTES[cfg.model.params_dtype]
    unsharded = replace(cfg.parallel, tensor_parallel_size=1, expert_parallel_size=1,
                        context_parallel_size=1, sequence_parallel=False)
    stages = [stage_parameters(cfg.model, unsharded, s).total * width
              for s in range(len(shards))]
    gathered = [max(stage - own, 0) for stage, own in zip(stages, shards, strict=True)]
    slowest = max(stages)  # the gathers run inside a stage's nodes (NVLink): not counted
    ring = SYNC_RING_BUCKETS * min(cfg.rollout.weight_sync.bucket_bytes, model)
    return {"transport": "direct", "model": model, "rank0_in": gathered[0],
            "rank0_out": stages[0] if readers else 0, "largest_sender": max(stages),
            "seconds": slowest / (link_gb_s * 1e9) if readers else 0.0, "rank0_host": 0,
            "rank_device": ring, "readers": readers, "link_gb_s": link_gb_s,
            "senders": len(shards)}


def _sync_lines(sync: dict[str, Any]) -> list[str]:
    if not sync["readers"]:
        return ["Weight sync: no rollout engines"]
    gb = 1e9
    if sync["transport"] == "direct":
        return [
            f"Weight sync per step (direct: {sync['senders']} stage leader(s) broadcast to "
            f"{sync['readers']} engine(s); link {sync['link_gb_s']:.0f} GB/s)",
            f"  stage 0's leader (rank 0) gathers {sync['rank0_in'] / gb:.2f} GB from its "
            f"TP/EP peers and broadcasts {sync['rank0_out'] / gb:.2f} GB; the largest stage "
            f"is {sync['largest_sender'] / gb:.2f} GB",
            f"  time ≥ {sync['seconds']:.2f} s (the largest stage over one link; the "
            "gathers inside the stage and the loads add to it)",
            f"  peak during sync: no object store; each rank "
            f"{sync['rank_device'] / GIB:.2f} GiB of bucket buffers",
        ]
    return [
        f"Weight sync per step (object_store through global rank 0; link {sync['link_gb_s']:.0f}"
        " GB/s)",
        f"  rank 0 receives {sync['rank0_in'] / gb:.2f} GB of shards and sends "
        f"{sync['rank0_out'] / gb:.2f} GB to {sync['readers']} engine(s) "
        f"({sync['model'] / gb:.2f} GB of weights each)",
        f"  other ranks send their own shard: at most {sync['largest_sender'] / gb:.2f} GB",
        f"  time ≥ {sync['seconds']:.2f} s (rank 0's link; packing and loads add to it)",
        f"  peak during sync: rank 0 host {sync['rank0_host'] / GIB:.2f} GiB (object store), "
        f"each rank {sync['rank_device'] / GIB:.2f} GiB of bucket buffers",
    ]


# --------------------------------------------------------------------------- report


def _billions(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _stage_layers_text(counts: tuple[int, ...]) -> str:
    """``47 layers/stage`` (even split) or ``layers/stage 23/24/24/23`` (uneven)."""
    if len(set(counts)) == 1:
        return f"{counts[0]} layers/stage"
    return "layers/stage " + "/".join(map(str, counts))


def _layout_lines(layout: dict[str, Any], params: dict[str, int] | None) -> list[str]:
    t = layout["trainer"]
    lines = [f"Layout on {layout['world_size']} trainer GPU(s)"
             + (f" of {layout['total_gpus']}" if layout["total_gpus"] != layout["world_size"]
                else "")]
    moe = (f"; EP {t['ep']} ({t['experts_per_rank']} experts/rank), expert-DP {t['expert_dp']}"
           if t["experts_per_rank"] else "")
    lines.append(f"  trainer        TP {t['tp']} × PP {t['pp']} × CP {t['cp']} → DP {t['dp']}"
                 f"{moe}; {_stage_layers_text(t['stage_layers'])}"
                 + ("; sequence parallel" if t["sequence_parallel"] else ""))
    if params:
        active = f", {_billions(params['active'])} active" if params["active"] != \
            params["total"] else ""
        lines.append(f"  policy         {_billions(params['total'])} params "
                     f"({_billions(params['non_embedding'])} non-embedding{active}), "
                     f"{t['params_dtype']}")
    for s in layout["stages"]:
        parts = [f"{s['sft_rows']} SFT rows"]
        if s["pref_prompts"]:
            parts.append(f"{s['pref_prompts']} PREF prompts × {s['samples_per_prompt']} = "
                         f"{s['pref_rollouts']} rollouts")
        if s["sft_rollouts"]:
            parts.append(f"{s['sft_rows']} SFT prompts × {s['sft_samples_per_prompt']} = "
                         f"{s['sft_rollouts']} rollouts")
        lines.append(f"  {s['name']:<14} {s['steps']} steps; {'; '.join(parts)}")
        lines.append(f"  {'':<14} {s['train_rows']} rows/step → {s['rows_per_dp_rank']} per DP "
                     f"rank → ≤ {s['micro_batches_per_dp_rank']} micro-batches "
                     f"(rows ≤ {s['max_row_tokens']} tokens)")
    ref = layout["reference"]
    lines.append("  reference      " + ("not needed" if not ref["needed"] else
                                       "frozen policy copy, same layout"
                                       + (", offloaded" if ref["offload"] else "")))
    d = layout["discriminator"]
    lines.append("  discriminator  " + (f"{d['role']}: not needed" if not d["needed"] else
                                       f"{d['role']}, one TP {d['tp']} × PP {d['pp']} "
                                       f"replica: {d['processes']} process(es) on the "
                                       "trainer's GPUs" + (", offloaded" if d["offload"]
                                                          else "")))
    r = layout["rollout"]
    if not r["needed"]:
        lines.append("  rollout        not needed")
    elif r["engine"] == "torch":
        lines.append(f"  rollout        torch, {r['num_engines']} engine(s) on CPU")
    else:
        lines.append(f"  rollout        vllm, {r['num_engines']} engine(s) × TP {r['tp_each']} = "
                     f"{r['gpus']} GPUs, {r['placement']}"
                     + (", sleep mode on" if r["sleep_mode"] else ", sleep mode off"))
    return lines


def format_report(layout: dict[str, Any], memory: dict[str, Any]) -> str:
    """A readable multi-line report: the layout, then the memory table in GiB."""
    lines = _layout_lines(layout, memory.get("params"))
    lines.append("")
    lines.append(f"Memory per GPU, GiB (pipeline stage {memory['stage']}; "
                 f"GPU {memory['gpu_memory_gib']:.0f} GiB)")
    lines.append(f"  {'item':<26}{'training':>10}{'generation':>12}  note")
    for item in memory["items"]:
        lines.append(f"  {item['name']:<26}{item['training']:>10.2f}{item['generation']:>12.2f}"
                     f"  {item['note']}")
    lines.append(f"  {'total':<26}{memory['training_gib']:>10.2f}"
                 f"{memory['generation_gib']:>12.2f}")
    if len(memory["stage_totals_gib"]) > 1:
        lines.append("  per stage (training / generation): " + ", ".join(
            f"{s}: {t:.2f} / {g:.2f}" for s, (t, g) in enumerate(memory["stage_totals_gib"])))
    if memory.get("engine_weights_gib"):
        lines.append(f"  vLLM weights per engine GPU: {memory['engine_weights_gib']:.2f} GiB")
    verdict = "fits" if memory["fits"] else "DOES NOT FIT"
    lines.append(f"Peak {memory['peak_gib']:.2f} GiB ({memory['peak_phase']}) = "
                 f"{memory['fraction']:.0%} of {memory['gpu_memory_gib']:.0f} GiB: {verdict}")
    for warning in memory["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def dry_run(cfg: UniaplConfig, world_size: int, gpu_memory_gib: float = 80.0, *,
            total_gpus: int | None = None) -> str:
    """The layout, memory and weight-sync report of ``cfg`` on ``world_size`` GPUs of
    ``gpu_memory_gib`` GiB each (raises :class:`ConfigError` if the layout is impossible)."""
    memory = estimate_memory(cfg, world_size, gpu_memory_gib, total_gpus=total_gpus)
    sync = sync_estimate(cfg, memory["layout"])
    return "\n".join([format_report(memory["layout"], memory), "", *_sync_lines(sync)])
