"""A Qwen3-style Megatron-Core ``GPTModel`` (GQA, qk-norm, RMSNorm, SwiGLU, RoPE) from a config.

The model is plain Megatron-Core: :func:`transformer_config` maps our :class:`ModelConfig`
onto ``TransformerConfig``; :func:`layer_spec` picks the Transformer Engine spec when
``transformer_engine`` imports (and the config allows it), the local spec otherwise;
:func:`build_gpt_model` builds this rank's pipeline stage. Parallelism (DDP wrapping,
optimizer) is applied elsewhere (``uniapl_mcore.megatron.model``).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from uniapl_mcore.config import ConfigError
from uniapl_mcore.models.config import TE_ONLY_RECOMPUTE_MODULES, ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` → ``torch.bfloat16`` (names as in :data:`~.config.DTYPES`)."""
    return _TORCH_DTYPES[name]


def te_available() -> bool:
    """Whether Transformer Engine's PyTorch extension can be imported here."""
    if importlib.util.find_spec("transformer_engine") is None or not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError) as err:
        logger.warning("transformer_engine is installed but does not import: %s", err)
        return False
    return True


def use_transformer_engine(model: ModelConfig) -> bool:
    """Resolve ``transformer_impl`` ("auto" → TE when it imports)."""
    if model.transformer_impl == "local":
        return False
    available = te_available()
    if model.transformer_impl == "transformer_engine" and not available:
        raise RuntimeError("model.transformer_impl=transformer_engine but transformer_engine "
                           "(with CUDA) is not available on this machine")
    return available


def fp8_support(recipe: str) -> tuple[bool, str]:
    """Whether this machine can run FP8 ``recipe`` (a :data:`~.config.FP8_RECIPES`
    name other than ``none``), and why not: Transformer Engine must import with CUDA, and the
    GPU must support the recipe (FP8: compute capability ≥ 8.9; blockwise: Hopper with a
    recent CUDA; mxfp8: Blackwell), as Transformer Engine itself reports it."""
    if not te_available():
        return False, "Transformer Engine (with CUDA) is not available on this machine"
    import transformer_engine.pytorch as te

    probe = _TE_FP8_PROBES[recipe]
    check_fn = getattr(te, probe[0], None)
    if check_fn is not None:  # newer TE: te.is_*_available(return_reason=True)
        available, reason = check_fn(return_reason=True)
        return bool(available), str(reason or "")
    try:  # older TE: transformer_engine.pytorch.fp8.check_*_support() -> (bool, reason)
        from transformer_engine.pytorch import fp8 as te_fp8
    except ImportError:
        return False, "this Transformer Engine version exposes no FP8 support check"
    legacy = getattr(te_fp8, probe[1], None)
    if legacy is None:
        return False, f"this Transformer Engine version has no {recipe!r} recipe"
    available, reason = legacy()
    return bool(available), str(reason or "")


#: recipe -> (newer TE's availability function, older TE's ``fp8`` module check function)
_TE_FP8_PROBES = {
    "delayed": ("is_fp8_available", "check_fp8_support"),
    "tensorwise": ("is_fp8_available", "check_fp8_support"),
    "blockwise": ("is_fp8_block_scaling_available", "check_fp8_block_scaling_support"),
    "mxfp8": ("is_mxfp8_available", "check_mxfp8_support"),
}


def _fast_path_kwargs(model: ModelConfig) -> dict[str, Any]:
    """``TransformerConfig`` fields for FP8 and activation recomputation (empty when off).

    Raises:
        RuntimeError: FP8 requested where Transformer Engine or the GPU cannot run it.
        ConfigError: a Transformer-Engine-only recompute module without TE layers.
    """
    kwargs = model.recompute.transformer_kwargs()
    if model.recompute.granularity == "selective":
        te_only = sorted(set(model.recompute.modules) & set(TE_ONLY_RECOMPUTE_MODULES))
        if te_only and not use_transformer_engine(model):
            raise ConfigError("model.recompute.modules",
                              f"{', '.join(te_only)} recomputation needs Transformer Engine "
                              "layers, which are not available here")
    fp8 = model.fp8
    if not fp8.enabled:
        return kwargs
    available, reason = fp8_support(fp8.recipe)
    if not available:
        raise RuntimeError(f"model.fp8.recipe={fp8.recipe} cannot run here: {reason}")
    kwargs.update(fp8=fp8.format, fp8_recipe=fp8.recipe, fp8_margin=fp8.margin,
                  fp8_amax_history_len=fp8.amax_history_len,
                  fp8_amax_compute_algo=fp8.amax_compute_algo, fp8_param=fp8.param)
    return kwargs


def transformer_config(model: ModelConfig, parallel: ParallelConfig, **overrides: Any):
    """Megatron ``TransformerConfig`` for ``model`` under ``parallel``.

    Dropout is 0 (Qwen3 trains without it); on CPU, weights are initialised on CPU so that
    every layout draws the same master weights. ``model.fp8`` and ``model.recompute`` map
    onto the ``fp8*`` and ``recompute_*`` fields, an uneven pipeline split onto
    ``num_layers_in_{first,last}_pipeline_stage``. ``overrides`` pass through verbatim.
    """
    from megatron.core.transformer import TransformerConfig

    if parallel.sequence_parallel and not use_transformer_engine(model):
        raise ConfigError("parallel.sequence_parallel",
                          "needs Transformer Engine layers (Megatron's local norm layers do not "
                          "support sequence parallelism), which are not available here")
    dtype = torch_dtype(model.params_dtype)
    # With Transformer Engine (GPU) use Megatron's default fused kernels: TE's fused RoPE,
    # the jit-fused SwiGLU and residual add. Off on CPU (local layers, bit-exact parity).
    fused = use_transformer_engine(model)
    kwargs: dict[str, Any] = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=model.rms_norm_eps,
        qk_layernorm=model.qk_norm,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=model.qkv_bias,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=fused,
        gradient_accumulation_fusion=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model.init_std,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=parallel.tensor_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        pipeline_dtype=dtype,
        use_cpu_initialization=not torch.cuda.is_available(),
        calculate_per_token_loss=True,
    )
    kwargs.update(_pipeline_kwargs(model, parallel))
    if model.num_experts:
        kwargs.update(_moe_kwargs(model, parallel))
    kwargs.update(_fast_path_kwargs(model))
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def _pipeline_kwargs(model: ModelConfig, parallel: ParallelConfig) -> dict[str, Any]:
    """Megatron's uneven-pipeline fields (``num_layers_in_{first,last}_pipeline_stage``) for
    the split :func:`~uniapl_mcore.runtime.layout.pipeline_stage_layers` resolves; none for an even
    split. Both end stages are always given, so Megatron's middle stages get exactly the
    resolved count.

    Raises:
        ConfigError: the split is impossible (field under ``parallel.``).
    """
    try:
        counts = pipeline_stage_layers(model.num_layers, parallel)
    except ConfigError as err:
        raise err.within("parallel") from None
    if len(set(counts)) == 1:
        return {}
    return {"num_layers_in_first_pipeline_stage": counts[0],
            "num_layers_in_last_pipeline_stage": counts[-1]}


def _moe_kwargs(model: ModelConfig, parallel: ParallelConfig) -> dict[str, Any]:
    """Megatron MoE settings for a Qwen3-MoE-style block (softmax router, no shared expert).

    HF renormalises the top-k softmax weights when ``norm_topk_prob``; Megatron's equivalent
    is top-k on the logits then softmax (``moe_router_pre_softmax=False``).
    """
    te = use_transformer_engine(model)
    return dict(
        num_moe_experts=model.num_experts,
        moe_router_topk=model.moe_router_topk,
        moe_ffn_hidden_size=model.moe_ffn_hidden_size,
        moe_router_pre_softmax=not model.moe_norm_topk_prob,
        moe_router_score_function="softmax",
        moe_router_load_balancing_type="aux_loss" if model.moe_aux_loss_coeff else "none",
        moe_aux_loss_coeff=model.moe_aux_loss_coeff,
        moe_grouped_gemm=te,
        moe_token_dispatcher_type="alltoall" if torch.cuda.is_available() else "allgather",
        expert_tensor_parallel_size=1,
        moe_router_dtype="fp32",
    )


def layer_spec(model: ModelConfig):
    """The transformer layer ``ModuleSpec``: Transformer Engine's or Megatron's local one."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    experts = model.num_experts or None
    if use_transformer_engine(model):
        return specs.get_gpt_layer_with_transformer_engine_spec(
            num_experts=experts, moe_grouped_gemm=bool(experts), qk_layernorm=model.qk_norm)
    spec = specs.get_gpt_layer_local_spec(num_experts=experts, moe_grouped_gemm=False,
                                          qk_layernorm=model.qk_norm, normalization="RMSNorm")
    if experts:
        # With MoE the pre-MLP norm is a module of its own in the TE spec too (no fused fc1
        # norm), so keep its checkpoint key instead of renaming it to the fused one.
        keys_map = dict(spec.submodules.sharded_state_dict_keys_map)
        keys_map.pop("pre_mlp_layernorm.", None)
        spec.submodules.sharded_state_dict_keys_map = keys_map
    return spec


def build_gpt_model(model: ModelConfig, config, pre_process: bool, post_process: bool,
                    vp_stage: int | None = None):
    """This rank's stage of the policy ``GPTModel``.

    Args:
        model: architecture section.
        config: the ``TransformerConfig`` from :func:`transformer_config`.
        pre_process / post_process: whether the stage holds the embedding / output layer.
    Returns:
        ``megatron.core.models.gpt.GPTModel`` on this rank's device (CPU or current CUDA),
        wrapped in Megatron's ``Float16Module`` when the config is bf16 / fp16.
    """
    from megatron.core.models.gpt import GPTModel

    gpt = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model),
        vocab_size=model.padded_vocab_size(config.tensor_model_parallel_size),
        max_sequence_length=model.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=model.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=model.rope_theta,
        vp_stage=vp_stage,
    )
    if model.value_head and post_process:
        if config.sequence_parallel:
            raise ConfigError("parallel.sequence_parallel", "not supported for value-head "
                                                            "(reward) models")
        gpt.output_layer = ValueHead(model.hidden_size, config.params_dtype)
    if torch.cuda.is_available():
        gpt.cuda(torch.cuda.current_device())
    if config.bf16 or config.fp16:
        # Megatron's mixed precision: every parameter (norms included) in bf16/fp16, inputs
        # cast on the first stage and outputs back to fp32 on the last; the optimizer keeps
        # fp32 main copies.
        from megatron.core.transformer.module import Float16Module

        return Float16Module(config, gpt)
    return gpt


class ValueHead(torch.nn.Module):
    """A scalar head (hidden → 1, no bias) in place of GPTModel's vocabulary output layer.

    Replicated on every tensor-parallel rank (one output cannot be split), so its
    checkpoint key stays ``output_layer.weight`` [1, hidden]. Called like Megatron's output
    layer: ``(hidden [s, b, h], weight=None, runtime_gather_output=None) → (scores [s, b, 1],
    None)``.
    """

    def __init__(self, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, hidden_size, dtype=dtype))
        self.sequence_parallel = False

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor | None = None,
                runtime_gather_output: bool | None = None) -> tuple[torch.Tensor, None]:
        return torch.nn.functional.linear(hidden, self.weight), None
