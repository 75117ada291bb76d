"""The tiny Qwen3-style GPTModel: GQA, qk-norm, RMSNorm, SwiGLU, RoPE, tied / untied."""

from __future__ import annotations

import pytest
import torch

from tests._megatron_config import load_run
from uniapl_mcore.config import ConfigError
from uniapl_mcore.models.gpt import layer_spec, transformer_config
from uniapl_mcore.testing import run_distributed

from ._bodies import describe_model


@pytest.mark.parametrize("tied", [False, True])
def test_structure_and_causality(tied):
    overrides = [f"model.tie_word_embeddings={str(tied).lower()}", "model.head_dim=24"]
    facts = run_distributed(describe_model, 1, args=(overrides,))[0]
    cfg = load_run(None, overrides).model
    params = facts["params"]
    q_width = cfg.num_attention_heads * cfg.head_dim  # 96: head_dim ≠ hidden / heads (16)
    kv_width = 2 * cfg.num_query_groups * cfg.head_dim
    assert params["decoder.layers.0.self_attention.linear_qkv.weight"] == \
        (q_width + kv_width, cfg.hidden_size)
    assert params["decoder.layers.0.self_attention.linear_proj.weight"] == \
        (cfg.hidden_size, q_width)
    assert params["decoder.layers.0.self_attention.q_layernorm.weight"] == (cfg.head_dim,)
    assert params["decoder.layers.0.self_attention.k_layernorm.weight"] == (cfg.head_dim,)
    assert params["decoder.layers.0.mlp.linear_fc1.weight"] == \
        (2 * cfg.ffn_hidden_size, cfg.hidden_size)  # SwiGLU: gate and up projections
    assert not any("bias" in name for name in params)
    assert facts["norm_types"] == {"RMSNorm"}
    assert ("output_layer.weight" in params) is not tied
    assert facts["shares_embedding"] is tied
    assert facts["logits_shape"] == (2, 8, cfg.vocab_size)
    assert facts["prefix_unchanged"] and facts["last_changed"]


def test_local_spec_without_transformer_engine():
    model = load_run(None).model
    spec = layer_spec(model)
    attention = spec.submodules.self_attention.submodules
    if torch.cuda.is_available():
        pytest.skip("spec choice on GPU depends on Transformer Engine")
    assert attention.core_attention.__name__ == "DotProductAttention"


def test_transformer_config_maps_the_architecture():
    cfg = load_run(None, ["model.rms_norm_eps=1e-5", "model.num_query_groups=1"])
    tc = transformer_config(cfg.model, cfg.parallel)
    assert (tc.normalization, tc.layernorm_epsilon, tc.qk_layernorm) == ("RMSNorm", 1e-5, True)
    assert (tc.gated_linear_unit, tc.add_bias_linear) == (True, False)
    assert tc.activation_func is torch.nn.functional.silu
    assert (tc.num_query_groups, tc.kv_channels) == (1, cfg.model.head_dim)
    assert tc.hidden_dropout == tc.attention_dropout == 0.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="TE may exist on GPU machines")
def test_sequence_parallel_without_transformer_engine_is_a_clear_error():
    cfg = load_run(None, ["parallel.tensor_parallel_size=2", "parallel.sequence_parallel=true"])
    with pytest.raises(ConfigError, match="^parallel.sequence_parallel: needs Transformer Engine"):
        transformer_config(cfg.model, cfg.parallel)
