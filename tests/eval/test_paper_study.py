"""The paper-study runner's bookkeeping (budget, skip-when-complete, aggregation, reports),
the Figure-4 log-likelihoods against a direct computation, ``uniapl analyze --teacher``, and
(slow) the runner end to end with tiny step counts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uniapl_mcore.cli import main as uniapl_main
from uniapl_mcore.config import load_config
from uniapl_mcore.data.schema import Row
from uniapl_mcore.eval.analysis import GenerationRow, wasserstein1
from uniapl_mcore.eval.likelihood import (
    LoglikScorer,
    ResponsePair,
    read_responses,
    write_responses,
)
from uniapl_mcore.eval.paper_study import (
    RUN_MARKER,
    RunResult,
    StudyError,
    aggregate,
    constraint_pass_rates,
    execute,
    method_budget,
    plan_runs,
    results_markdown,
    run_state,
)
from uniapl_mcore.rewards.verdicts import Constraint
from uniapl_mcore.trainer.config import UniaplConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[2]


def _base(*overrides: str) -> UniaplConfig:
    return load_config(None, list(overrides), cls=UniaplConfig)


# --------------------------------------------------------------------------- budget


def test_budget_matches_the_unified_run():
    """α = 0.875, B = 16, N = 150: UniAPL 2100 demos + 300 PREF prompts; GRPO 2 prompts per
    step (300); SFT→GRPO 131 SFT steps then 19 GRPO steps of 16 prompts."""
    base = _base()
    uni = method_budget("uniapl", base, 150)
    grpo = method_budget("grpo", base, 150)
    staged = method_budget("sft_agrpo", base, 150)
    assert (uni.sft_rows, uni.pref_prompts, uni.rollouts) == (2100, 300, 1200)
    assert (grpo.prompts_per_step, grpo.sft_rows, grpo.pref_prompts) == (2, 0, 300)
    assert (staged.sft_steps, staged.sft_rows, staged.pref_prompts) == (131, 2096, 304)
    assert {b.steps for b in (uni, grpo, staged)} == {150}
    # at two steps the staged methods still get one step of each stage
    assert method_budget("sft_grpo", base, 2).sft_steps == 1


def test_plan_runs_configs(tmp_path):
    specs = plan_runs(_base(), ("grpo", "sft_grpo", "uniapl"), 2, 10, 5, 5, 8)
    names = [s.name for s in specs]
    assert names == ["teacher_sft", "grpo_seed0", "sft_grpo_seed0", "uniapl_seed0",
                     "grpo_seed1", "sft_grpo_seed1", "uniapl_seed1"]
    by = {s.name: s.config for s in specs}
    assert by["teacher_sft"]["loss"]["objective"] == "sft"
    assert by["teacher_sft"]["train"]["max_steps"] == 5
    assert by["grpo_seed0"]["prompts_per_step"] == 2
    assert by["grpo_seed1"]["train"]["seed"] == by["grpo_seed0"]["train"]["seed"] + 1
    assert [(s["objective"], s["steps"]) for s in by["sft_grpo_seed0"]["stages"]] == \
        [("sft", 9), ("grpo", 1)]
    assert all(c["checkpoint"]["export_hf"] and c["eval"]["max_prompts"] == 8
               for c in by.values())
    # the written config loads as a run config
    path = tmp_path / "config.yaml"
    path.write_text(specs[2].config_yaml)
    assert load_config(path, [], cls=UniaplConfig).total_steps == 10


@pytest.mark.parametrize(("overrides", "steps", "field"), [
    (["stages=[{objective: sft, steps: 2}]"], 10, "stages"),
    (["data.expert_fraction=1.0"], 10, "data.expert_fraction"),
    ([], 1, "--steps"),
])
def test_bad_base_configs_are_refused(overrides, steps, field):
    with pytest.raises(StudyError) as err:
        plan_runs(_base(*overrides), ("uniapl",), 1, steps, 0, 5, None)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_adversarial_method_without_discriminator_is_refused():
    with pytest.raises(StudyError, match="UniAPL seed 1234: config error: discriminator.role"):
        plan_runs(_base("discriminator.role=none", "loss.objective=grpo"), ("uniapl",), 1, 4,
                  0, 5, None)


# --------------------------------------------------------------------------- execution


def _fake_training(steps: int, strict: float, rc: int = 0):
    """A runner that writes what a finished ``uniapl train`` leaves behind."""
    calls = []

    def run(cmd: list[str], log: Path) -> int:
        run_dir = Path(cmd[cmd.index("--run-dir") + 1])
        calls.append(run_dir)
        if rc:
            return rc
        records = [{"step": 0, "eval/reward_strict": 0.0, "eval/reward_partial": 0.1}]
        records += [{"step": s, "data/sft_rows": 3.0, "data/pref_prompts": 1.0}
                    for s in range(1, steps + 1)]
        records[-1].update({"eval/reward_strict": strict, "eval/reward_partial": 0.9})
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run_dir / "hf").mkdir(exist_ok=True)
        (run_dir / "hf" / "config.json").write_text("{}")
        return 0

    run.calls = calls
    return run


def test_execute_skips_complete_runs(tmp_path):
    spec = plan_runs(_base(), ("uniapl",), 1, 4, 0, 2, 8)[0]
    runner = _fake_training(4, 0.5)
    marker = execute(spec, tmp_path, runner)
    assert len(runner.calls) == 1 and marker["steps"] == 4 and marker["attempts"] == 1
    assert run_state(tmp_path / spec.name, spec) == "complete"
    again = execute(spec, tmp_path, runner)
    assert len(runner.calls) == 1 and again == marker  # skipped
    other = plan_runs(_base(), ("uniapl",), 1, 5, 0, 2, 8)[0]
    assert other.name == spec.name
    with pytest.raises(StudyError, match="another config"):
        execute(other, tmp_path, runner)


def test_failed_run_resumes_and_sums_wall_time(tmp_path):
    spec = plan_runs(_base(), ("grpo",), 1, 3, 0, 1, 8)[0]
    with pytest.raises(StudyError, match=r"grpo_seed0: training exited with code 1; see .*"
                                         r"train.log \(re-run to resume\)"):
        execute(spec, tmp_path, _fake_training(3, 0.2, rc=1))
    assert run_state(tmp_path / spec.name, spec) == "partial"
    marker = execute(spec, tmp_path, _fake_training(3, 0.2))
    attempts = [json.loads(line) for line in
                (tmp_path / spec.name / "attempts.jsonl").read_text().splitlines()]
    assert [a["resumed"] for a in attempts] == [False, True]
    assert marker["attempts"] == 2
    assert marker["wall_s"] == pytest.approx(sum(a["wall_s"] for a in attempts))
    assert json.loads((tmp_path / spec.name / RUN_MARKER).read_text()) == marker


def test_run_without_final_eval_is_not_marked_complete(tmp_path):
    spec = plan_runs(_base(), ("uniapl",), 1, 4, 0, 2, 8)[0]
    with pytest.raises(StudyError, match="no evaluation at the final step 4"):
        execute(spec, tmp_path, _fake_training(3, 0.5))  # stopped one step short
    assert not (tmp_path / spec.name / RUN_MARKER).exists()


# --------------------------------------------------------------------------- aggregation


def _gen(i: int, response_tokens: int, teacher_tokens: int, response: str = "x",
         teacher: str = "y") -> GenerationRow:
    return GenerationRow(f"q{i}", "prompt", response, response_tokens, teacher,
                         teacher_tokens, 0.0, None, None, None)


def _result(method: str, seed: int, strict: float, partial: float, lengths: list[int],
            wall: float = 10.0) -> RunResult:
    rows = [_gen(i, n, 20 + i) for i, n in enumerate(lengths)]
    return RunResult(method, seed, Path(f"/runs/{method}{seed}"), 8, wall, strict, partial,
                     30, 10, 40, rows)


def test_aggregate_means_and_sample_std():
    results = [_result("uniapl", 1, 0.5, 0.7, [10, 20, 30]),
               _result("uniapl", 2, 0.3, 0.6, [21, 22, 23], wall=5.0),
               _result("grpo", 1, 0.1, 0.2, [5, 5, 5])]
    table = aggregate(results, ("grpo", "uniapl", "chord"))
    assert list(table) == ["grpo", "uniapl"]  # methods without runs are left out
    u = table["uniapl"]
    assert u["strict_mean"] == pytest.approx(0.4)
    assert u["strict_std"] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert u["partial_mean"] == pytest.approx(0.65)
    assert u["seeds"] == [1, 2] and u["steps"] == 8 and u["wall_s"] == 15.0
    w1 = [wasserstein1([10, 20, 30], [20, 21, 22]), wasserstein1([21, 22, 23], [20, 21, 22])]
    assert u["per_seed"]["length_w1"] == pytest.approx(w1)
    assert u["length_w1_mean"] == pytest.approx(np.mean(w1))
    assert table["grpo"]["strict_std"] == 0.0  # one seed
    assert set(table["grpo"]) >= {"strict_mean", "strict_std", "partial_mean", "partial_std",
                                  "seeds", "steps", "wall_s"}
    study = {"base_config": "the embedded task", "setting": "quick", "steps": 8,
             "seeds": [1, 2], "eval_prompts": 3, "teacher_label": "proxy", "responses": 5,
             "teacher_length_mean": 21.0}
    md = results_markdown(table, study, {})
    assert "| UniAPL | 0.400 ± 0.141 | 0.650 ± 0.071 | 2 (1, 2) | 8 |" in md
    assert "| GRPO | +0.300 | 0.141 | +2.1 |" in md


def test_constraint_pass_rates():
    lower = Constraint("change_case:english_lowercase", {})
    comma = Constraint("punctuation:no_comma", {})
    rows = {"q0": Row("q0", "t", ({"role": "user", "content": "p"},), (lower, comma)),
            "q1": Row("q1", "t", ({"role": "user", "content": "p"},), (comma,))}
    gens = [_gen(0, 1, 1, response="all lower, with comma", teacher="fine text here"),
            _gen(1, 1, 1, response="No comma Here", teacher="a, b")]
    rates = constraint_pass_rates({"model": gens}, rows)
    assert rates["change_case:english_lowercase"]["model"] == {"pass": 1.0, "n": 1}
    assert rates["punctuation:no_comma"]["model"] == {"pass": 0.5, "n": 2}
    assert rates["punctuation:no_comma"]["teacher responses"] == {"pass": 0.5, "n": 2}


# --------------------------------------------------------------------------- log-likelihood


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random Qwen3 models (different weights) with the same tiny tokenizer."""
    from tests.checkpoint.hf_models import save_tiny
    from uniapl_mcore.data.tiny_tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("loglik")
    texts = [p.messages[-1]["content"] + " " + p.response for p in PAIRS]
    dirs = []
    for seed in (0, 1):
        directory = root / f"m{seed}"
        tokenizer = build_tiny_tokenizer(texts, directory, vocab_size=300)
        save_tiny(directory, "qwen3", vocab_size=len(tokenizer), seed=seed)
        tokenizer.save_pretrained(directory)
        dirs.append(directory)
    return dirs[0], dirs[1]


PAIRS = [ResponsePair(f"r{i}", ({"role": "user", "content": p},), r) for i, (p, r) in
         enumerate([("Write about the sea.", "the sea is calm and blue."),
                    ("Use no commas.", "no commas here at all"),
                    ("Give a title.", "<<notes on tea>>\n\na cup of tea is nice."),
                    ("Be brief.", "ok."),
                    ("End with a phrase.", "done. Any other questions?")])]


def _direct_total(model_dir: Path, pair: ResponsePair) -> float:
    """Σ log p(target token | prefix), one unpadded forward per target token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    text = tok.apply_chat_template(list(pair.messages), tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<think>\n\n</think>\n\n")
    prompt = tok.encode(text, add_special_tokens=False)
    target = tok.encode(pair.response, add_special_tokens=False) + \
        tok.encode("<|im_end|>", add_special_tokens=False)
    total, ids = 0.0, list(prompt)
    with torch.no_grad():
        for token in target:
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, dim=-1)[token])
            ids.append(token)
    return total


def test_total_logliks_match_direct_computation(tiny_models):
    scorer = LoglikScorer(tiny_models[0], batch_size=3, device="cpu")  # padded batches
    got = scorer.total_logliks(PAIRS)
    for pair, value in zip(PAIRS, got, strict=True):
        assert value == pytest.approx(_direct_total(tiny_models[0], pair), abs=1e-4)
    assert all(v < 0 and math.isfinite(v) for v in got)


def test_read_responses_formats_and_sampling(tmp_path):
    lines = [{"id": "a", "messages": [{"role": "user", "content": "p"}],
              "teacher_responses": [{"text": "t", "model": "m"}]},
             {"prompt": "p2", "teacher_response": "t2"},
             {"id": 7, "prompt": "p3", "response": "t3"}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    pairs = read_responses(path, None)
    assert [(p.id, p.response) for p in pairs] == [("a", "t"), ("line2", "t2"), ("7", "t3")]
    sample = read_responses(path, 2, seed=3)
    assert len(sample) == 2 and sample == read_responses(path, 2, seed=3)
    assert read_responses(write_responses(tmp_path / "w.jsonl", pairs), None) == pairs
    path.write_text('{"prompt": "p"}\n')
    with pytest.raises(ValueError, match=r"r.jsonl:1: no response text"):
        read_responses(path)


def test_analyze_cli_teacher_students(tiny_models, tmp_path, capsys):
    teacher, other = tiny_models
    responses = write_responses(tmp_path / "responses.jsonl", PAIRS)
    out = tmp_path / "fig4"
    assert uniapl_main(["analyze", "--teacher", str(teacher), "--student", f"same={teacher}",
                        "--student", f"other={other}", "--student", f"other={teacher}",
                        "--responses", str(responses), "--num-responses", "4",
                        "--batch-size", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "loglik.json").read_text())
    assert summary["responses"] == 4
    assert summary["students"]["same"]["gap_mean"] == pytest.approx(0.0, abs=1e-5)
    assert len(summary["students"]["other"]["checkpoints"]) == 2  # pooled under one name
    assert summary["students"]["other"]["checkpoints"][1]["gap_mean"] == \
        pytest.approx(0.0, abs=1e-5)
    rows = [json.loads(line) for line in (out / "loglik.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len(rows[0]["other"]) == 2
    assert (out / "fig4_loglik_kde.png").read_bytes()[:8] == PNG_MAGIC
    assert "mean total log-likelihood" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --run NAME=PATH"),
    (["--teacher", "T", "--responses", "R"], "--teacher needs at least one --student"),
    (["--teacher", "T", "--student", "a=S"], "--teacher needs --responses FILE"),
    (["--student", "a=S"], "--student and --responses need --teacher PATH"),
    (["--teacher", "/nonexistent/t", "--student", "a=/x", "--responses", "/nonexistent/r"],
     "/nonexistent/r: no such file"),
])
def test_analyze_cli_errors(args, message, tmp_path, capsys):
    assert uniapl_main(["analyze", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_reproduce_paper_end_to_end(tmp_path):
    """The runner with tiny step counts: every default method, the proxy teacher, results
    and figures; a second invocation skips every run."""
    out = tmp_path / "study"
    cmd = [sys.executable, str(ROOT / "tools" / "reproduce_paper.py"), "--out", str(out),
           "--steps", "2", "--seeds", "1", "--teacher-steps", "2", "--eval-prompts", "4",
           "--num-responses", "20", "--methods", "grpo,sft_agrpo,uniapl",
           "rollout.sampling.max_new_tokens=24", "eval.max_new_tokens=24", "eval.at_start=false",
           "prompts_per_step=8", "checkpoint.keep_last=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["grpo", "sft_agrpo", "uniapl"]
    for m in results.values():
        assert m["steps"] == 2 and m["seeds"] == [1234] and 0 <= m["strict_mean"] <= 1
        assert math.isfinite(m["loglik_gap_mean"])
    assert results["grpo"]["budget"]["sft_rows"] == 0
    for fig in ("fig3_length.png", "fig4_logprob_kde.png"):
        assert (out / fig).read_bytes()[:8] == PNG_MAGIC
    assert "proxy teacher" in (out / "results.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("complete, skipped") == 4
