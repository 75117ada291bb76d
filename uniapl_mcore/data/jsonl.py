"""One JSON-object-per-line reader for every JSONL input (datasets, teacher files, eval
rows and responses): blank lines skipped, a bad line is one error naming ``path:line``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, error: Callable[[str], Exception] = ValueError
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) per non-blank line of ``path``.

    Raises ``error(message)`` for a line that is not JSON or not a JSON object; the message
    starts with ``path:line``.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{lineno}: invalid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj
