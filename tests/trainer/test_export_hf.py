"""A trained policy leaves the trainer: after a 2-step TP=2 run with ``checkpoint.export_hf``,
``mcore-to-hf`` of ``checkpoints/latest/policy`` and the exported ``RUN/hf`` both load with
``AutoModelForCausalLM.from_pretrained`` and give the Megatron policy's logits (fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from uniapl_mcore.checkpoint.convert_cli import main as convert_main
from uniapl_mcore.testing import run_distributed

from ._train_bodies import TINY, train_body

pytestmark = pytest.mark.slow

#: TP=2 with a vocabulary padded to 576 rows (512 real): the export gathers shards and
#: truncates the padding.
RUN = [*TINY, "parallel.tensor_parallel_size=2", "model.make_vocab_size_divisible_by=48",
       "loss.objective=sft", "train.max_steps=2", "eval.at_start=false",
       "checkpoint.export_hf=true"]


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def parity_of(hf_dirs: list[str], mcore: str) -> list[dict]:
    """``tools/check_parity.py``'s comparison (TP=1, fp32) of each HF dir against ``mcore``."""
    from uniapl_mcore.megatron import parity

    return [parity.run(parity.build_parser().parse_args(
        ["--hf", hf, "--mcore", mcore, "--dtype", "float32", "--seq-len", "24"]))
        for hf in hf_dirs]


@pytest.fixture(scope="module")
def run_dir(ray_cluster, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export_hf") / "run"
    run_distributed(train_body, 2, args=(RUN, str(run), ray_cluster), timeout_s=600)
    return run


@pytest.fixture(scope="module")
def converted(run_dir) -> Path:
    """``mcore-to-hf`` straight on ``checkpoints/latest/policy`` (the pointer is a file)."""
    out = run_dir.parent / "converted"
    assert convert_main(["mcore-to-hf", "--mcore", str(run_dir / "checkpoints" / "latest" /
                                                        "policy"), "--out", str(out)]) == 0
    return out


def test_checkpoint_carries_hf_files_and_safe_rng_state(run_dir):
    step = run_dir / "checkpoints" / "step_000002"
    side = step / "policy" / "hf"
    assert json.loads((side / "config.json").read_text()) == \
        json.loads((run_dir / "policy_hf" / "config.json").read_text())
    for name in ("generation_config.json", "tokenizer_config.json"):
        assert (side / name).is_file(), name
    assert sorted(p.name for p in (step / "rng").iterdir()) == \
        ["rank_00000.safetensors", "rank_00001.safetensors"]
    assert not list(run_dir.glob(".hf.*"))  # no temporary export directory left behind


def test_latest_and_step_paths_convert_to_the_same_model(run_dir, converted):
    by_step = run_dir.parent / "by_step"
    assert convert_main(["mcore-to-hf", "--mcore", str(run_dir / "checkpoints" /
                                                       "step_000002" / "policy"),
                         "--out", str(by_step)]) == 0
    a, b = _tensors(converted), _tensors(by_step)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.embed_tokens.weight"].shape == (512, 64)  # padding rows dropped
    assert a["lm_head.weight"].shape == (512, 64)
    assert (converted / "tokenizer_config.json").is_file()


def test_export_equals_the_converted_checkpoint(run_dir, converted):
    exported = _tensors(run_dir / "hf")
    offline = _tensors(converted)
    assert exported.keys() == offline.keys()
    for name, tensor in offline.items():
        assert exported[name].dtype == tensor.dtype == torch.float32, name
        assert torch.equal(exported[name], tensor), name
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert (run_dir / "hf" / name).read_bytes() == (converted / name).read_bytes(), name


def test_both_load_in_transformers_with_the_policy_logits(run_dir, converted):
    mcore = str(run_dir / "checkpoints" / "latest" / "policy")
    results = run_distributed(parity_of, 1, args=([str(converted), str(run_dir / "hf")],
                                                   mcore), timeout_s=300)[0]
    for result in results:
        print("parity", json.dumps(result))
        assert result["max_abs_logit_diff"] <= 1e-4, result
        assert result["max_abs_logprob_diff"] <= 1e-4, result
