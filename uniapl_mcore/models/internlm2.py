"""InternLM2 bundle — the architecture of POLAR reward models (``InternLM2ForRewardModel``,
scalar ``v_head`` read at the last token) and of InternLM2 chat models.

InternLM2 packs q, k, v in ``wqkv`` as (kv-heads, heads-per-group + 2, head_dim) rows, which
is exactly Megatron's ``linear_qkv`` interleave, so the weight is copied unchanged.
``rope_scaling: dynamic`` (dynamic NTK) only changes positions beyond
``max_position_embeddings``; Megatron has no dynamic NTK, so such models are accepted with
inputs capped at ``max_position_embeddings`` (what the configs in this project enforce).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from uniapl_mcore.config import ConfigError
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.hf_config import HFConfig
from uniapl_mcore.models.mapping import AttentionShape, TensorRule

#: POLAR's template tokens: the separator between the reference half and the output half
#: (POLAR-7B id 92397), and the last token, where the value head is read (``reward_token_id``,
#: POLAR-7B 92527).
REWARD_SEPARATOR = "<|reward|>"
REWARD_TOKEN = "[UNUSED_TOKEN_130]"

_LAYER = "model.layers.{layer}."


@dataclass(frozen=True)
class InternLM2Bundle:
    """InternLM2 causal LM or reward model."""

    name: str = "internlm2"
    architectures: tuple[str, ...] = ("InternLM2ForRewardModel", "InternLM2ForCausalLM")

    def model_config(self, hf: HFConfig) -> ModelConfig:
        reward = hf.architecture == "InternLM2ForRewardModel"
        hf.expect("hidden_act", ("silu",), "silu")
        hf.expect("bias", (False,), False)
        hf.take("attn_implementation", None)
        hf.take("pretraining_tp", 1, int)
        scaling = hf.take("rope_scaling", None, dict)
        if scaling is not None and scaling.get("type", scaling.get("rope_type")) != "dynamic":
            raise hf.fail("rope_scaling", f"{scaling!r} is not supported (only dynamic NTK, "
                                          "which is inactive within max_position_embeddings)")
        heads = hf.take("num_attention_heads", kind=int)
        hidden = hf.take("hidden_size", kind=int)
        try:
            config = ModelConfig(
                num_layers=hf.take("num_hidden_layers", kind=int),
                hidden_size=hidden,
                ffn_hidden_size=hf.take("intermediate_size", kind=int),
                num_attention_heads=heads,
                num_query_groups=hf.take("num_key_value_heads", heads, int),
                head_dim=hidden // heads,
                vocab_size=hf.take("vocab_size", kind=int),
                max_position_embeddings=hf.take("max_position_embeddings", kind=int),
                rope_theta=float(hf.take("rope_theta", 10000.0, (int, float))),
                rms_norm_eps=float(hf.take("rms_norm_eps", kind=(int, float))),
                qk_norm=False,
                tie_word_embeddings=bool(hf.take("tie_word_embeddings", False, bool)),
                params_dtype=hf.dtype(),
                value_head=reward,
                reward_token_id=hf.take("reward_token_id", None, int) if reward else None,
            )
        except ConfigError as err:
            raise hf.fail(err.field_path, err.message) from None
        if reward and config.reward_token_id is None:
            raise hf.fail("reward_token_id", "required for InternLM2ForRewardModel")
        hf.finish()
        return config

    def tensor_rules(self, model: ModelConfig) -> list[TensorRule]:
        rules = [
            TensorRule("embedding.word_embeddings.weight", ("model.tok_embeddings.weight",),
                       "vocab"),
            TensorRule("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
                       (_LAYER + "attention_norm.weight",)),
            TensorRule("decoder.layers.self_attention.linear_qkv.weight",
                       (_LAYER + "attention.wqkv.weight",)),
            TensorRule("decoder.layers.self_attention.linear_proj.weight",
                       (_LAYER + "attention.wo.weight",)),
            TensorRule("decoder.layers.mlp.linear_fc1.layer_norm_weight",
                       (_LAYER + "ffn_norm.weight",)),
            TensorRule("decoder.layers.mlp.linear_fc1.weight",
                       (_LAYER + "feed_forward.w1.weight", _LAYER + "feed_forward.w3.weight"),
                       "gated"),
            TensorRule("decoder.layers.mlp.linear_fc2.weight",
                       (_LAYER + "feed_forward.w2.weight",)),
            TensorRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        ]
        if model.value_head:
            rules.append(TensorRule("output_layer.weight", ("v_head.weight",)))
        elif not model.tie_word_embeddings:
            rules.append(TensorRule("output_layer.weight", ("output.weight",), "vocab"))
        return rules

    def hf_shapes(self, model: ModelConfig) -> dict[str, tuple[int, ...]]:
        h, d, f, v = model.hidden_size, model.head_dim, model.ffn_hidden_size, model.vocab_size
        qkv = (model.num_attention_heads + 2 * model.num_query_groups) * d
        return {
            "model.tok_embeddings.weight": (v, h), "model.norm.weight": (h,),
            "output.weight": (v, h), "v_head.weight": (1, h),
            _LAYER + "attention_norm.weight": (h,), _LAYER + "ffn_norm.weight": (h,),
            _LAYER + "attention.wqkv.weight": (qkv, h),
            _LAYER + "attention.wo.weight": (h, model.num_attention_heads * d),
            _LAYER + "feed_forward.w1.weight": (f, h), _LAYER + "feed_forward.w3.weight": (f, h),
            _LAYER + "feed_forward.w2.weight": (h, f),
        }

    def attention_shape(self, model: ModelConfig) -> AttentionShape:
        return AttentionShape(model.num_attention_heads, model.num_query_groups, model.head_dim)


INTERNLM2 = InternLM2Bundle()


def reference_scores(weights: dict[str, torch.Tensor], model: ModelConfig,
                     tokens: torch.Tensor) -> torch.Tensor:
    """InternLM2 reward scores [b] at the last position, in plain PyTorch (fp32).

    Written from the published InternLM2 modelling code (transformers cannot load it without
    executing the checkpoint's own code, which this project never does): RMSNorm, rotate-half
    RoPE, ``wqkv`` viewed as (b, s, kv_heads, hpg + 2, d) with q = slots [:hpg], k = slot -2,
    v = slot -1, causal softmax attention, SwiGLU ``w2(silu(w1 x) * w3 x)``, ``v_head``.
    """
    w = {k: v.float() for k, v in weights.items()}
    b, s = tokens.shape
    nh, ng, d = model.num_attention_heads, model.num_query_groups, model.head_dim
    hpg = nh // ng

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.rms_norm_eps)
        return x * weight

    inv_freq = 1.0 / (model.rope_theta ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(s).float(), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()

    def rope(x: torch.Tensor) -> torch.Tensor:  # x [b, heads, s, d]
        half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * cos + half * sin

    x = w["model.tok_embeddings.weight"][tokens]
    mask = torch.full((s, s), float("-inf")).triu(1)
    for layer in range(model.num_layers):
        p = f"model.layers.{layer}."
        qkv = rms(x, w[p + "attention_norm.weight"]) @ w[p + "attention.wqkv.weight"].T
        qkv = qkv.view(b, s, ng, hpg + 2, d)
        q = qkv[..., :hpg, :].reshape(b, s, nh, d).transpose(1, 2)
        k = qkv[..., -2, :].transpose(1, 2).repeat_interleave(hpg, dim=1)
        v = qkv[..., -1, :].transpose(1, 2).repeat_interleave(hpg, dim=1)
        att = (rope(q) @ rope(k).transpose(-1, -2)) / d**0.5 + mask
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, s, nh * d)
        x = x + out @ w[p + "attention.wo.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        act = torch.nn.functional.silu(h @ w[p + "feed_forward.w1.weight"].T)
        x = x + (act * (h @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
    x = rms(x, w["model.norm.weight"])
    return (x[:, -1] @ w["v_head.weight"].T).squeeze(-1)
