"""HF → torch_dist → HF: bit-exact round trips, loadable output, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from uniapl_mcore.checkpoint.convert import hf_to_mcore, mcore_to_hf
from uniapl_mcore.checkpoint.dcp_io import TorchDistReader
from uniapl_mcore.checkpoint.hf_io import CheckpointError
from uniapl_mcore.config import ConfigError
from uniapl_mcore.testing import run_distributed

from ._bodies import resave_and_stream
from .hf_models import save_tiny, save_tiny_internlm2_reward


def _tensors(directory):
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.mark.parametrize(("family", "tied", "dtype"), [
    ("qwen3", False, torch.bfloat16), ("qwen3", True, torch.float32),
    ("qwen2", False, torch.float32), ("llama", True, torch.bfloat16),
    ("qwen3_moe", False, torch.bfloat16)])
def test_round_trip_is_bit_exact(tmp_path, family, tied, dtype):
    hf = save_tiny(tmp_path / "hf", family, tied, dtype)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    back = mcore_to_hf(mcore, tmp_path / "back", max_shard_bytes=60_000)  # forces shards
    source, result = _tensors(hf), _tensors(back)
    expected = set(source) - ({"lm_head.weight"} if tied else set())
    assert set(result) == expected
    for name in expected:
        assert result[name].dtype == source[name].dtype == dtype, name
        assert torch.equal(result[name], source[name]), name
    assert (back / "model.safetensors.index.json").is_file()
    assert json.loads((back / "config.json").read_text()) == \
        json.loads((hf / "config.json").read_text())
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize(("family", "layers", "pp", "first", "stages"), [
    ("qwen3", 3, 2, None, (1, 2)), ("qwen3_moe", 3, 2, 2, (2, 1))])
def test_round_trip_through_uneven_pipeline_stages(tmp_path, family, layers, pp, first,
                                                   stages):
    """HF → torch_dist → a model at uneven PP → torch_dist saved from that layout → HF is
    bit-exact, and so is the live stream from that layout (global HF layer names)."""
    import shutil

    from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers

    assert pipeline_stage_layers(layers, ParallelConfig(pipeline_parallel_size=pp,
                                                        first_stage_layers=first)) == stages
    hf = save_tiny(tmp_path / "hf", family, False, torch.bfloat16, num_layers=layers)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(resave_and_stream, pp, args=(str(hf), str(mcore),
                                                           str(tmp_path / "resaved"), pp, first),
                              timeout_s=300)
    saved = Path(results[0]["saved"])
    shutil.copytree(mcore / "hf", saved / "hf")
    back = mcore_to_hf(saved, tmp_path / "back")
    source = _tensors(hf)
    for result in (_tensors(back), results[0]["tensors"]):
        assert set(result) == set(source)
        assert all(result[k].dtype == torch.bfloat16 for k in result)
        assert [k for k in source if not torch.equal(result[k], source[k])] == []


def test_exported_model_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    hf = save_tiny(tmp_path / "hf", "qwen3", tied=True)
    back = mcore_to_hf(hf_to_mcore(hf, tmp_path / "mcore"), tmp_path / "back")
    tokens = torch.randint(0, 96, (1, 9))
    ref = AutoModelForCausalLM.from_pretrained(hf)(tokens).logits
    got = AutoModelForCausalLM.from_pretrained(back)(tokens).logits
    assert torch.equal(ref, got)


def test_layer_stacked_keys_in_torch_dist(tmp_path):
    hf = save_tiny(tmp_path / "hf", "qwen3")
    reader = TorchDistReader(hf_to_mcore(hf, tmp_path / "mcore"))
    assert reader.shape("decoder.layers.self_attention.linear_qkv.weight") == \
        (2, (4 + 2 * 2) * 24, 64)
    assert reader.shape("decoder.layers.mlp.linear_fc1.weight") == (2, 160, 64)
    assert reader.shape("embedding.word_embeddings.weight") == (96, 64)
    assert reader.common()["step"] == 0
    moe = TorchDistReader(hf_to_mcore(save_tiny(tmp_path / "moe", "qwen3_moe"),
                                      tmp_path / "moe_mcore"))
    assert moe.shape("decoder.layers.mlp.experts.experts.linear_fc1.weight") == (2, 4, 64, 64)
    assert moe.shape("decoder.layers.mlp.experts.experts.linear_fc2.weight") == (2, 4, 64, 32)
    assert moe.shape("decoder.layers.mlp.router.weight") == (2, 4, 64)
    assert moe.shape("decoder.layers.pre_mlp_layernorm.weight") == (2, 64)


def _copy_model(tmp_path):
    return save_tiny(tmp_path / "hf", "qwen3")


def test_missing_shard_names_the_file(tmp_path):
    hf = _copy_model(tmp_path)
    tensors = load_file(hf / "model.safetensors")
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:5]}, hf / "a.safetensors")
    (hf / "model.safetensors").unlink()
    index = {"weight_map": {n: ("a.safetensors" if i < 5 else "b.safetensors")
                            for i, n in enumerate(names)}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"b\.safetensors: shard listed in .* is missing"):
        hf_to_mcore(hf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_file_names_the_file(tmp_path):
    hf = _copy_model(tmp_path)
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        hf_to_mcore(hf, tmp_path / "out")
    assert not list(tmp_path.glob("out*"))


def test_config_weights_mismatch_names_the_tensor(tmp_path):
    hf = _copy_model(tmp_path)
    config = json.loads((hf / "config.json").read_text())
    config["intermediate_size"] = 96
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight' has "
                                              r"shape \(80, 64\), but config\.json implies "
                                              r"\(96, 64\)"):
        hf_to_mcore(hf, tmp_path / "out")


def test_unknown_architecture_and_unsupported_field(tmp_path):
    hf = _copy_model(tmp_path)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHead"]}))
    with pytest.raises(ConfigError, match=r"unknown architecture 'GPT2LMHead'"):
        hf_to_mcore(hf, tmp_path / "out")
    (hf / "config.json").write_text(json.dumps({**config, "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}))
    with pytest.raises(ConfigError, match=r"rope_parameters: rope_type 'yarn' is not supported"):
        hf_to_mcore(hf, tmp_path / "out")
    (hf / "config.json").write_text(json.dumps({**config, "num_experts": 8}))
    with pytest.raises(ConfigError, match=r"unsupported config field\(s\) \['num_experts'\]"):
        hf_to_mcore(hf, tmp_path / "out")


def test_unmapped_tensor_names_the_tensor(tmp_path):
    hf = _copy_model(tmp_path)
    tensors = load_file(hf / "model.safetensors")
    tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.extra\.weight' is "
                                              r"not mapped"):
        hf_to_mcore(hf, tmp_path / "out")


def test_existing_output_is_never_overwritten(tmp_path):
    hf = _copy_model(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        hf_to_mcore(hf, tmp_path / "out")


def test_tool_reports_errors_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "hf-to-mcore", "--hf",
                           str(tmp_path / "nope"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("convert_checkpoint: error: ")
    assert "config.json: missing" in proc.stderr and proc.stderr.count("\n") == 1


def test_metadata_with_foreign_pickle_is_refused(tmp_path):
    import pickle

    directory = tmp_path / "evil"
    directory.mkdir()
    (directory / "metadata.json").write_text("{}")
    with open(directory / ".metadata", "wb") as handle:
        pickle.dump(subprocess.Popen, handle)
    with pytest.raises(CheckpointError, match="refusing to load subprocess.Popen"):
        TorchDistReader(directory)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_internlm2_reward_round_trip(tmp_path, dtype):
    hf = save_tiny_internlm2_reward(tmp_path / "hf", dtype)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    reader = TorchDistReader(mcore)
    assert reader.shape("output_layer.weight") == (1, 64)  # v_head: no vocab padding
    qkv = reader.read("decoder.layers.self_attention.linear_qkv.weight")[1]
    assert torch.equal(qkv, load_file(hf / "model.safetensors")[
        "model.layers.1.attention.wqkv.weight"])  # InternLM2 packing == Megatron interleave
    back = mcore_to_hf(mcore, tmp_path / "back")
    source, result = _tensors(hf), _tensors(back)
    assert set(source) == set(result)
    assert all(torch.equal(source[k], result[k]) and result[k].dtype == dtype for k in source)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe", "qwen2", "llama"])
def test_bundle_hf_config_inverts_model_config(tmp_path, family):
    """``bundle.hf_config(model)`` read back by ``bundle.model_config`` gives ``model``; the
    config loads in transformers as the family's class."""
    import json

    import transformers

    from tests.checkpoint.hf_models import save_tiny
    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.models.hf_config import HFConfig

    _, bundle, model = load_hf_architecture(save_tiny(tmp_path / "hf", family))
    written = bundle.hf_config(model, eos_token_id=1, pad_token_id=0)
    again = bundle.model_config(HFConfig(json.loads(json.dumps(written)), "config.json"))
    assert again == model
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps(written))
    loaded = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert loaded.model_type == bundle.name and loaded.eos_token_id == 1
