"""Names inside a run's checkpoint root, and resolving the ``latest`` pointer in a path.

``<run_dir>/checkpoints/latest`` is a text file naming the newest complete step directory
(``step_000012``; :mod:`uniapl_mcore.megatron.checkpointing` replaces it atomically), not a
link, so a path such as ``RUN/checkpoints/latest/policy`` does not exist as such:
:func:`resolve_latest` reads the pointer and gives ``RUN/checkpoints/step_000012/policy``.
"""

from __future__ import annotations

import re
from pathlib import Path

from uniapl_mcore.checkpoint.hf_io import CheckpointError

#: The pointer file in a checkpoint root.
LATEST = "latest"
#: A step directory's name (``step_NNNNNN``).
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def read_latest(pointer: Path) -> Path:
    """The step directory the ``latest`` file ``pointer`` names (next to it); one-line
    :class:`CheckpointError` naming ``pointer`` when it names no complete checkpoint."""
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer}: unreadable checkpoint pointer ({err})") from None
    path = pointer.parent / name
    if not STEP_DIR.match(name) or not path.is_dir():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint directory")
    return path


def resolve_latest(path: str | Path) -> Path:
    """``path`` with a ``latest`` pointer-file component replaced by the step directory it
    names (``RUN/checkpoints/latest/policy`` → ``RUN/checkpoints/step_000012/policy``);
    other paths are returned unchanged."""
    path = Path(path)
    parts = path.parts
    for i in range(1, len(parts) + 1):
        prefix = Path(*parts[:i])
        if prefix.name == LATEST and prefix.is_file():
            return read_latest(prefix).joinpath(*parts[i:])
    return path
