"""A lean batched decoder over a Hugging Face dense decoder's own parameters.

The torch engine's hot loop is one forward per generated token for a few dozen rows. At the
sizes it serves (CPU, small GPUs) that forward is dominated by per-call overhead, not FLOPs:
Hugging Face's generic forward builds masks and cache objects every step and its dynamic
KV cache grows by concatenation. :class:`StaticDecoder` runs the same arithmetic directly
on the model's parameters:

- one preallocated KV cache per layer, ``[B, kv_heads, prompt_width + max_new_tokens,
  head_dim]``, written in place (no concatenation);
- q/k/v and gate/up projections fused into one matmul each (concatenated weights, rebuilt
  whenever the engine's weights change: :meth:`refresh`);
- rotary embeddings from the model's own ``rotary_emb`` module (so its scaling variants
  apply unchanged), RMSNorm in float32 as the model computes it.

It supports the dense Llama-style families whose attention and MLP match that layout
(``qwen3``, ``qwen2``, ``llama`` with SiLU MLPs, no sliding window); :func:`supports` says
whether a model qualifies and the engine falls back to the model's own forward otherwise
(e.g. Qwen3-MoE). Its log-probs equal the model's own forward to float rounding
(``tests/rollout/test_engine.py``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_FAMILIES = ("qwen3", "qwen2", "llama")


def supports(model) -> bool:
    """Whether ``model`` (an HF ``*ForCausalLM``) has the layout :class:`StaticDecoder` runs."""
    config = model.config
    if getattr(config, "model_type", None) not in _FAMILIES:
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return False
    inner = getattr(model, "model", None)
    return inner is not None and hasattr(inner, "rotary_emb") and hasattr(model, "lm_head")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32 and cast back (as the HF models do)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` [B, H, T, D] with ``cos``/``sin`` [B, 1, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class _Layer:
    """One decoder layer's parameters, with fused q/k/v and gate/up weights."""

    def __init__(self, layer) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.qkv_weight = torch.cat([p.weight for p in projections])
        biases = [p.bias for p in projections]
        self.qkv_bias = torch.cat(biases) if all(b is not None for b in biases) else None
        self.q_size = attn.q_proj.weight.shape[0]
        self.kv_size = attn.k_proj.weight.shape[0]
        self.o_weight, self.o_bias = attn.o_proj.weight, attn.o_proj.bias
        self.q_norm = getattr(attn, "q_norm", None)
        self.k_norm = getattr(attn, "k_norm", None)
        self.gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        self.ffn = mlp.gate_proj.weight.shape[0]
        self.down = mlp.down_proj.weight
        self.input_norm = layer.input_layernorm.weight
        self.post_norm = layer.post_attention_layernorm.weight


class StaticDecoder:
    """Prefill + one-token decode steps with a preallocated KV cache.

    ``model``: an HF dense decoder that :func:`supports` accepts (its parameters are read,
    never modified). Call :meth:`refresh` after the model's weights change.
    """

    def __init__(self, model) -> None:
        if not supports(model):
            raise ValueError(f"StaticDecoder does not support {type(model).__name__}")
        self.model = model
        config = model.config
        self.eps = float(config.rms_norm_eps)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None)
                            or config.hidden_size // config.num_attention_heads)
        self.scale = self.head_dim ** -0.5
        self.layers: list[_Layer] = []
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._length = 0
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Rebuild the fused weights from the model's current parameters."""
        self.layers = [_Layer(layer) for layer in self.model.model.layers]

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int
                ) -> torch.Tensor:
        """Run the left-padded prompts and allocate the cache for ``max_new_tokens`` more.

        ``ids``, ``mask``: int64 [B, L] (mask 1 on real tokens, padding on the left).
        Returns the last position's logits, float32 [B, V].
        """
        batch, width = ids.shape
        total = width + max_new_tokens
        param = self.model.lm_head.weight
        self._cache = [
            (param.new_empty(batch, self.kv_heads, total, self.head_dim),
             param.new_empty(batch, self.kv_heads, total, self.head_dim))
            for _ in self.layers]
        self._valid = torch.zeros(batch, total, dtype=torch.bool, device=ids.device)
        self._valid[:, :width] = mask.bool()
        self._positions = (mask.cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        # a padding query attends to itself only, so no row of the mask is empty
        attend = (causal[None] & mask.bool()[:, None, :]) | torch.eye(
            width, dtype=torch.bool, device=ids.device)[None]
        self._length = 0
        hidden = self._forward(ids, self._positions, attend[:, None])
        return self._logits(hidden[:, -1])

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (int64 [B]); returns the next logits, float32 [B, V]."""
        self._valid[:, self._length] = True
        self._positions = self._positions[:, -1:] + 1
        keys = self._valid[:, None, None, :self._length + 1]
        bias = torch.zeros(keys.shape, dtype=torch.float32, device=tokens.device)
        hidden = self._forward(tokens[:, None], self._positions,
                               bias.masked_fill_(~keys, float("-inf")))
        return self._logits(hidden[:, -1])

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        normed = _rms_norm(hidden, self.model.model.norm.weight, self.eps)
        return F.linear(normed, self.model.lm_head.weight).float()

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor,
                 attend: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, h] of ``ids`` [B, T] at ``positions`` [B, T]; ``attend``
        says which cached keys (this call's included) each query sees: bool
        [B, 1, T, keys] (prefill) or, for one query per row, an additive float32 bias
        [B, 1, 1, keys] (0 or -inf)."""
        hidden = self.model.model.embed_tokens(ids)
        cos, sin = self.model.model.rotary_emb(hidden, positions)
        cos, sin = cos[:, None], sin[:, None]
        start, steps = self._length, ids.shape[1]
        for layer, (k_cache, v_cache) in zip(self.layers, self._cache, strict=True):
            hidden = hidden + self._attention(layer, hidden, cos, sin, k_cache, v_cache,
                                              start, attend)
            normed = _rms_norm(hidden, layer.post_norm, self.eps)
            gate, up = F.linear(normed, layer.gate_up).split(layer.ffn, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down)
        self._length = start + steps
        return hidden

    def _attention(self, layer: _Layer, hidden: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   start: int, attend: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = hidden.shape
        normed = _rms_norm(hidden, layer.input_norm, self.eps)
        qkv = F.linear(normed, layer.qkv_weight, layer.qkv_bias)
        q, k, v = qkv.split((layer.q_size, layer.kv_size, layer.kv_size), dim=-1)
        q = q.view(batch, steps, self.heads, self.head_dim)
        k = k.view(batch, steps, self.kv_heads, self.head_dim)
        if layer.q_norm is not None:
            q = _rms_norm(q, layer.q_norm.weight, self.eps)
            k = _rms_norm(k, layer.k_norm.weight, self.eps)
        q = _rotate(q.transpose(1, 2), cos, sin)
        k_cache[:, :, start:start + steps] = _rotate(k.transpose(1, 2), cos, sin)
        v_cache[:, :, start:start + steps] = v.view(
            batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
        keys, values = k_cache[:, :, :start + steps], v_cache[:, :, :start + steps]
        if steps == 1:
            out = self._decode_attention(q, keys, values, attend)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend,
                                                 scale=self.scale,
                                                 enable_gqa=self.heads != self.kv_heads)
        out = out.transpose(1, 2).reshape(batch, steps, self.heads * self.head_dim)
        return F.linear(out, layer.o_weight, layer.o_bias)

    def _decode_attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                          bias: torch.Tensor) -> torch.Tensor:
        """One query per row: ``q`` [B, H, 1, D] over ``keys``/``values`` [B, Hkv, K, D]
        with ``bias`` [B, 1, 1, K]. The query heads of a KV group share one matmul, so the
        cache is never expanded to H heads. Returns [B, H, 1, D]."""
        batch, groups = q.shape[0], self.heads // self.kv_heads
        grouped = q.reshape(batch, self.kv_heads, groups, self.head_dim)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)) * self.scale + bias
        probs = scores.float().softmax(-1).to(values.dtype)
        return torch.matmul(probs, values).reshape(batch, self.heads, 1, self.head_dim)
