"""``uniapl analyze``: response-length and log-prob-difference analysis (paper Figures 3, 4).

The top-level CLI calls :func:`add_subparser`; see :mod:`uniapl_mcore.eval.analysis`.
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def analyze_command(args: argparse.Namespace) -> int:
    """Run the analysis; 0 on success, 2 with a one-line error on bad input."""
    from uniapl_mcore.eval.analysis import SUMMARY, AnalysisError, analyze, format_table

    runs: dict[str, Path] = {}
    for name, path in args.run:
        if name in runs:
            print(f"error: --run name {name!r} given twice", file=sys.stderr)
            return 2
        runs[name] = path
    try:
        result = analyze(runs, args.out, score_model=args.score_model, max_rows=args.max_rows,
                         batch_size=args.batch_size, device=args.device)
    except (AnalysisError, OSError, ValueError) as exc:  # ValueError: e.g. an unknown model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"\nwrote {', '.join(result['figures'].values())} and {Path(args.out) / SUMMARY}")
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``uniapl analyze`` on a top-level CLI."""
    p = subparsers.add_parser(
        "analyze", help="response-length and log-prob-difference figures (paper Figs. 3, 4)",
        description="Compare held-out generations of trained models with the teacher's: "
        "response-length distributions (fig3_response_length.png) and the KDE of the "
        "per-response log-prob difference model - teacher (fig4_logprob_diff_kde.png), "
        "with statistics in analysis.json. The first --run supplies the teacher responses.",
    )  # fmt: skip
    p.add_argument(
        "--run", action="append", type=_run_spec, required=True, metavar="NAME=PATH",
        help="a model: a generations JSONL file, or a run directory (its newest "
        "generations/step_*.jsonl); repeat for several models",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument(
        "--score-model", type=Path, default=None, metavar="HF_DIR",
        help="score every response and the teacher's with this Hugging Face causal LM "
        "(default: the log-probs stored in the files)",
    )  # fmt: skip
    p.add_argument("--max-rows", type=_positive_int, default=None, metavar="N",
                   help="use only the first N rows of the first run (default: all)")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B",
                   help="with --score-model: rows per forward pass (default 8)")
    p.add_argument("--device", default=None,
                   help="with --score-model: torch device (default cuda when available)")
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
