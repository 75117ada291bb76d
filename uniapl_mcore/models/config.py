"""The model section of a run: a Qwen3-style decoder's shape, dtype and GPU fast-path switches.

:class:`ModelConfig` is what every model bundle (``models/registry.py``) converts to and from a
Hugging Face ``config.json``, and what :func:`uniapl_mcore.models.gpt.build_gpt` builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from uniapl_mcore.config import check

#: Parameter dtypes a model can be built in.
DTYPES = ("float32", "bfloat16", "float16")

#: FP8 scaling recipes (Megatron-Core 0.16 ``TransformerConfig.fp8_recipe`` names).
FP8_RECIPES = ("none", "delayed", "tensorwise", "blockwise", "mxfp8")
#: Sub-modules that selective recomputation can checkpoint in this architecture.
RECOMPUTE_MODULES = ("core_attn", "mlp", "moe", "moe_act", "layernorm")
#: Of those, the ones only Transformer Engine layers implement.
TE_ONLY_RECOMPUTE_MODULES = ("layernorm", "moe_act")


@dataclass
class Fp8Config:
    """FP8 matrix multiplies through Transformer Engine (Hopper / Blackwell GPUs).

    Attributes:
        recipe: ``none`` (off); ``delayed`` (one scale per tensor from an amax history);
            ``tensorwise`` (one scale per tensor from the current amax: "current scaling");
            ``blockwise`` (1×128 activation / 128×128 weight blocks, Hopper, TE ≥ 2.3);
            ``mxfp8`` (32-element blocks with e8m0 scales, Blackwell only).
        format: ``hybrid`` (e4m3 forward, e5m2 gradients) or ``e4m3`` everywhere.
        margin, amax_history_len, amax_compute_algo: the delayed recipe's scale: a scale
            ``2**margin`` below the one that fits the max (``max``) or latest
            (``most_recent``) amax of the last ``amax_history_len`` steps.
        param: keep the GEMM weights in FP8 (less memory) and all-gather them in FP8 in the
            distributed optimizer; needs ``optimizer.use_distributed_optimizer``.

    Embedding, output layer, norms and attention softmax stay in ``params_dtype``.
    """

    recipe: Literal["none", "delayed", "tensorwise", "blockwise", "mxfp8"] = "none"
    format: Literal["e4m3", "hybrid"] = "hybrid"
    margin: int = 0
    amax_history_len: int = 1024
    amax_compute_algo: Literal["max", "most_recent"] = "max"
    param: bool = False

    def __post_init__(self) -> None:
        check(self.margin >= 0, "margin", f"must be >= 0, got {self.margin}")
        check(self.amax_history_len >= 1, "amax_history_len",
              f"must be >= 1, got {self.amax_history_len}")
        check(not self.param or self.enabled, "param", "needs an FP8 recipe (recipe is 'none')")

    @property
    def enabled(self) -> bool:
        return self.recipe != "none"


@dataclass
class RecomputeConfig:
    """Activation recomputation: keep fewer activations, recompute them in backward.

    Attributes:
        granularity: ``none``; ``selective`` (checkpoint only ``modules`` inside every
            layer); ``full`` (keep each checkpointed layer's input only, recompute the layer).
        method: ``full`` only. ``uniform``: checkpoint every group of ``num_layers``
            consecutive layers (1: every layer); ``block``: recompute only the first
            ``num_layers`` layers of each pipeline stage, keep the rest.
        num_layers: ``full`` only (layers, ≤ layers per pipeline stage).
        modules: ``selective`` only: ``core_attn`` (attention core), ``mlp`` (dense MLP),
            ``moe`` (whole MoE block), ``moe_act`` (expert activation), ``layernorm`` (both
            norms); the last two need Transformer Engine layers.

    Recomputation changes no numerics (same kernels, same RNG states).
    """

    granularity: Literal["none", "selective", "full"] = "none"
    method: Literal["uniform", "block"] = "uniform"
    num_layers: int = 1
    modules: list[str] = field(default_factory=lambda: ["core_attn"])

    def __post_init__(self) -> None:
        check(self.num_layers >= 1, "num_layers", f"must be >= 1, got {self.num_layers}")
        unknown = [m for m in self.modules if m not in RECOMPUTE_MODULES]
        check(not unknown, "modules", f"unknown module(s) {', '.join(map(repr, unknown))}; "
                                      f"choose from {', '.join(map(repr, RECOMPUTE_MODULES))}")
        check(self.granularity != "selective" or bool(self.modules), "modules",
              "selective recomputation needs at least one module")

    @property
    def enabled(self) -> bool:
        return self.granularity != "none"

    def transformer_kwargs(self) -> dict[str, Any]:
        """The ``TransformerConfig`` fields (``recompute_*``) this section sets."""
        if self.granularity == "full":
            return {"recompute_granularity": "full", "recompute_method": self.method,
                    "recompute_num_layers": self.num_layers}
        if self.granularity == "selective":
            return {"recompute_granularity": "selective",
                    "recompute_modules": list(self.modules)}
        return {}


@dataclass
class ModelConfig:
    """A Qwen3-style decoder (GQA, qk-norm, RMSNorm, SwiGLU, RoPE). Defaults: a tiny model.

    ``head_dim`` is the per-head width in elements (may differ from hidden/heads, as in
    Qwen3); ``max_position_embeddings`` and sequence lengths are in tokens.
    """

    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: int = 2
    head_dim: int = 16
    vocab_size: int = 128
    max_position_embeddings: int = 512
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    init_std: float = 0.02
    params_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    make_vocab_size_divisible_by: int = 1
    #: Mixture of experts (0: dense). Every layer is MoE (Qwen3-MoE); top-k routed experts of
    #: width ``moe_ffn_hidden_size``; ``moe_norm_topk_prob`` renormalises the top-k weights.
    #: Reward model: the output layer is a value head hidden → 1 (POLAR's ``v_head``), read
    #: at the last position, which holds ``reward_token_id``.
    value_head: bool = False
    reward_token_id: int | None = None
    num_experts: int = 0
    moe_router_topk: int = 2
    moe_ffn_hidden_size: int = 0
    moe_norm_topk_prob: bool = True
    moe_aux_loss_coeff: float = 0.0
    #: How the layers compute (GPU fast path; both off by default): FP8 GEMMs, which need
    #: ``transformer_impl: transformer_engine`` and ``params_dtype: bfloat16``, and
    #: activation recomputation.
    fp8: Fp8Config = field(default_factory=Fp8Config)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.fp8, dict):  # built in code from a plain mapping
            self.fp8 = Fp8Config(**self.fp8)
        if isinstance(self.recompute, dict):
            self.recompute = RecomputeConfig(**self.recompute)
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_query_groups", "head_dim", "vocab_size", "max_position_embeddings"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(self.num_attention_heads % self.num_query_groups == 0, "num_query_groups",
              f"{self.num_query_groups} must divide num_attention_heads="
              f"{self.num_attention_heads}")
        check(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")
        check(self.rms_norm_eps > 0, "rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}")
        check(self.init_std > 0, "init_std", f"must be > 0, got {self.init_std}")
        check(self.make_vocab_size_divisible_by >= 1, "make_vocab_size_divisible_by",
              "must be >= 1")
        check(not (self.value_head and self.tie_word_embeddings), "tie_word_embeddings",
              "a value-head (reward) model cannot tie its output layer to the embeddings")
        if self.num_experts:
            check(0 < self.moe_router_topk <= self.num_experts, "moe_router_topk",
                  f"must be in [1, num_experts={self.num_experts}]")
            check(self.moe_ffn_hidden_size > 0, "moe_ffn_hidden_size",
                  "must be > 0 for a mixture-of-experts model")
            check(self.moe_aux_loss_coeff >= 0, "moe_aux_loss_coeff", "must be >= 0")
        self._check_fast_path()

    def _check_fast_path(self) -> None:
        """FP8 and recomputation settings against the rest of the architecture."""
        if self.fp8.enabled:
            check(self.transformer_impl == "transformer_engine", "fp8.recipe",
                  f"{self.fp8.recipe!r} runs in Transformer Engine layers: set "
                  f"transformer_impl to 'transformer_engine' (got {self.transformer_impl!r})")
            check(self.params_dtype == "bfloat16", "fp8.recipe",
                  f"FP8 training runs on top of bf16 mixed precision: set params_dtype to "
                  f"'bfloat16' (got {self.params_dtype!r})")
        if self.recompute.granularity != "selective":
            return
        modules = set(self.recompute.modules)
        te_only = sorted(modules & set(TE_ONLY_RECOMPUTE_MODULES))
        check(not te_only or self.transformer_impl != "local", "recompute.modules",
              f"{', '.join(te_only)} recomputation needs Transformer Engine layers "
              "(transformer_impl is 'local')")
        moe_only = sorted(modules & {"moe", "moe_act"})
        check(not moe_only or self.num_experts > 0, "recompute.modules",
              f"{', '.join(moe_only)} applies to mixture-of-experts models (num_experts is 0)")
        check("mlp" not in modules or not self.num_experts, "recompute.modules",
              "'mlp' is the dense MLP; this model's MLP is a mixture of experts: use 'moe'")

    def padded_vocab_size(self, tensor_parallel_size: int) -> int:
        """Rows of the embedding / output layer: the smallest multiple of
        ``make_vocab_size_divisible_by × tensor_parallel_size`` that holds ``vocab_size``.

        Padding rows are zero when loaded from a checkpoint; logits beyond ``vocab_size``
        must be ignored (the losses and samplers mask them).
        """
        multiple = self.make_vocab_size_divisible_by * tensor_parallel_size
        return -(-self.vocab_size // multiple) * multiple
