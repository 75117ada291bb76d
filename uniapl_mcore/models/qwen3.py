"""Decoder bundles: Qwen3 (qk-norm, no biases), Qwen3-MoE (every layer a top-k MoE without
shared experts), and Qwen2 / Llama (no qk-norm; Qwen2 has q/k/v biases).

Each bundle turns an HF ``config.json`` into a :class:`ModelConfig` (failing on any field it
would otherwise ignore) and lists the :class:`TensorRule` s between HF names and Megatron
``torch_dist`` keys. Keys follow Megatron's Transformer Engine names; per-layer tensors carry
a leading layer axis, expert tensors a layer and an expert axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uniapl_mcore.config import ConfigError
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.hf_config import HFConfig
from uniapl_mcore.models.mapping import AttentionShape, TensorRule

_LAYER = "model.layers.{layer}."
_ATTN = _LAYER + "self_attn."
_MLP = _LAYER + "mlp."
_EXPERT = _MLP + "experts.{expert}."


@dataclass(frozen=True)
class DecoderBundle:
    """One family of HF decoders that map onto Megatron's GPTModel."""

    name: str
    architectures: tuple[str, ...]
    qk_norm: bool
    allow_attention_bias: bool
    moe: bool = False

    # ------------------------------------------------------------------ config
    def model_config(self, hf: HFConfig) -> ModelConfig:
        """The Megatron-side architecture; raises ConfigError naming any unsupported field."""
        kwargs = self._attention_kwargs(hf)
        kwargs.update(self._moe_kwargs(hf) if self.moe else
                      {"ffn_hidden_size": hf.take("intermediate_size", kind=int)})
        try:
            config = ModelConfig(**kwargs)
        except ConfigError as err:
            raise hf.fail(err.field_path, err.message) from None
        hf.finish()
        return config

    def hf_config(self, model: ModelConfig, eos_token_id: int | None = None,
                  pad_token_id: int | None = None) -> dict[str, Any]:
        """The Hugging Face ``config.json`` of ``model`` in this family (the inverse of
        :meth:`model_config`); raises ConfigError naming a field the family cannot hold."""
        if model.qk_norm != self.qk_norm:
            has = "has" if self.qk_norm else "has no"
            raise ConfigError("model.qk_norm", f"{self.name} {has} q/k norms; set qk_norm: "
                                               f"{str(self.qk_norm).lower()}")
        if model.qkv_bias and not self.allow_attention_bias:
            raise ConfigError("model.qkv_bias", f"{self.name} has no attention biases")
        if bool(model.num_experts) != self.moe:
            raise ConfigError("model.num_experts", f"{self.name} is "
                                                   f"{'a' if self.moe else 'not a'} MoE family")
        config: dict[str, Any] = {
            "architectures": [self.architectures[0]], "model_type": self.name,
            "vocab_size": model.vocab_size, "hidden_size": model.hidden_size,
            "intermediate_size": model.ffn_hidden_size, "num_hidden_layers": model.num_layers,
            "num_attention_heads": model.num_attention_heads,
            "num_key_value_heads": model.num_query_groups, "head_dim": model.head_dim,
            "max_position_embeddings": model.max_position_embeddings,
            "rope_theta": model.rope_theta, "rms_norm_eps": model.rms_norm_eps,
            "tie_word_embeddings": model.tie_word_embeddings,
            "attention_bias": model.qkv_bias, "hidden_act": "silu",
            "torch_dtype": model.params_dtype, "use_cache": True,
        }
        if eos_token_id is not None:
            config["eos_token_id"] = eos_token_id
        if pad_token_id is not None:
            config["pad_token_id"] = pad_token_id
        if self.moe:
            config.update({"num_experts": model.num_experts,
                           "num_experts_per_tok": model.moe_router_topk,
                           "moe_intermediate_size": model.moe_ffn_hidden_size,
                           "norm_topk_prob": model.moe_norm_topk_prob,
                           "router_aux_loss_coef": model.moe_aux_loss_coeff,
                           "decoder_sparse_step": 1, "mlp_only_layers": []})
        return config

    def _attention_kwargs(self, hf: HFConfig) -> dict[str, Any]:
        heads = hf.take("num_attention_heads", kind=int)
        hidden = hf.take("hidden_size", kind=int)
        hf.expect("hidden_act", ("silu",), "silu")
        hf.expect("use_sliding_window", (False,), False)
        hf.expect("mlp_bias", (False,), False)
        layer_types = hf.take("layer_types", None, list)
        if layer_types and set(layer_types) != {"full_attention"}:
            raise hf.fail("layer_types", f"only full attention is supported, got "
                                         f"{sorted(set(layer_types))}")
        bias = hf.take("attention_bias", self.name == "qwen2", bool)
        if bias and not self.allow_attention_bias:
            raise hf.fail("attention_bias", f"{self.name} with attention biases is not supported")
        return dict(
            num_layers=hf.take("num_hidden_layers", kind=int),
            hidden_size=hidden,
            num_attention_heads=heads,
            num_query_groups=hf.take("num_key_value_heads", heads, int),
            head_dim=hf.take("head_dim", hidden // heads, int),
            vocab_size=hf.take("vocab_size", kind=int),
            max_position_embeddings=hf.take("max_position_embeddings", kind=int),
            rope_theta=hf.rope_theta(),
            rms_norm_eps=float(hf.take("rms_norm_eps", kind=(int, float))),
            qk_norm=self.qk_norm,
            qkv_bias=bool(bias),
            tie_word_embeddings=bool(hf.take("tie_word_embeddings", False, bool)),
            params_dtype=hf.dtype(),
        )

    def _moe_kwargs(self, hf: HFConfig) -> dict[str, Any]:
        experts = hf.take("num_local_experts", None, int) or hf.take("num_experts", None, int)
        if not experts:
            raise hf.fail("num_experts", "required field is missing (or num_local_experts)")
        hf.expect("decoder_sparse_step", (1,), 1)
        if hf.take("mlp_only_layers", [], list):
            raise hf.fail("mlp_only_layers", "dense layers inside a MoE model are not "
                                             "supported (every layer must be MoE)")
        hf.expect("shared_expert_intermediate_size", (None, 0), None)
        hf.take("output_router_logits", False, bool)
        hf.take("intermediate_size", None, int)  # unused when every layer is MoE
        return dict(
            ffn_hidden_size=hf.take("moe_intermediate_size", kind=int),
            num_experts=experts,
            moe_router_topk=hf.take("num_experts_per_tok", kind=int),
            moe_ffn_hidden_size=hf.take("moe_intermediate_size", kind=int),
            moe_norm_topk_prob=bool(hf.take("norm_topk_prob", False, bool)),
            moe_aux_loss_coeff=float(hf.take("router_aux_loss_coef", 0.0, (int, float))),
        )

    # ------------------------------------------------------------------ tensors
    def tensor_rules(self, model: ModelConfig) -> list[TensorRule]:
        """Megatron checkpoint key ↔ HF names for every tensor of the model."""
        rules = [
            TensorRule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",),
                       "vocab"),
            TensorRule("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
                       (_LAYER + "input_layernorm.weight",)),
            TensorRule("decoder.layers.self_attention.linear_qkv.weight",
                       tuple(_ATTN + f"{p}_proj.weight" for p in "qkv"), "qkv"),
            TensorRule("decoder.layers.self_attention.linear_proj.weight",
                       (_ATTN + "o_proj.weight",)),
            TensorRule("decoder.final_layernorm.weight", ("model.norm.weight",)),
        ]
        if model.qkv_bias:
            rules.append(TensorRule("decoder.layers.self_attention.linear_qkv.bias",
                                    tuple(_ATTN + f"{p}_proj.bias" for p in "qkv"), "qkv"))
        if model.qk_norm:
            rules += [TensorRule("decoder.layers.self_attention.q_layernorm.weight",
                                 (_ATTN + "q_norm.weight",)),
                      TensorRule("decoder.layers.self_attention.k_layernorm.weight",
                                 (_ATTN + "k_norm.weight",))]
        rules += self._moe_rules() if model.num_experts else self._mlp_rules()
        if not model.tie_word_embeddings:
            rules.append(TensorRule("output_layer.weight", ("lm_head.weight",), "vocab"))
        return rules

    @staticmethod
    def _mlp_rules() -> list[TensorRule]:
        return [
            TensorRule("decoder.layers.mlp.linear_fc1.layer_norm_weight",
                       (_LAYER + "post_attention_layernorm.weight",)),
            TensorRule("decoder.layers.mlp.linear_fc1.weight",
                       (_MLP + "gate_proj.weight", _MLP + "up_proj.weight"), "gated"),
            TensorRule("decoder.layers.mlp.linear_fc2.weight", (_MLP + "down_proj.weight",)),
        ]

    @staticmethod
    def _moe_rules() -> list[TensorRule]:
        return [
            TensorRule("decoder.layers.pre_mlp_layernorm.weight",
                       (_LAYER + "post_attention_layernorm.weight",)),
            TensorRule("decoder.layers.mlp.router.weight", (_MLP + "gate.weight",)),
            TensorRule("decoder.layers.mlp.experts.experts.linear_fc1.weight",
                       (_EXPERT + "gate_proj.weight", _EXPERT + "up_proj.weight"), "gated"),
            TensorRule("decoder.layers.mlp.experts.experts.linear_fc2.weight",
                       (_EXPERT + "down_proj.weight",)),
        ]

    def hf_shapes(self, model: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Expected shape of every HF tensor (placeholders kept in the names)."""
        h, d, f, v = model.hidden_size, model.head_dim, model.ffn_hidden_size, model.vocab_size
        q, kv = model.num_attention_heads * d, model.num_query_groups * d
        i = model.moe_ffn_hidden_size
        return {
            "model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
            "lm_head.weight": (v, h),
            _LAYER + "input_layernorm.weight": (h,),
            _LAYER + "post_attention_layernorm.weight": (h,),
            _ATTN + "q_proj.weight": (q, h), _ATTN + "k_proj.weight": (kv, h),
            _ATTN + "v_proj.weight": (kv, h), _ATTN + "o_proj.weight": (h, q),
            _ATTN + "q_norm.weight": (d,), _ATTN + "k_norm.weight": (d,),
            _ATTN + "q_proj.bias": (q,), _ATTN + "k_proj.bias": (kv,),
            _ATTN + "v_proj.bias": (kv,),
            _MLP + "gate_proj.weight": (f, h), _MLP + "up_proj.weight": (f, h),
            _MLP + "down_proj.weight": (h, f),
            _MLP + "gate.weight": (model.num_experts, h),
            _EXPERT + "gate_proj.weight": (i, h), _EXPERT + "up_proj.weight": (i, h),
            _EXPERT + "down_proj.weight": (h, i),
        }

    def attention_shape(self, model: ModelConfig) -> AttentionShape:
        return AttentionShape(model.num_attention_heads, model.num_query_groups, model.head_dim)


QWEN3 = DecoderBundle("qwen3", ("Qwen3ForCausalLM",), qk_norm=True, allow_attention_bias=False)
QWEN3_MOE = DecoderBundle("qwen3_moe", ("Qwen3MoeForCausalLM",), qk_norm=True,
                          allow_attention_bias=False, moe=True)
QWEN2 = DecoderBundle("qwen2", ("Qwen2ForCausalLM",), qk_norm=False, allow_attention_bias=True)
LLAMA = DecoderBundle("llama", ("LlamaForCausalLM", "MistralForCausalLM"), qk_norm=False,
                      allow_attention_bias=False)
