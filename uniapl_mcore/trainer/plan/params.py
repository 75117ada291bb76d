"""Parameter counts (elements) of a :class:`ModelConfig` as Megatron builds it, per rank of
a parallel layout or for the whole model."""

from __future__ import annotations

from dataclasses import dataclass

from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers

#: Bytes per element of each parameter dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ParamCount:
    """Parameters held by one GPU (elements): ``dense`` (everything but routed experts)
    and ``expert`` (routed-expert weights, sharded over EP and optimised over expert-DP)."""

    dense: int
    expert: int

    @property
    def total(self) -> int:
        return self.dense + self.expert


@dataclass(frozen=True)
class ModelParams:
    """Whole-model parameter counts (elements, unpadded layout: TP = PP = EP = 1)."""

    #: every parameter
    total: int
    #: the input embedding plus an untied vocabulary output layer
    embedding: int
    #: ``total - embedding``
    non_embedding: int
    #: used per token: only ``top-k`` of the routed experts count (= total for dense models)
    active: int
    #: all routed-expert weights
    expert: int


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
    ``etp`` (None: ``tp``; no shared expert).
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
                             parallel.expert_tensor_parallel_size)
    layers = pipeline_stage_layers(model.num_layers, parallel)[stage]
    dense = layers * layer.dense
    if stage == 0:
        dense += embedding_parameters(model, tp)
    if stage == pp - 1:
        dense += head_parameters(model, tp, pp)
    return ParamCount(dense, layers * layer.expert)


def count_parameters(model: ModelConfig) -> ModelParams:
    """Whole-model parameter counts (elements; see :class:`ModelParams`)."""
    whole = stage_parameters(model, ParallelConfig(), 0)
    embedding = embedding_parameters(model)
    if not model.tie_word_embeddings and not model.value_head:
        embedding *= 2
    expert_each = 3 * model.moe_ffn_hidden_size * model.hidden_size
    inactive = model.num_layers * (model.num_experts - model.moe_router_topk) * expert_each \
        if model.num_experts else 0
    return ModelParams(total=whole.total, embedding=embedding,
                       non_embedding=whole.total - embedding, active=whole.total - inactive,
                       expert=whole.expert)


def format_params(n: float) -> str:
    """A parameter count for reports: ``1.234 B`` from 10^8 up, else ``12.34 M``."""
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
