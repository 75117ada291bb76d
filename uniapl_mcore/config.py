"""Typed configuration: one dataclass per component, YAML files, dotted command-line overrides.

A run's configuration is a :class:`RunConfig` whose sections (``model``, ``parallel``,
``optimizer``, ``train``, ``checkpoint``) are dataclasses of their own. Components take only
their own section; nothing reads a global config object.

Loading (:func:`load_config`) goes: YAML file (optional) → ``key.sub=value`` overrides →
strict conversion into dataclasses. Every failure raises :class:`ConfigError` whose one-line
message names the dotted field, e.g. ``train.max_step: unknown key (did you mean
'train.max_steps'?)``. All of it happens before any process group starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line naming the offending field."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field_path = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}" if field_path else message)

    def within(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` put before its field path."""
        path = f"{prefix}.{self.field_path}" if self.field_path else prefix
        return ConfigError(path, self.message)


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field_name`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field_name, message)


# --------------------------------------------------------------------------- sections

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


@dataclass
class ParallelConfig:
    """Parallel layout. The data-parallel size is derived: world / (tp·pp·cp).

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

    def check_world_size(self, world_size: int) -> None:
        """Fail with one line when ``world_size`` cannot host this layout."""
        mp = self.model_parallel_size
        check(world_size % mp == 0, "parallel",
              f"world size {world_size} is not divisible by tensor_parallel_size × "
              f"pipeline_parallel_size × context_parallel_size = {mp}")
        dp = world_size // mp
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


@dataclass
class OptimizerConfig:
    """AdamW through Megatron's optimizer, with a warmup + decay learning-rate schedule."""

    lr: float = 3e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True
    warmup_steps: int = 5
    lr_decay_style: Literal["constant", "linear", "cosine"] = "cosine"
    lr_decay_steps: int | None = None

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}]")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            check(0 <= getattr(self, name) < 1, name, "must be in [0, 1)")
        check(self.adam_eps > 0, "adam_eps", "must be > 0")
        check(self.clip_grad >= 0, "clip_grad", "must be >= 0 (0 disables clipping)")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(self.lr_decay_steps is None or self.lr_decay_steps > 0, "lr_decay_steps",
              "must be > 0 when set")


@dataclass
class TrainConfig:
    """Step count, seed, the rows per micro-batch of the common-width layout (pipeline
    parallel runs; without PP the trainer packs micro-batches by ``data.micro_batch_tokens``
    and evaluation batches ``micro_batch_size`` rows), and the PPO update schedule.

    ``mini_batches`` M: optimizer updates per rollout batch (the step's rows are split into
    M mini-batches, each its own loss with its own global denominators); ``epochs`` E: passes
    over the step's mini-batches. A step makes M·E optimizer updates; with M·E > 1 the
    importance ratio π_θ / π_old (π_old: the weights when the step began) leaves 1 after the
    first update and the PPO clip acts (``specs/objective.md`` §3.9).
    """

    max_steps: int = 80
    seed: int = 1234
    micro_batch_size: int = 2
    mini_batches: int = 1
    epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "mini_batches", "epochs"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per training step: M · E."""
        return self.mini_batches * self.epochs


@dataclass
class CheckpointConfig:
    """Training-state checkpoints under ``<run_dir>/checkpoints``.

    Each one's ``policy/`` carries ``hf/`` (config.json, tokenizer), so
    ``tools/convert_checkpoint.py mcore-to-hf`` turns it into a Hugging Face model.
    ``export_hf``: at the end of training also write the trained policy as a Hugging Face
    model (safetensors + config + tokenizer) to ``<run_dir>/hf``.
    """

    save_interval_steps: int = 0
    keep_last: int = 2
    save_at_end: bool = True
    export_hf: bool = False

    def __post_init__(self) -> None:
        check(self.save_interval_steps >= 0, "save_interval_steps", "must be >= 0 (0: never)")
        check(self.keep_last >= 1, "keep_last", "must be >= 1")


@dataclass
class RunConfig:
    """The whole run: one section per component."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        tp = self.parallel.tensor_parallel_size
        m = self.model
        check(m.num_attention_heads % tp == 0, "parallel.tensor_parallel_size",
              f"{tp} does not divide model.num_attention_heads={m.num_attention_heads}")
        check(m.num_query_groups % tp == 0 or tp % m.num_query_groups == 0,
              "parallel.tensor_parallel_size",
              f"{tp} and model.num_query_groups={m.num_query_groups} must divide one another")
        check(m.ffn_hidden_size % tp == 0, "parallel.tensor_parallel_size",
              f"{tp} does not divide model.ffn_hidden_size={m.ffn_hidden_size}")
        ep = self.parallel.expert_parallel_size
        check(ep == 1 or m.num_experts % ep == 0, "parallel.expert_parallel_size",
              f"{ep} does not divide model.num_experts={m.num_experts}")
        try:
            pipeline_stage_layers(m.num_layers, self.parallel)
        except ConfigError as err:
            raise err.within("parallel") from None
        check_fast_path(m, self.parallel, self.optimizer)

    def check_world_size(self, world_size: int) -> None:
        """Checks that need the world size; call before starting process groups."""
        self.parallel.check_world_size(world_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_fast_path(model: ModelConfig, parallel: ParallelConfig,
                    optimizer: OptimizerConfig) -> None:
    """Cross-section checks of the GPU fast-path switches (FP8 weights, overlapped
    communication, full recomputation); errors name the ``model.`` / ``parallel.`` field."""
    distributed = optimizer.use_distributed_optimizer
    check(not parallel.overlap_param_gather or distributed, "parallel.overlap_param_gather",
          "needs optimizer.use_distributed_optimizer (the gather is the distributed "
          "optimizer's)")
    check(not model.fp8.param or distributed, "model.fp8.param",
          "FP8 weights are all-gathered by the distributed optimizer: set "
          "optimizer.use_distributed_optimizer")
    if model.recompute.granularity != "full":
        return
    counts = pipeline_stage_layers(model.num_layers, parallel)
    where = "per pipeline stage" if len(set(counts)) == 1 else "of the smallest pipeline stage"
    check(model.recompute.num_layers <= min(counts), "model.recompute.num_layers",
          f"{model.recompute.num_layers} exceeds the {min(counts)} layers {where}")


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into ``("a.b", parsed value)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("", f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` in a nested dict (creating sections as needed)."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


#: YAML 1.1 words that PyYAML reads as booleans (``progress_bar: off`` is False).
_YAML_TRUE_WORDS = ("on", "yes", "true", "y")
_YAML_FALSE_WORDS = ("off", "no", "false", "n")


def _yaml_bool_word(value: Any, choices: tuple[Any, ...]) -> Any:
    """The choice a YAML boolean was spelt as, when ``choices`` hold exactly one word that
    YAML reads as that boolean (``on``/``off``, ``yes``/``no``); else ``value`` unchanged."""
    if not isinstance(value, bool) or value in choices:
        return value
    words = _YAML_TRUE_WORDS if value else _YAML_FALSE_WORDS
    matches = [c for c in choices if isinstance(c, str) and c.lower() in words]
    return matches[0] if len(matches) == 1 else value


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; only int→float and "3e-4"→float convert."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        candidates = [option for option in options if option is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own error, with its own (deeper) path
            return _convert(value, candidates[0], path)
        for option in candidates:
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        value = _yaml_bool_word(value, choices)
        if value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, choices))}; "
                                    f"got {value!r}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a section (mapping), got {value!r}")
        return build_dataclass(tp, value, path)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(path, f"expected float, got str {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(path, f"expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(path, f"expected int, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(path, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _over_section_default(f: dataclasses.Field, value: dict[str, Any]) -> dict[str, Any]:
    """A section given partially keeps the *containing* class's defaults for the rest (a
    config whose ``model`` default is a tiny policy stays that policy when one field of
    ``model`` is overridden), not the section class's own defaults."""
    if f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return value
    default = f.default_factory()  # type: ignore[misc]
    if not dataclasses.is_dataclass(default):
        return value
    return _deep_merge(dataclasses.asdict(default), value)


def _section_error(err: ConfigError, prefix: str) -> ConfigError:
    """``err`` of the section at ``prefix``, its path made whole. A sub-section that names its
    fields relative to its parent (``rollout``'s ``weight_sync.``, ``vllm.``, ``sampling.``)
    is not named twice (``rollout.vllm.max_model_len``, not ``rollout.vllm.vllm.…``)."""
    if not prefix:
        return err
    parent, _, name = prefix.rpartition(".")
    if err.field_path.startswith(f"{name}."):
        return err.within(parent) if parent else err
    return err.within(prefix)


def build_dataclass(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Strictly build dataclass ``cls`` from a mapping; errors name the dotted field.

    A key that is no field is an error; when the class's ``REMOVED_KEYS`` class attribute
    (``{name: what to do instead}``) lists it, the error says why it went. A value listed in
    ``REMOVED_VALUES`` (``{field: {value: reason}}``) is refused with its reason."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields and isinstance(value, dict):
            value = _over_section_default(fields[key], value)
        path = f"{prefix}.{key}" if prefix else str(key)
        removed = getattr(cls, "REMOVED_KEYS", {})
        if key not in names and key in removed:
            raise ConfigError(path, f"removed: {removed[key]}")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close \
                else f" (valid keys: {', '.join(names)})"
            raise ConfigError(path, f"unknown key{hint}")
        refused = getattr(cls, "REMOVED_VALUES", {}).get(key, {})
        if isinstance(value, str) and value in refused:
            raise ConfigError(path, f"{value!r} is not available: {refused[value]}")
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise _section_error(err, prefix) from None
    except ValueError as err:  # sections that validate with plain ValueError
        raise ConfigError(prefix, str(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls: type[T] = RunConfig) -> T:  # type: ignore[assignment]
    """Load ``cls`` from an optional YAML file plus ``key.sub=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError("", f"cannot read config file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError("", f"{path}{where}: invalid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("", f"{path}: top level must be a mapping of sections")
        data = loaded or {}
    apply_overrides(data, list(overrides or []))
    try:
        return build_dataclass(cls, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(err.field_path, f"{err.message} [in {path}]") from None
        raise


def dump_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (used to record each run's resolved config)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
