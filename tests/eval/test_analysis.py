"""``uniapl analyze``: statistics, KDE, figures, CLI errors, and scoring with a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from uniapl_mcore.cli import main
from uniapl_mcore.eval.analysis import (
    FALLBACK_BANDWIDTH,
    analyze,
    gaussian_kde,
    scott_bandwidth,
    wasserstein1,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = ["Write a poem about the sea.", "Answer in lowercase: what is a cat?",
           "Give a title in double angular brackets.", "List three colors.",
           "Say hello in French.", "Name a planet.", "Count to five."]
TEACHER_TOKENS = [15, 25, 35, 45, 55, 65, 75]


def _row(i: int, response_tokens: int, strict: float, lp: float | None,
         teacher_lp: float | None) -> dict:
    return {"id": f"q{i}", "prompt": PROMPTS[i], "response": f"answer {i}: the sea is blue.",
            "response_tokens": response_tokens,
            "teacher_response": f"teacher answer {i}: a cat is small.",
            "teacher_tokens": TEACHER_TOKENS[i], "reward_strict": strict,
            "reward_partial": strict / 2, "response_logprob_mean": lp,
            "teacher_logprob_mean": teacher_lp}


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Path]:
    """``base``: a file with ids q0..q5; ``uniapl``: a run directory (newest step file has
    ids q1..q6: q0 missing, q6 extra)."""
    base = [_row(i, 10 * (i + 1), s, lp, -1.0)
            for i, (s, lp) in enumerate(zip([1, 0, 1, 0, 1, 1], [-1.5, -0.5, -2.0, -1.0,
                                                                   None, -0.75], strict=True))]
    base_path = _write(tmp_path / "base.jsonl", base)
    run_dir = tmp_path / "run"
    _write(run_dir / "generations" / "step_000010.jsonl", [_row(1, 999, 0, None, None)])
    uniapl = [_row(i, n, s, lp, tlp) for i, n, s, lp, tlp in [
        (1, 100, 1, -0.5, -1.0), (2, 10, 1, -0.25, -0.5), (3, 40, 0, -1.0, -0.75),
        (4, 70, 1, -0.5, -1.5), (5, 25, 1, None, -1.0), (6, 33, 0, -0.1, -0.1)]]
    _write(run_dir / "generations" / "step_000020.jsonl", uniapl)
    return {"base": base_path, "uniapl": run_dir}


def test_wasserstein1() -> None:
    assert wasserstein1([0.0], [1.0, 3.0]) == pytest.approx(2.0)
    a, b = [3.0, 1.0, 7.0], [2.0, 10.0, 4.0]
    assert wasserstein1(a, b) == pytest.approx((1 + 1 + 3) / 3)  # sorted [1,3,7] vs [2,4,10]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=400), rng.normal(size=400) + 0.5
    assert wasserstein1(x, y) == pytest.approx(np.mean(np.abs(np.sort(x) - np.sort(y))))


def test_kde_integrates_to_one() -> None:
    samples = np.array([-1.2, -0.4, -0.35, 0.1, 0.8, 2.0])
    h = scott_bandwidth(samples)
    assert h == pytest.approx(samples.std(ddof=1) * 6 ** -0.2)
    grid = np.linspace(-10, 10, 4001)
    density = gaussian_kde(samples, grid)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    # one sample: a normal density with the fallback bandwidth
    one = gaussian_kde([0.5], np.array([0.5]))
    assert one[0] == pytest.approx(1 / (FALLBACK_BANDWIDTH * math.sqrt(2 * math.pi)))


def test_analyze_from_files(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = analyze(runs, out)
    for name in ("fig3_response_length.png", "fig4_logprob_diff_kde.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "analysis.json").read_text()) == result
    assert result["logprob_source"] == "file" and result["figure4_skipped"] is None

    base = result["models"]["base"]
    assert base["n"] == 6 and base["missing_ids"] == 0 and base["extra_ids"] == 0
    assert base["length_mean"] == pytest.approx(35.0)
    assert base["length_median"] == pytest.approx(35.0)
    assert base["length_std"] == pytest.approx(np.std([10, 20, 30, 40, 50, 60]))
    assert base["teacher_length_mean"] == pytest.approx(40.0)
    assert base["length_w1"] == pytest.approx(5.0)
    assert base["reward_strict_mean"] == pytest.approx(4 / 6)
    base_deltas = [-0.5, 0.5, -1.0, 0.0, 0.25]  # q4 has a null log-prob
    assert base["delta_n"] == 5
    assert base["delta_mean"] == pytest.approx(np.mean(base_deltas))
    assert base["delta_median"] == pytest.approx(0.0)
    assert base["frac_delta_positive"] == pytest.approx(2 / 5)

    uniapl = result["models"]["uniapl"]
    assert uniapl["file"].endswith("step_000020.jsonl")  # the newest step file
    assert uniapl["n"] == 5 and uniapl["missing_ids"] == 1 and uniapl["extra_ids"] == 1
    assert uniapl["length_mean"] == pytest.approx((100 + 10 + 40 + 70 + 25) / 5)
    assert uniapl["teacher_length_mean"] == pytest.approx(45.0)  # teacher of q1..q5
    # sorted [10, 25, 40, 70, 100] vs [25, 35, 45, 55, 65]
    assert uniapl["length_w1"] == pytest.approx((15 + 10 + 5 + 15 + 35) / 5)
    assert uniapl["delta_mean"] == pytest.approx(np.mean([0.5, 0.25, -0.25, 1.0]))
    assert uniapl["delta_std"] == pytest.approx(np.std([0.5, 0.25, -0.25, 1.0]))
    assert uniapl["frac_delta_positive"] == pytest.approx(3 / 4)
    logprobs = [json.loads(line) for line in (out / "logprobs.jsonl").read_text().splitlines()]
    assert len(logprobs) == 9


def test_analyze_without_logprobs_skips_fig4(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.jsonl", [_row(i, 10 + i, 1, None, None) for i in range(3)])
    result = analyze({"m": path}, tmp_path / "out", max_rows=2)
    assert result["models"]["m"]["n"] == 2
    assert result["figure4_skipped"] and "fig4" not in result["figures"]
    assert not (tmp_path / "out" / "fig4_logprob_diff_kde.png").exists()
    assert (tmp_path / "out" / "fig3_response_length.png").exists()


def test_cli_ok(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["analyze", "--run", f"base={runs['base']}", "--run",
                 f"uniapl={runs['uniapl']}", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "uniapl" in printed and "log-probs: file" in printed
    assert (out / "analysis.json").exists()


@pytest.mark.parametrize("case", ["missing", "malformed", "field", "empty", "dir"])
def test_cli_errors(case: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "g.jsonl"
    good = json.dumps(_row(0, 5, 1, None, None))
    if case == "malformed":
        path.write_text(good + "\n" + good.replace("q0", "q1") + "\n{oops\n")
    elif case == "field":
        path.write_text(good + "\n" + json.dumps({**_row(1, 5, 1, None, None),
                                                  "response_tokens": "many"}) + "\n")
    elif case == "empty":
        path.write_text("\n")
    elif case == "dir":
        path = tmp_path / "rundir"
        path.mkdir()
    code = main(["analyze", "--run", f"m={path}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    expected = {"missing": f"{path}: no such file", "malformed": f"{path}:3: invalid JSON",
                "field": f"{path}:2: field 'response_tokens'", "empty": f"{path}: no rows",
                "dir": "generations/step_*.jsonl"}[case]
    assert expected in err


def test_cli_bad_run_spec(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--run", "no-equals-sign", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "expected NAME=PATH" in capsys.readouterr().err


@pytest.fixture(scope="module")
def score_model(tmp_path_factory) -> Path:
    """A tiny random Qwen3 with the tiny tokenizer (vocabulary sizes match)."""
    from tests.checkpoint.hf_models import save_tiny
    from uniapl_mcore.data.tiny_tokenizer import build_tiny_tokenizer

    directory = tmp_path_factory.mktemp("analysis") / "scorer"
    texts = PROMPTS + [f"answer {i}: the sea is blue. teacher answer {i}: a cat is small."
                       for i in range(7)]
    tokenizer = build_tiny_tokenizer(texts, directory, vocab_size=300)
    save_tiny(directory, "qwen3", vocab_size=len(tokenizer))
    tokenizer.save_pretrained(directory)
    return directory


def _direct_logprob(model_dir: Path, prompt: str, response: str) -> float:
    """Mean response-token log-prob from one unpadded forward of the model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<think>\n\n</think>\n\n")
    p = tok.encode(text, add_special_tokens=False)
    r = tok.encode(response, add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + r])).logits[0]
    logp = torch.log_softmax(logits[len(p) - 1:-1], dim=-1)
    return float(logp[torch.arange(len(r)), torch.tensor(r)].mean())


def test_analyze_with_score_model(runs: dict[str, Path], score_model: Path,
                                  tmp_path: Path) -> None:
    out = tmp_path / "scored"
    result = analyze(runs, out, score_model=score_model, batch_size=3, device="cpu")
    assert result["logprob_source"] == f"score_model:{score_model}"
    assert result["models"]["base"]["delta_n"] == 6  # file nulls do not matter here
    assert result["models"]["uniapl"]["delta_n"] == 5
    assert (out / "fig4_logprob_diff_kde.png").read_bytes()[:8] == PNG_MAGIC
    rows = [json.loads(line) for line in (out / "logprobs.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["model"] == "uniapl" and r["id"] == "q3")
    source = _row(3, 0, 0, None, None)
    expected_model = _direct_logprob(score_model, source["prompt"], source["response"])
    expected_teacher = _direct_logprob(score_model, source["prompt"], source["teacher_response"])
    assert abs(row["response_logprob"] - expected_model) < 1e-5
    assert abs(row["teacher_logprob"] - expected_teacher) < 1e-5
    assert row["delta"] == pytest.approx(expected_model - expected_teacher)
