"""Declarative HF ↔ Megatron-Core tensor mapping: rules and the transforms they name.

A :class:`TensorRule` ties one Megatron-Core checkpoint key to the Hugging Face tensors it is
built from, with a *kind* that says how:

``copy``    one HF tensor, same values (norms, o_proj, down_proj, router …)
``qkv``     HF q, k, v (weights [n·d, H] or biases [n·d]) → Megatron's per-group interleave
            [q of group g (hpg·d) | k of g (d) | v of g (d)] for g = 0..ng−1
``gated``   HF gate and up → [gate; up] (Megatron's SwiGLU fc1 layout at any TP)
``vocab``   embedding / output layer: stored with the true vocabulary ``V`` rows; Megatron
            zero-pads to its padded size on load and the export keeps the first ``V`` rows

Keys are the ones Megatron writes to ``torch_dist`` checkpoints (Transformer Engine names;
the local spec maps its own names onto them). Per-layer tensors are stacked along a leading
layer axis under ``decoder.layers.<suffix>``; their HF names carry ``{layer}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["copy", "qkv", "gated", "vocab"]
_ARITY = {"copy": 1, "qkv": 3, "gated": 2, "vocab": 1}


@dataclass(frozen=True)
class TensorRule:
    """One Megatron checkpoint key and the HF tensors it maps to."""

    mcore: str
    hf: tuple[str, ...]
    kind: Kind = "copy"

    def __post_init__(self) -> None:
        if len(self.hf) != _ARITY[self.kind]:
            raise ValueError(f"rule {self.mcore}: kind {self.kind!r} takes {_ARITY[self.kind]} "
                             f"HF names, got {self.hf}")

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.hf[0]

    @property
    def per_expert(self) -> bool:
        return "{expert}" in self.hf[0]

    def stack_dims(self, num_layers: int, num_experts: int) -> tuple[int, ...]:
        """Leading axes Megatron stacks this key along: (), (L,) or (L, E)."""
        return (num_layers, num_experts)[: int(self.per_layer) + int(self.per_expert)]

    def hf_names(self, layer: int | None = None, expert: int | None = None) -> tuple[str, ...]:
        return tuple(name.format(layer=layer, expert=expert) for name in self.hf)

    def positions(self, num_layers: int, num_experts: int) -> list[tuple[int, ...]]:
        """Every index into the stacked axes, in order: [()] / [(l,)] / [(l, e)]."""
        import itertools

        return list(itertools.product(*(range(n) for n in self.stack_dims(num_layers,
                                                                          num_experts))))


@dataclass(frozen=True)
class AttentionShape:
    """Head layout: ``num_heads`` query heads, ``num_query_groups`` KV heads of ``head_dim``."""

    num_heads: int
    num_query_groups: int
    head_dim: int

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_query_groups


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              shape: AttentionShape, out: torch.Tensor | None = None) -> torch.Tensor:
    """HF q [nh·d, …], k [ng·d, …], v [ng·d, …] → Megatron linear_qkv [(nh + 2ng)·d, …]
    (written into ``out``, a contiguous tensor of that shape, when given)."""
    ng, d, hpg = shape.num_query_groups, shape.head_dim, shape.heads_per_group
    rest = q.shape[1:]
    parts = [q.reshape(ng, hpg * d, *rest), k.reshape(ng, d, *rest), v.reshape(ng, d, *rest)]
    if out is not None:
        torch.cat(parts, dim=1, out=out.view(ng, (hpg + 2) * d, *rest))
        return out
    return torch.cat(parts, dim=1).reshape(ng * (hpg + 2) * d, *rest)


def split_qkv(qkv: torch.Tensor, shape: AttentionShape
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_qkv`: Megatron [(nh + 2ng)·d, …] → HF q, k, v."""
    ng, d, hpg = shape.num_query_groups, shape.head_dim, shape.heads_per_group
    rest = qkv.shape[1:]
    groups = qkv.reshape(ng, hpg + 2, d, *rest)
    q = groups[:, :hpg].reshape(ng * hpg * d, *rest)
    k = groups[:, hpg].reshape(ng * d, *rest)
    v = groups[:, hpg + 1].reshape(ng * d, *rest)
    return q, k, v


def to_mcore(rule: TensorRule, hf_tensors: list[torch.Tensor], shape: AttentionShape,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Build the Megatron tensor of ``rule`` (one layer's slice) from its HF tensors.

    ``out``: a contiguous tensor of the result's shape to merge into (fused rules only; a
    single-tensor rule returns its input).
    """
    if rule.kind == "qkv":
        return merge_qkv(*hf_tensors, shape=shape, out=out)
    if rule.kind == "gated":
        return torch.cat(hf_tensors, dim=0, out=out) if out is not None else \
            torch.cat(hf_tensors, dim=0)
    return hf_tensors[0]


def to_hf(rule: TensorRule, tensor: torch.Tensor, shape: AttentionShape,
          vocab_size: int) -> list[torch.Tensor]:
    """Split one layer's Megatron tensor of ``rule`` into its HF tensors (same order).

    The results may be non-contiguous views of ``tensor``; writers copy them once anyway.
    """
    if rule.kind == "qkv":
        return list(split_qkv(tensor, shape))
    if rule.kind == "gated":
        return list(tensor.chunk(2, dim=0))
    if rule.kind == "vocab":
        return [tensor[:vocab_size]]
    return [tensor]
