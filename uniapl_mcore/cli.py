"""The ``uniapl`` command. Subcommands register themselves through :data:`SUBCOMMANDS`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from uniapl_mcore import __version__
from uniapl_mcore.config import ConfigError

#: Modules that expose ``add_subparser(subparsers)``; each adds one top-level subcommand.
SUBCOMMANDS = (
    "uniapl_mcore.trainer.cli",
    "uniapl_mcore.eval.cli",
    "uniapl_mcore.eval.analyze_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uniapl", description="UniAPL on Megatron-Core: unified SFT + GRPO + adversarial "
                                   "preference learning.")
    parser.add_argument("--version", action="version", version=f"uniapl_mcore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        register: Callable[[argparse._SubParsersAction], None] = module.add_subparser
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"uniapl {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # a damaged or refused checkpoint file: one line naming it
        from uniapl_mcore.checkpoint.hf_io import CheckpointError

        if not isinstance(err, CheckpointError):
            raise
        print(f"uniapl {args.command}: checkpoint error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"uniapl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
