"""``uniapl analyze``: response-length and log-prob-difference analysis (paper Figures 3, 4).

Two analyses, either or both in one call:

* ``--run NAME=PATH ...``: held-out generations vs the teacher's responses (lengths, and the
  per-token log-prob difference) — :mod:`uniapl_mcore.eval.analysis`;
* ``--teacher PATH --student NAME=PATH ... --responses FILE``: the paper's Figure 4 — each
  dataset response's total log-likelihood under the teacher model and each student
  checkpoint, KDE of student − teacher — :mod:`uniapl_mcore.eval.likelihood`.

The top-level CLI calls :func:`add_subparser`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _run_spec(text: str) -> tuple[str, Path]:
    """Parse ``NAME=PATH``."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip(), Path(path.strip())


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _check_args(args: argparse.Namespace) -> str | None:
    """The one-line complaint about a combination of options, or None."""
    if args.teacher is None and (args.student or args.responses is not None):
        return "--student and --responses need --teacher PATH"
    if not args.run and args.teacher is None:
        return "give --run NAME=PATH (generations) and/or --teacher PATH (Figure 4)"
    if args.teacher is not None and not args.student:
        return "--teacher needs at least one --student NAME=PATH"
    if args.teacher is not None and args.responses is None:
        return "--teacher needs --responses FILE (the dataset responses to score)"
    names = [name for name, _ in args.run or []]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        return f"--run name {repeated[0]!r} given twice"
    return None


def _run_generations(args: argparse.Namespace) -> None:
    from uniapl_mcore.eval.analysis import SUMMARY, analyze, format_table

    result = analyze(dict(args.run), args.out, score_model=args.score_model,
                     max_rows=args.max_rows, batch_size=args.batch_size, device=args.device)
    print(format_table(result))
    print(f"\nwrote {', '.join(result['figures'].values())} and {Path(args.out) / SUMMARY}")


def _run_likelihood(args: argparse.Namespace) -> None:
    from uniapl_mcore.eval.likelihood import (
        LOGLIK_SUMMARY,
        analyze_logliks,
        format_loglik_table,
        read_responses,
    )

    students: dict[str, list[Path]] = {}
    for name, path in args.student:
        students.setdefault(name, []).append(path)
    pairs = read_responses(args.responses, args.num_responses, args.sample_seed)
    summary = analyze_logliks(args.teacher, students, pairs, args.out, args.batch_size,
                              args.device)
    print(format_loglik_table(summary))
    print(f"\nwrote {summary['figure']} and {Path(args.out) / LOGLIK_SUMMARY}")


def analyze_command(args: argparse.Namespace) -> int:
    """Run the analyses asked for; 0 on success, 2 with a one-line error on bad input."""
    from uniapl_mcore.eval.analysis import AnalysisError

    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.run:
            _run_generations(args)
        if args.teacher is not None:
            _run_likelihood(args)
    except (AnalysisError, OSError, ValueError) as exc:  # ValueError: e.g. an unknown model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``uniapl analyze`` on a top-level CLI."""
    p = subparsers.add_parser(
        "analyze", help="response-length and log-prob-difference figures (paper Figs. 3, 4)",
        description="Compare held-out generations of trained models with the teacher's: "
        "response-length distributions (fig3_response_length.png) and the KDE of the "
        "per-response log-prob difference model - teacher (fig4_logprob_diff_kde.png), "
        "with statistics in analysis.json. The first --run supplies the teacher responses. "
        "With --teacher: the paper's Figure 4 — total log-likelihood of dataset responses "
        "under the teacher and each --student, KDE of student - teacher "
        "(fig4_loglik_kde.png, loglik.jsonl, loglik.json).",
    )  # fmt: skip
    p.add_argument(
        "--run", action="append", type=_run_spec, default=[], metavar="NAME=PATH",
        help="a model: a generations JSONL file, or a run directory (its newest "
        "generations/step_*.jsonl); repeat for several models",
    )  # fmt: skip
    p.add_argument(
        "--teacher", type=Path, default=None, metavar="PATH",
        help="Figure 4: the teacher model (HF directory, torch_dist checkpoint with hf/, or a "
        "training run directory)",
    )  # fmt: skip
    p.add_argument(
        "--student", action="append", type=_run_spec, default=[], metavar="NAME=PATH",
        help="Figure 4: a student checkpoint (same kinds as --teacher); repeat a NAME to pool "
        "several checkpoints (e.g. seeds) into one curve",
    )  # fmt: skip
    p.add_argument(
        "--responses", type=Path, default=None, metavar="FILE",
        help="Figure 4: JSONL of dataset responses (unified rows: messages + "
        "teacher_responses; generations rows; or {prompt|messages, response})",
    )  # fmt: skip
    p.add_argument("--num-responses", type=positive_int, default=500, metavar="N",
                   help="Figure 4: responses sampled from --responses (default 500; all when "
                        "fewer)")
    p.add_argument("--sample-seed", type=int, default=0, metavar="S",
                   help="Figure 4: seed of that sample (default 0)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument(
        "--score-model", type=Path, default=None, metavar="HF_DIR",
        help="score every response and the teacher's with this Hugging Face causal LM "
        "(default: the log-probs stored in the files)",
    )  # fmt: skip
    p.add_argument("--max-rows", type=positive_int, default=None, metavar="N",
                   help="use only the first N rows of the first run (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="B",
                   help="with --score-model or --teacher: rows per forward pass (default 8)")
    p.add_argument("--device", default=None,
                   help="with --score-model or --teacher: torch device (default cuda when "
                        "available)")
    p.set_defaults(func=analyze_command)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry: ``python -m uniapl_mcore.eval.analyze_cli analyze ...``."""
    from uniapl_mcore.log import setup_logging

    parser = argparse.ArgumentParser(prog="uniapl")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    setup_logging()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
