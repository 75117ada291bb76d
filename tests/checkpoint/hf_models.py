"""Tiny Hugging Face models built in the test (random weights, nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-6)


def save_tiny(directory: Path, family: str = "qwen3", tied: bool = False,
              dtype: torch.dtype = torch.float32, seed: int = 0,
              vocab_size: int | None = None, head_dim: int = 24,
              num_layers: int | None = None) -> Path:
    """Write a tiny random ``family`` model (qwen3 | qwen3_moe | qwen2 | llama).

    Qwen3 gets head_dim 24 ≠ hidden/heads (as Qwen3-0.6B has), GQA 4:2 everywhere.
    ``vocab_size`` overrides ``TINY``'s (e.g. to match a tiny tokenizer); ``head_dim`` the
    Qwen3 head size (vLLM on CPU needs 32, 64, ...); ``num_layers`` its 2 layers (an odd
    count for uneven pipeline stages).
    """
    import transformers

    torch.manual_seed(seed)
    tiny = TINY if vocab_size is None else {**TINY, "vocab_size": vocab_size}
    if num_layers is not None:
        tiny = {**tiny, "num_hidden_layers": num_layers}
    if family == "qwen3":
        config = transformers.Qwen3Config(**tiny, head_dim=head_dim, tie_word_embeddings=tied)
        model = transformers.Qwen3ForCausalLM(config)
    elif family == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(**{**tiny, "intermediate_size": 48},
                                             head_dim=head_dim,
                                             moe_intermediate_size=32, num_experts=4,
                                             num_experts_per_tok=2, norm_topk_prob=True,
                                             tie_word_embeddings=tied)
        model = transformers.Qwen3MoeForCausalLM(config)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**tiny, tie_word_embeddings=tied)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**tiny, tie_word_embeddings=tied)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # norms are ones at init; make them informative
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.to(dtype).save_pretrained(directory)
    return directory


def save_tiny_internlm2_reward(directory: Path, dtype: torch.dtype = torch.float32,
                               seed: int = 0, vocab_size: int = 96,
                               reward_token_id: int | None = None,
                               max_position_embeddings: int = 128,
                               weights: str = "safetensors") -> Path:
    """A tiny POLAR-format reward model (InternLM2ForRewardModel) in HF file layout.

    transformers has no InternLM2 class (it ships as checkpoint code, which this project never
    runs), so the files are written directly: config.json (with the published ``auto_map``
    keys) and the weights as ``weights``: ``safetensors`` (model.safetensors), ``bin``
    (pytorch_model.bin) or ``bin-shards`` (two pytorch_model-0000i-of-00002.bin files plus
    pytorch_model.bin.index.json), the last two written by ``torch.save``.
    ``reward_token_id`` defaults to the last id.
    """
    import json

    from safetensors.torch import save_file

    h, f, layers, nh, ng, v = 64, 96, 2, 4, 2, vocab_size
    d = h // nh
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    tensors = {"model.tok_embeddings.weight": rnd(v, h, scale=0.5),
               "model.norm.weight": 1 + rnd(h, scale=0.1), "v_head.weight": rnd(1, h, scale=0.5)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({
            p + "attention_norm.weight": 1 + rnd(h, scale=0.1),
            p + "ffn_norm.weight": 1 + rnd(h, scale=0.1),
            p + "attention.wqkv.weight": rnd((nh + 2 * ng) * d, h),
            p + "attention.wo.weight": rnd(h, nh * d),
            p + "feed_forward.w1.weight": rnd(f, h), p + "feed_forward.w3.weight": rnd(f, h),
            p + "feed_forward.w2.weight": rnd(h, f)})
    directory.mkdir(parents=True)
    if weights == "safetensors":
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    elif weights == "bin":
        torch.save(tensors, directory / "pytorch_model.bin")
    elif weights == "bin-shards":
        names = list(tensors)
        shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
                  "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
        for file_name, part in shards.items():
            torch.save({n: tensors[n] for n in part}, directory / file_name)
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size()
                                                for t in tensors.values())},
                 "weight_map": {n: fn for fn, part in shards.items() for n in part}}
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    else:
        raise ValueError(f"weights: unknown format {weights!r}")
    config = {"architectures": ["InternLM2ForRewardModel"], "model_type": "internlm2",
              "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                           "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
                           "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForRewardModel"},
              "attn_implementation": "eager", "bias": False, "hidden_act": "silu",
              "hidden_size": h, "intermediate_size": f, "num_hidden_layers": layers,
              "num_attention_heads": nh, "num_key_value_heads": ng, "vocab_size": v,
              "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-5,
              "rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 50000000,
              "reward_token_id": v - 1 if reward_token_id is None else reward_token_id,
              "tie_word_embeddings": False, "initializer_range": 0.02, "pretraining_tp": 1,
              "torch_dtype": str(dtype).replace("torch.", ""), "pad_token_id": 2,
              "bos_token_id": 1, "eos_token_id": 2, "use_cache": True}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory
