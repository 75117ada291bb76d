"""``tools/reproduce_paper.py``: the paper's comparison (Table 2, Figures 3–4) on one base
config — see :mod:`uniapl_mcore.eval.paper_study` for the budget rules and bookkeeping.

    python tools/reproduce_paper.py --quick --out studies/quick          # embedded task
    python tools/reproduce_paper.py --config my.yaml --seeds 3 --teacher /ckpt/teacher \\
        --out studies/mine

Re-running the same command resumes: complete runs are skipped, an interrupted run resumes
from its latest checkpoint, and the results are rebuilt from every run.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from uniapl_mcore.eval.analyze_cli import positive_int

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """Defaults of a setting: steps per method, proxy-teacher SFT steps, held-out prompts
    per evaluation (None: all), checkpoint interval (steps), seeds."""

    steps: int | None
    teacher_steps: int
    eval_prompts: int | None
    save_interval: int
    seeds: int


#: --quick: 2 seeds of the four default methods in about an hour on 2 CPU cores.
QUICK = Preset(steps=150, teacher_steps=300, eval_prompts=100, save_interval=50, seeds=2)
#: full: the base config's train.max_steps, all held-out prompts, 3 seeds.
FULL = Preset(steps=None, teacher_steps=1000, eval_prompts=None, save_interval=100, seeds=3)


def _methods(text: str) -> tuple[str, ...]:
    from uniapl_mcore.eval.paper_study import METHODS

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0] if unknown else text!r}"
                                         f" (choose from {', '.join(METHODS)})")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a method is listed twice in {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    from uniapl_mcore.eval.paper_study import DEFAULT_METHODS

    p = argparse.ArgumentParser(
        prog="reproduce_paper.py", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="base YAML config (default: the embedded task)")
    p.add_argument("--out", type=Path, required=True, help="study directory (resumable)")
    p.add_argument("--quick", action="store_true",
                   help=f"quick setting: {QUICK.steps} steps, {QUICK.seeds} seeds, "
                        f"{QUICK.eval_prompts} held-out prompts, teacher SFT "
                        f"{QUICK.teacher_steps} steps")
    p.add_argument("--seeds", type=positive_int, help="seeds per method (quick 2, full 3)")
    p.add_argument("--steps", type=positive_int,
                   help="optimizer steps per method (default quick 150, full: the base "
                        "config's train.max_steps)")
    p.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                   help="comma-separated, from grpo, sft_grpo, sft_agrpo, uniapl, chord, "
                        f"a_chord (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--teacher", type=Path,
                   help="teacher model for Figure 4 (HF dir, torch_dist checkpoint or run dir);"
                        " default: train a proxy teacher by SFT on the dataset responses")
    p.add_argument("--teacher-steps", type=positive_int,
                   help="SFT steps of the proxy teacher (default quick 300, full 1000)")
    p.add_argument("--eval-prompts", type=positive_int,
                   help="held-out prompts per evaluation (default quick 100, full: all)")
    p.add_argument("--save-interval", type=positive_int,
                   help="checkpoint every N steps, for resuming (default quick 50, full 100)")
    p.add_argument("--num-responses", type=positive_int, default=500,
                   help="dataset responses scored for Figure 4 (default 500)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="overrides of the base config, as for uniapl train")
    return p


def main(argv: list[str] | None = None) -> int:
    from uniapl_mcore.config import ConfigError, load_config
    from uniapl_mcore.eval.analysis import AnalysisError
    from uniapl_mcore.eval.paper_study import StudyError, execute, plan_runs, write_results
    from uniapl_mcore.log import setup_logging
    from uniapl_mcore.trainer.config import UniaplConfig

    args = build_parser().parse_args(argv)
    setup_logging()
    preset = QUICK if args.quick else FULL
    start = time.monotonic()
    try:
        base = load_config(args.config, args.overrides, cls=UniaplConfig)
        steps = args.steps or preset.steps or base.train.max_steps
        seeds = args.seeds or preset.seeds
        eval_prompts = args.eval_prompts or preset.eval_prompts
        teacher_steps = 0 if args.teacher is not None else (args.teacher_steps
                                                            or preset.teacher_steps)
        if args.teacher is not None and not args.teacher.exists():
            raise StudyError(f"--teacher {args.teacher}: no such model or checkpoint")
        specs = plan_runs(base, args.methods, seeds, steps, teacher_steps,
                          args.save_interval or preset.save_interval, eval_prompts)
        runs_root = args.out / "runs"
        runs_root.mkdir(parents=True, exist_ok=True)
        for i, spec in enumerate(specs, start=1):
            logger.info("run %d/%d: %s", i, len(specs), spec.name)
            execute(spec, runs_root)
        study = {"base_config": str(args.config or "the embedded task"),
                 "setting": "quick" if args.quick else "full", "steps": steps,
                 "seeds": [base.train.seed + k for k in range(seeds)],
                 "methods": list(args.methods),
                 "eval_prompts": eval_prompts or "all", "overrides": list(args.overrides)}
        write_results(specs, runs_root, args.out, base, study, args.teacher,
                      args.num_responses)
    except (ConfigError, StudyError, AnalysisError, OSError) as err:
        print(f"reproduce_paper: error: {err}", file=sys.stderr)
        return 2
    print((args.out / "results.md").read_text())
    print(f"reproduce_paper: done in {time.monotonic() - start:.0f} s (this invocation); "
          f"results in {args.out / 'results.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
