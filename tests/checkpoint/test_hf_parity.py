"""Converted checkpoints match Hugging Face logits at TP 1/2 and PP 1/2, and at uneven
pipeline stages (3 layers at PP 2, 5 at PP 4) (fp32, ≤ 1e-4)."""

from __future__ import annotations

import pytest

from uniapl_mcore.checkpoint.convert import hf_to_mcore
from uniapl_mcore.testing import run_distributed

from ._bodies import parity_json
from .hf_models import save_tiny, save_tiny_internlm2_reward

pytestmark = pytest.mark.slow

CASES = [("qwen3", False, 1, 1, 1), ("qwen3", False, 2, 1, 1), ("qwen3", False, 1, 2, 1),
         ("qwen3", True, 1, 1, 1), ("qwen3", True, 2, 1, 1), ("qwen3", True, 1, 2, 1),
         ("qwen2", False, 2, 1, 1), ("llama", True, 1, 2, 1),
         ("qwen3_moe", False, 1, 1, 1), ("qwen3_moe", False, 1, 1, 2),
         ("qwen3_moe", False, 2, 1, 1),
         ("qwen3", False, 4, 1, 1)]  # TP=4 > 2 KV heads: Megatron splits inside a group


@pytest.mark.parametrize(("family", "tied", "tp", "pp", "ep"), CASES)
def test_logits_match_transformers(tmp_path, family, tied, tp, pp, ep):
    hf = save_tiny(tmp_path / "hf", family, tied)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    world = tp * pp * (ep if ep > 1 else 1)
    results = run_distributed(parity_json, world, args=(str(hf), str(mcore), tp, pp, ep),
                              timeout_s=300)
    reports = [r for r in results if r is not None]
    assert len(reports) == 1  # one JSON line, from the last stage's first TP rank
    report = reports[0]
    assert report["max_abs_logit_diff"] <= 1e-4, report
    assert report["max_abs_logprob_diff"] <= 1e-4, report
    assert report["min_cosine"] >= 0.9999, report


@pytest.mark.parametrize(("layers", "tied", "pp", "flags", "stages"), [
    (3, False, 2, (), [1, 2]),                                # balanced automatically
    (5, True, 4, ("--first-stage-layers", "2"), [2, 1, 1, 1]),  # set by tools/check_parity.py
])
def test_uneven_pipeline_stages_match_transformers(tmp_path, layers, tied, pp, flags, stages):
    hf = save_tiny(tmp_path / "hf", "qwen3", tied, num_layers=layers)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(parity_json, pp, args=(str(hf), str(mcore), 1, pp),
                              kwargs={"extra": flags}, timeout_s=300)
    (report,) = [r for r in results if r is not None]
    print(f"uneven PP={pp}, {layers} layers: {report}")
    assert report["stage_layers"] == stages
    assert report["max_abs_logit_diff"] <= 1e-4, report
    assert report["max_abs_logprob_diff"] <= 1e-4, report
    assert report["min_cosine"] >= 0.9999, report


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (1, 2)])
def test_internlm2_reward_scores_match_reference(tmp_path, tp, pp):
    hf = save_tiny_internlm2_reward(tmp_path / "hf")
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(parity_json, tp * pp, args=(str(hf), str(mcore), tp, pp),
                              timeout_s=300)
    (report,) = [r for r in results if r is not None]
    assert report["max_abs_score_diff"] <= 1e-4, report
    assert len(set(report["scores"])) == len(report["scores"])  # scores differ per sequence


def test_bf16_logits_within_bf16_tolerance(tmp_path):
    """bf16 end to end (Megatron's Float16Module vs transformers in bf16) at TP=2."""
    import torch

    hf = save_tiny(tmp_path / "hf", "qwen3", False, torch.bfloat16)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(parity_json, 2, args=(str(hf), str(mcore), 2, 1, 1, "bfloat16"),
                              timeout_s=300)
    (report,) = [r for r in results if r is not None]
    assert report["max_abs_logit_diff"] <= 2e-2, report
    assert report["min_cosine"] >= 0.99, report


def test_polar_hub_layout_from_bin_shards_matches_reference(tmp_path):
    """A POLAR directory as published (pytorch_model-*.bin shards + index, SentencePiece
    tokenizer, 92544 ids), through tools/check_parity.py's path at TP=2: the reference reads
    the same .bin shards (torch.load(weights_only=True))."""
    from tests.discriminator.polar_hub import save_polar_hub_dir

    hf = save_polar_hub_dir(tmp_path / "hf", weights="bin-shards")
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(parity_json, 2, args=(str(hf), str(mcore), 2, 1),
                              timeout_s=300)
    (report,) = [r for r in results if r is not None]
    print(f"POLAR hub layout, TP=2: {report}")
    assert report["max_abs_score_diff"] <= 1e-4, report
    assert len(set(report["scores"])) == len(report["scores"])


@pytest.mark.parametrize("problem", ["missing", "bad-json"])
def test_check_parity_bad_hf_dir_is_one_line(tmp_path, capsys, problem):
    from uniapl_mcore.megatron.parity import main

    hf = tmp_path / "hf"
    hf.mkdir()
    if problem == "bad-json":
        (hf / "config.json").write_text("{not json")
    assert main(["--hf", str(hf), "--mcore", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"check_parity: {hf / 'config.json'}: ") and "\n" not in err
