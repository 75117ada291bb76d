"""The paper's comparison at any scale: GRPO, SFT→GRPO, SFT→A-GRPO, UniAPL (and optionally
CHORD / A-CHORD) on one base config, the same budget, several seeds (``tools/
reproduce_paper.py``).

**Budget.** The base config's unified run fixes it: ``N`` optimizer steps of ``B`` =
``prompts_per_step`` rows, a share α = ``data.expert_fraction`` of them expert
demonstrations (SFT rows) and the rest PREF prompts rolled out ``G`` times. Over the run
that is ``D = floor(α·B·N)`` demonstrations and ``P = B·N − D`` PREF prompts (``P·G``
rollouts). Every method gets ``N`` optimizer steps and at most those demonstrations and
rollouts:

* ``uniapl`` / ``chord`` / ``a_chord``: the base run with that objective (D demos, P prompts);
* ``grpo``: ``round(P / N)`` PREF prompts per step (P prompts, no demonstrations);
* ``sft_grpo`` / ``sft_agrpo``: ``S = round(α·N)`` SFT steps of ``B`` demonstrations, then
  ``N − S`` GRPO / A-GRPO steps of ``B`` prompts (≈ D demos, ≈ P prompts).

Everything else (model, optimizer and LR schedule per stage, rollout sampling, KL,
discriminator, evaluation) is the base config's, for every method. The counts each run
actually consumed are read back from its ``metrics.jsonl`` and reported.

**Bookkeeping.** Each run lives in ``OUT/runs/<name>/`` with its input config
(``input_config.yaml``); ``study_run.json`` marks it complete (with the config's SHA-256 and
its wall time). A complete run is skipped; an interrupted one resumes from its latest
checkpoint (the trainer's own resume); a run directory made from another config is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from uniapl_mcore.config import build_dataclass
from uniapl_mcore.data.jsonl import read_jsonl
from uniapl_mcore.eval.analysis import (
    GenerationRow,
    _write_text,
    plot_length_series,
    read_generations,
    wasserstein1,
)
from uniapl_mcore.trainer.config import UniaplConfig

logger = logging.getLogger(__name__)

#: Method name → label in tables and figures.
LABELS = {"grpo": "GRPO", "sft_grpo": "SFT→GRPO", "sft_agrpo": "SFT→A-GRPO",
          "uniapl": "UniAPL", "chord": "CHORD", "a_chord": "A-CHORD"}
METHODS = tuple(LABELS)
DEFAULT_METHODS = ("grpo", "sft_grpo", "sft_agrpo", "uniapl")
TEACHER_RUN = "teacher_sft"
RUN_MARKER = "study_run.json"
INPUT_CONFIG = "input_config.yaml"
FIG3 = "fig3_length.png"
FIG4 = "fig4_logprob_kde.png"


class StudyError(ValueError):
    """Bad study input or a failed run; ``str(err)`` is one line naming the file/field."""


# --------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class Budget:
    """What one method's run consumes: optimizer steps, SFT rows and PREF prompts in total."""

    steps: int
    prompts_per_step: int
    sft_steps: int
    sft_rows: int
    pref_prompts: int
    samples_per_prompt: int

    @property
    def rollouts(self) -> int:
        """Student samples of PREF prompts over the run."""
        return self.pref_prompts * self.samples_per_prompt


def unified_shares(base: UniaplConfig, steps: int) -> tuple[int, int]:
    """``(D, P)``: demonstrations and PREF prompts of the unified run over ``steps`` steps
    (the sampler's ``n_sft`` sums to ``floor(α·B·steps)``)."""
    alpha, rows = base.data.expert_fraction, base.prompts_per_step
    demos = math.floor(alpha * rows * steps + 1e-9)
    return demos, rows * steps - demos


def method_budget(method: str, base: UniaplConfig, steps: int) -> Budget:
    """The budget of ``method`` under the rules of the module doc."""
    rows, g = base.prompts_per_step, base.rollout.samples_per_prompt
    demos, prefs = unified_shares(base, steps)
    if method in ("uniapl", "chord", "a_chord"):
        return Budget(steps, rows, 0, demos, prefs, g)
    if method == "grpo":
        per_step = max(1, round(prefs / steps))
        return Budget(steps, per_step, 0, 0, per_step * steps, g)
    if method in ("sft_grpo", "sft_agrpo"):
        sft_steps = min(max(round(base.data.expert_fraction * steps), 1), steps - 1)
        return Budget(steps, rows, sft_steps, sft_steps * rows, (steps - sft_steps) * rows, g)
    raise StudyError(f"--methods: unknown method {method!r} (one of {', '.join(METHODS)})")


def check_base(base: UniaplConfig, steps: int) -> None:
    """Refuse base configs the budget rules cannot apply to (one line naming the field)."""
    if base.stages:
        raise StudyError("stages: the base config must be a single-stage run; the study "
                         "builds each method's stages itself")
    alpha = base.data.expert_fraction
    if not 0.0 < alpha < 1.0:
        raise StudyError(f"data.expert_fraction: must be strictly between 0 and 1 for the "
                         f"unified run to mix demonstrations and rollouts, got {alpha}")
    if steps < 2:
        raise StudyError(f"--steps: must be >= 2 (staged methods need an SFT and an RL "
                         f"step), got {steps}")


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    name: str
    method: str
    seed: int
    config: dict[str, Any]
    budget: Budget | None

    @property
    def config_yaml(self) -> str:
        return yaml.safe_dump(self.config, sort_keys=False)

    @property
    def config_sha256(self) -> str:
        return hashlib.sha256(self.config_yaml.encode()).hexdigest()


def _common(data: dict[str, Any], seed: int, steps: int, save_interval: int,
            eval_prompts: int | None) -> dict[str, Any]:
    """Settings every run of the study shares (seed, steps, HF export, checkpoints, eval)."""
    data = copy.deepcopy(data)
    data["train"]["seed"] = seed
    data["train"]["max_steps"] = steps
    data["stages"] = []
    data["checkpoint"]["export_hf"] = True
    data["checkpoint"]["save_at_end"] = True
    data["checkpoint"]["save_interval_steps"] = save_interval
    data["logging"]["progress_bar"] = "off"
    data["eval"]["max_prompts"] = eval_prompts
    return data


def method_config(method: str, base: UniaplConfig, seed: int, steps: int,
                  save_interval: int, eval_prompts: int | None) -> dict[str, Any]:
    """The full config (a plain mapping, validated) of one method's run."""
    budget = method_budget(method, base, steps)
    data = _common(dataclasses.asdict(base), seed, steps, save_interval, eval_prompts)
    data["prompts_per_step"] = budget.prompts_per_step
    if method in ("sft_grpo", "sft_agrpo"):
        rl = "grpo" if method == "sft_grpo" else "a_grpo"
        data["stages"] = [
            {"objective": "sft", "steps": budget.sft_steps, "lr": None, "warmup_steps": None,
             "name": "sft"},
            {"objective": rl, "steps": steps - budget.sft_steps, "lr": None,
             "warmup_steps": None, "name": rl.replace("_", "-")}]
        data["loss"]["objective"] = rl  # what the stages list runs; recorded for readers
    else:
        data["loss"]["objective"] = method
    return validated(data, f"{LABELS[method]} seed {seed}")


def teacher_config(base: UniaplConfig, steps: int, save_interval: int,
                   eval_prompts: int | None) -> dict[str, Any]:
    """The proxy teacher: the base policy trained by SFT on the dataset responses."""
    data = _common(dataclasses.asdict(base), base.train.seed, steps, save_interval,
                   eval_prompts)
    data["loss"]["objective"] = "sft"
    return validated(data, "teacher SFT")


def validated(data: dict[str, Any], what: str) -> dict[str, Any]:
    """``data`` after building a :class:`UniaplConfig` from it (config errors name ``what``)."""
    from uniapl_mcore.config import ConfigError

    try:
        build_dataclass(UniaplConfig, copy.deepcopy(data))
    except ConfigError as err:
        raise StudyError(f"{what}: config error: {err}") from None
    return data


def plan_runs(base: UniaplConfig, methods: Sequence[str], seeds: int, steps: int,
              teacher_steps: int, save_interval: int, eval_prompts: int | None
              ) -> list[RunSpec]:
    """The study's runs: the proxy teacher first (when ``teacher_steps`` > 0), then every
    method for seed 0, then seed 1, … (so an interrupted study has balanced seeds)."""
    check_base(base, steps)
    runs = []
    if teacher_steps > 0:
        runs.append(RunSpec(TEACHER_RUN, "teacher", base.train.seed,
                            teacher_config(base, teacher_steps, save_interval, eval_prompts),
                            None))
    for k in range(seeds):
        seed = base.train.seed + k
        for method in methods:
            runs.append(RunSpec(f"{method}_seed{k}", method, seed,
                                method_config(method, base, seed, steps, save_interval,
                                              eval_prompts),
                                method_budget(method, base, steps)))
    return runs


# --------------------------------------------------------------------------- execution


def run_state(run_dir: Path, spec: RunSpec) -> str:
    """``complete``, ``partial`` (started, resumable) or ``new``; a directory made from
    another config raises :class:`StudyError`."""
    marker, existing = run_dir / RUN_MARKER, run_dir / INPUT_CONFIG
    if existing.is_file() and existing.read_text() != spec.config_yaml:
        raise StudyError(f"{existing}: this run was started with another config (different "
                         "study settings); use a new --out or delete the run directory")
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except json.JSONDecodeError:
            raise StudyError(f"{marker}: malformed JSON") from None
        if done.get("config_sha256") != spec.config_sha256:
            raise StudyError(f"{marker}: completed with another config; use a new --out or "
                             "delete the run directory")
        return "complete"
    return "partial" if existing.is_file() else "new"


def train_command(config_path: Path, run_dir: Path) -> list[str]:
    """The ``uniapl train`` process of one run (same interpreter, same niceness)."""
    return [sys.executable, "-m", "uniapl_mcore.cli", "train", "--config", str(config_path),
            "--run-dir", str(run_dir)]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` records (one per step, plus the step-0 evaluation)."""
    return [record for _, record in read_jsonl(run_dir / "metrics.jsonl", StudyError)]


def total_steps(spec: RunSpec) -> int:
    stages = spec.config.get("stages") or []
    return sum(s["steps"] for s in stages) if stages else spec.config["train"]["max_steps"]


def final_eval(records: Sequence[Mapping[str, Any]], steps: int, where: Path
               ) -> dict[str, float]:
    """The evaluation logged at step ``steps`` (``eval/*`` keys)."""
    for rec in reversed(records):
        if rec.get("step") == steps and "eval/reward_strict" in rec:
            return {k: float(v) for k, v in rec.items() if k.startswith("eval/")}
    raise StudyError(f"{where}: no evaluation at the final step {steps}")


def execute(spec: RunSpec, runs_root: Path,
            runner: Callable[[list[str], Path], int] | None = None) -> dict[str, Any]:
    """Run ``spec`` unless complete; returns its marker (``wall_s`` summed over attempts).

    ``runner(cmd, log_path) → exit code`` starts the training process (default: a
    subprocess appending to ``train.log``).
    """
    run_dir = runs_root / spec.name
    state = run_state(run_dir, spec)
    if state == "complete":
        logger.info("%s: complete, skipped", spec.name)
        return json.loads((run_dir / RUN_MARKER).read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / INPUT_CONFIG).write_text(spec.config_yaml)
    logger.info("%s: %s (log: %s)", spec.name, "resuming" if state == "partial" else "starting",
                run_dir / "train.log")
    start = time.monotonic()
    rc = (runner or _subprocess_runner)(train_command(run_dir / INPUT_CONFIG, run_dir),
                                        run_dir / "train.log")
    wall = time.monotonic() - start
    with (run_dir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps({"wall_s": wall, "exit_code": rc, "resumed": state == "partial"})
                + "\n")
    if rc != 0:
        raise StudyError(f"{spec.name}: training exited with code {rc}; see "
                         f"{run_dir / 'train.log'} (re-run to resume)")
    return mark_complete(spec, run_dir)


def mark_complete(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Check the run finished (final evaluation, HF export) and write its marker."""
    steps = total_steps(spec)
    final_eval(read_metrics(run_dir), steps, run_dir / "metrics.jsonl")
    if not (run_dir / "hf" / "config.json").is_file():
        raise StudyError(f"{run_dir / 'hf'}: the run finished without its HF export")
    attempts = [record for _, record in read_jsonl(run_dir / "attempts.jsonl", StudyError)]
    marker = {"name": spec.name, "method": spec.method, "seed": spec.seed, "steps": steps,
              "config_sha256": spec.config_sha256,
              "wall_s": float(sum(a["wall_s"] for a in attempts)), "attempts": len(attempts)}
    _write_text(run_dir / RUN_MARKER, json.dumps(marker, indent=2) + "\n")
    return marker


def _subprocess_runner(cmd: list[str], log_path: Path) -> int:
    with log_path.open("a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        log.flush()
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """One finished run, as the results need it."""

    method: str
    seed: int
    run_dir: Path
    steps: int
    wall_s: float
    strict: float
    partial: float
    sft_rows: int
    pref_prompts: int
    rollouts: int
    rows: list[GenerationRow] = field(default_factory=list)
    initial_rows: list[GenerationRow] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [r.response_tokens for r in self.rows]

    @property
    def teacher_lengths(self) -> list[int]:
        return [r.teacher_tokens for r in self.rows]


def collect_run(spec: RunSpec, runs_root: Path) -> RunResult:
    """Final evaluation, consumed budget and held-out generations of a complete run."""
    run_dir = runs_root / spec.name
    marker = json.loads((run_dir / RUN_MARKER).read_text())
    records = read_metrics(run_dir)
    steps = total_steps(spec)
    final = final_eval(records, steps, run_dir / "metrics.jsonl")
    train = [r for r in records if "data/sft_rows" in r]
    gens = run_dir / "generations"
    initial = gens / f"step_{0:06d}.jsonl"
    return RunResult(
        method=spec.method, seed=spec.seed, run_dir=run_dir, steps=steps,
        wall_s=float(marker["wall_s"]), strict=final["eval/reward_strict"],
        partial=final["eval/reward_partial"],
        sft_rows=int(sum(r["data/sft_rows"] for r in train)),
        pref_prompts=int(sum(r["data/pref_prompts"] for r in train)),
        rollouts=int(sum(r["data/pref_prompts"] for r in train)
                     * spec.config["rollout"]["samples_per_prompt"]),
        rows=read_generations(gens / f"step_{steps:06d}.jsonl"),
        initial_rows=read_generations(initial) if initial.is_file() else [],
    )  # fmt: skip


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def aggregate(results: Sequence[RunResult], methods: Sequence[str]) -> dict[str, Any]:
    """Per method: strict / partial mean and std over seeds, seeds, steps, total wall time,
    consumed budget, mean response length and its Wasserstein-1 distance to the teacher's
    (tokens, mean and std over seeds)."""
    out: dict[str, Any] = {}
    for method in methods:
        runs = sorted((r for r in results if r.method == method), key=lambda r: r.seed)
        if not runs:
            continue
        strict_mean, strict_std = mean_std([r.strict for r in runs])
        partial_mean, partial_std = mean_std([r.partial for r in runs])
        w1 = [wasserstein1(r.lengths, r.teacher_lengths) for r in runs]
        w1_mean, w1_std = mean_std(w1)
        out[method] = {
            "label": LABELS[method],
            "strict_mean": strict_mean, "strict_std": strict_std,
            "partial_mean": partial_mean, "partial_std": partial_std,
            "seeds": [r.seed for r in runs], "steps": runs[0].steps,
            "wall_s": float(sum(r.wall_s for r in runs)),
            "per_seed": {"strict": [r.strict for r in runs],
                         "partial": [r.partial for r in runs],
                         "wall_s": [r.wall_s for r in runs],
                         "length_w1": w1},
            "budget": {"sft_rows": runs[0].sft_rows, "pref_prompts": runs[0].pref_prompts,
                       "rollouts": runs[0].rollouts},
            "length_mean": float(np.mean([np.mean(r.lengths) for r in runs])),
            "length_w1_mean": w1_mean, "length_w1_std": w1_std,
        }  # fmt: skip
    return out


# --------------------------------------------------------------------------- per-constraint


def constraint_pass_rates(rows_by_group: Mapping[str, Sequence[GenerationRow]],
                          eval_rows: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per constraint kind: how often each group's responses satisfy it (strict checker),
    over the rows that carry it, plus the dataset's teacher responses. ``eval_rows``: held-out
    :class:`~uniapl_mcore.data.schema.Row` by id (rows without constraints are skipped)."""
    from uniapl_mcore.rewards.verdicts import build_checkers, strict_verdicts

    tallies: dict[str, dict[str, list[int]]] = {}
    groups = {"teacher responses": None, **rows_by_group}
    for group, rows in groups.items():
        source = rows if rows is not None else next(iter(rows_by_group.values()))
        for gen in source:
            row = eval_rows.get(gen.id)
            if row is None or not row.constraints:
                continue
            text = gen.teacher_response if rows is None else gen.response
            verdicts = strict_verdicts(build_checkers(row.constraints, row.id), text)
            for constraint, ok in zip(row.constraints, verdicts, strict=True):
                tally = tallies.setdefault(constraint.id, {}).setdefault(group, [0, 0])
                tally[0] += int(bool(ok))
                tally[1] += 1
    return {kind: {group: {"pass": p / n, "n": n} for group, (p, n) in by_group.items()}
            for kind, by_group in sorted(tallies.items())}


# --------------------------------------------------------------------------- dataset sample


def sample_dataset_responses(cfg: UniaplConfig, num: int, seed: int) -> list[Any]:
    """``num`` SFT-pool rows' SFT targets (the dataset responses) as
    :class:`~uniapl_mcore.eval.likelihood.ResponsePair`, sampled with ``seed`` (built with
    the run's data pipeline, so any configured dataset works)."""
    from uniapl_mcore.data.pipeline import build_data
    from uniapl_mcore.data.templating import pick_target
    from uniapl_mcore.eval.likelihood import ResponsePair

    data = build_data(cfg.data, cfg.reward)
    pool = range(len(data.sft_pool))
    picked = sorted(random.Random(seed).sample(pool, min(num, len(pool))))
    pairs = []
    for row in data.sft_rows(picked):
        text, _ = pick_target([t.text for t in row.teacher_responses], row.reference_response,
                              cfg.data.sft_target, cfg.data.sft_target_fallback)
        if text:
            pairs.append(ResponsePair(row.id, tuple(row.messages), text))
    if not pairs:
        raise StudyError("data: no SFT row has a dataset response to score for Figure 4")
    return pairs


def held_out_rows(cfg: UniaplConfig) -> dict[str, Any]:
    """The held-out rows by id (constraints for the per-constraint table)."""
    from uniapl_mcore.data.pipeline import build_data

    return {row.id: row for row in build_data(cfg.data, cfg.reward).eval_rows()}


# --------------------------------------------------------------------------- figures


def plot_fig3(results: Sequence[RunResult], methods: Sequence[str], out: Path) -> Path:
    """Figure 3: held-out response lengths of each method (pooled over seeds) and of the
    teacher responses to the same prompts."""
    first = next(r for r in results if r.method in methods)
    series: dict[str, list[int]] = {"teacher responses": first.teacher_lengths}
    for method in methods:
        runs = [r for r in results if r.method == method]
        if runs:
            series[f"{LABELS[method]} ({len(runs)} seeds)"] = [n for r in runs
                                                               for n in r.lengths]
    return plot_length_series(series, out, f"Response length on {len(first.rows)} held-out "
                                           "prompts: teacher vs trained models",
                              filled="teacher responses")


# --------------------------------------------------------------------------- reporting


def _pm(mean: float | None, std: float | None, spec: str = ".3f") -> str:
    if mean is None:
        return "-"
    return f"{format(mean, spec)} ± {format(std or 0.0, spec.lstrip('+'))}"


def results_markdown(table: Mapping[str, Any], study: Mapping[str, Any],
                     constraints: Mapping[str, Any]) -> str:
    """``results.md``: settings, the results table, closeness to the teacher, per-constraint
    pass rates, differences of UniAPL to each baseline relative to the seed spread."""
    lines = ["# UniAPL paper study", "",
             f"Base config: {study['base_config']}; setting: {study['setting']}; "
             f"{study['steps']} optimizer steps per method; seeds {study['seeds']}; "
             f"held-out prompts per evaluation: {study['eval_prompts']}.",
             f"Teacher for Figure 4: {study['teacher_label']}.", "",
             "Mean ± sample std (ddof=1) over seeds; strict = all constraints of a prompt "
             "followed, partial = share of constraints followed (greedy, held-out).", "",
             "| method | strict | partial | seeds | steps | SFT rows | PREF prompts | rollouts "
             "| wall (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for m in table.values():
        b = m["budget"]
        lines.append(f"| {m['label']} | {_pm(m['strict_mean'], m['strict_std'])} | "
                     f"{_pm(m['partial_mean'], m['partial_std'])} | {len(m['seeds'])} "
                     f"({', '.join(map(str, m['seeds']))}) | {m['steps']} | {b['sft_rows']} | "
                     f"{b['pref_prompts']} | {b['rollouts']} | {m['wall_s']:.0f} |")
    lines += ["", "## Closeness to the teacher", "",
              "Length: held-out responses, Wasserstein-1 distance to the teacher responses' "
              "length distribution (tokens). Log-likelihood: "
              f"{study['responses']} dataset responses, Δ = log p_student − log p_teacher "
              "(total nats per response), mean over responses, then mean ± std over seeds.", "",
              f"| method | mean length (teacher {study['teacher_length_mean']:.1f}) | length W1 "
              "| mean Δ loglik | mean abs Δ loglik |", "|---|---|---|---|---|"]
    for m in table.values():
        lines.append(f"| {m['label']} | {m['length_mean']:.1f} | "
                     f"{_pm(m['length_w1_mean'], m['length_w1_std'], '.1f')} | "
                     f"{_pm(m.get('loglik_gap_mean'), m.get('loglik_gap_std'), '+.1f')} | "
                     f"{_pm(m.get('abs_loglik_gap_mean'), m.get('abs_loglik_gap_std'), '.1f')} |")
    lines += ["", *comparison_lines(table), "", *constraint_lines(constraints, table), "",
              f"Figures: `{FIG3}` (response lengths), `{FIG4}` (KDE of Δ)."]
    return "\n".join(lines) + "\n"


def comparison_lines(table: Mapping[str, Any]) -> list[str]:
    """UniAPL's strict-score difference to each other method, and the larger seed std."""
    if "uniapl" not in table:
        return []
    u = table["uniapl"]
    lines = ["## UniAPL vs the others (strict)", "",
             "| vs | difference | larger seed std of the two | difference / std |",
             "|---|---|---|---|"]
    for name, m in table.items():
        if name == "uniapl":
            continue
        diff = u["strict_mean"] - m["strict_mean"]
        spread = max(u["strict_std"], m["strict_std"])
        ratio = f"{diff / spread:+.1f}" if spread > 0 else "-"
        lines.append(f"| {m['label']} | {diff:+.3f} | {spread:.3f} | {ratio} |")
    return lines


def constraint_lines(constraints: Mapping[str, Any], table: Mapping[str, Any]) -> list[str]:
    """Per constraint kind: pass rate of the initial policy, the teacher and each method."""
    if not constraints:
        return []
    groups = ["initial policy", "teacher responses", *(m["label"] for m in table.values())]
    lines = ["## Per constraint kind (held-out, strict checker, pooled over seeds)", "",
             "| constraint | n | " + " | ".join(groups) + " |",
             "|---|---|" + "---|" * len(groups)]
    for kind, by_group in constraints.items():
        n = by_group.get("teacher responses", {}).get("n", 0)
        cells = [f"{by_group[g]['pass']:.2f}" if g in by_group else "-" for g in groups]
        lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    return lines


def teacher_label(runs_root: Path, spec: RunSpec | None, given: Path | None) -> str:
    """How the Figure-4 teacher was obtained, for the output."""
    if given is not None:
        return f"given model {given}"
    assert spec is not None
    records = read_metrics(runs_root / spec.name)
    losses = [r["sft/loss"] for r in records if "sft/loss" in r][-10:]
    final = final_eval(records, total_steps(spec), runs_root / spec.name / "metrics.jsonl")
    return (f"proxy teacher — the base policy trained by SFT on the dataset responses for "
            f"{total_steps(spec)} steps ({runs_root / spec.name}; SFT loss over its last "
            f"{len(losses)} steps {np.mean(losses):.3f} nats/token; held-out strict "
            f"{final['eval/reward_strict']:.3f})")


def write_results(specs: Sequence[RunSpec], runs_root: Path, out: Path, cfg: UniaplConfig,
                  study: dict[str, Any], teacher: Path | None, num_responses: int,
                  batch_size: int = 16) -> dict[str, Any]:
    """Collect every run, score Figure 4, draw both figures, write ``results.json``,
    ``results.md`` and ``study.json``. Returns the results table."""
    from uniapl_mcore.eval.likelihood import analyze_logliks, write_responses

    methods = study["methods"]
    results = [collect_run(s, runs_root) for s in specs if s.method != "teacher"]
    table = aggregate(results, methods)
    plot_fig3(results, methods, out / FIG3)
    teacher_spec = next((s for s in specs if s.method == "teacher"), None)
    teacher_path = teacher if teacher is not None else runs_root / TEACHER_RUN
    study["teacher_label"] = teacher_label(runs_root, teacher_spec, teacher)
    pairs = sample_dataset_responses(cfg, num_responses, cfg.train.seed)
    write_responses(out / "fig4_responses.jsonl", pairs)
    students = {LABELS[m]: [r.run_dir for r in results if r.method == m] for m in table}
    short = (f"given model {Path(teacher).name}" if teacher is not None else
             f"proxy — the base policy after {total_steps(teacher_spec)} SFT steps on the "
             "dataset responses")
    summary = analyze_logliks(teacher_path, students, pairs, out / "loglik", batch_size,
                              teacher_label=short, figure=out / FIG4)
    for method, m in table.items():
        s = summary["students"][LABELS[method]]
        m.update({"loglik_gap_mean": s["gap_mean"], "loglik_gap_std": s["gap_std"],
                  "abs_loglik_gap_mean": s["abs_gap_mean"], "abs_loglik_gap_std": s["abs_gap_std"]})
    study.update({"responses": len(pairs), "teacher_loglik_mean": summary["teacher_loglik_mean"],
                  "teacher_length_mean": float(np.mean(results[0].teacher_lengths))})
    constraints = constraint_table(results, methods, cfg)
    _write_text(out / "results.json", json.dumps(table, indent=2) + "\n")
    _write_text(out / "results.md", results_markdown(table, study, constraints))
    _write_text(out / "study.json", json.dumps({**study, "constraints": constraints},
                                               indent=2, default=str) + "\n")
    return table


def constraint_table(results: Sequence[RunResult], methods: Sequence[str],
                     cfg: UniaplConfig) -> dict[str, Any]:
    """:func:`constraint_pass_rates` for the initial policy (step 0, one run per seed), the
    teacher responses and each method (final step, pooled over seeds)."""
    groups: dict[str, list[GenerationRow]] = {}
    seen_seeds: set[int] = set()
    initial: list[GenerationRow] = []
    for r in results:
        if r.seed not in seen_seeds and r.initial_rows:
            seen_seeds.add(r.seed)
            initial += r.initial_rows
    if initial:
        groups["initial policy"] = initial
    for method in methods:
        rows = [row for r in results if r.method == method for row in r.rows]
        if rows:
            groups[LABELS[method]] = rows
    return constraint_pass_rates(groups, held_out_rows(cfg))
