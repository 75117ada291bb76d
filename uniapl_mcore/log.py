"""Console logging for the package's one logger (``uniapl_mcore``), set up once per process."""

from __future__ import annotations

import logging
import sys
import warnings

_NOISY_WARNINGS = (
    r".*Apex (is|are) not installed",
    r"full scope is deprecated",
    r".*torch\.distributed\.\w+` is deprecated",
    r".*TorchScript.*",
    r"The \.grad attribute of a Tensor that is not a leaf Tensor",
    r".*_get_pg_default_device.*",
)


def error_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message, stripped (its type's name when it has
    none): long messages and tracebacks shrink to the one line an error report carries."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def setup_logging(rank: int = 0, verbose: bool = False) -> None:
    """INFO from rank 0 (WARNING from other ranks) to stderr; Megatron's own logs at WARNING.

    Also silences third-party warnings that say nothing actionable on CPU runs.
    """
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank{rank}] " if rank else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger("uniapl_mcore")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for name in ("megatron", "megatron.core"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
