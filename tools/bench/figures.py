"""The one output format of every benchmark in ``tools/bench``.

A benchmark measures its baseline in the same run and reports :class:`Figure` s: one line per
figure on stdout (``name value unit [baseline B ratio R]``) and, with ``--json FILE``, a JSON
list of ``{name, value, unit, baseline, ratio}`` objects that ``tools/bench/run_all.py``
collects. ``ratio`` is always "how many times better than the baseline" in the figure's own
sense (for a throughput value/baseline, for a time or a memory figure baseline/value).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured number; ``baseline`` and ``ratio`` are None when it has no baseline."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None

    def line(self) -> str:
        text = f"{self.name:40s} {self.value:12.4g} {self.unit}"
        if self.baseline is not None:
            text += f"  baseline {self.baseline:.4g} {self.unit}"
        if self.ratio is not None:
            text += f"  ratio {self.ratio:.3f}"
        return text


def higher_is_better(name: str, value: float, unit: str, baseline: float) -> Figure:
    """A throughput-like figure: ratio = value / baseline."""
    return Figure(name, value, unit, baseline, value / baseline if baseline else None)


def lower_is_better(name: str, value: float, unit: str, baseline: float) -> Figure:
    """A time- or memory-like figure: ratio = baseline / value."""
    return Figure(name, value, unit, baseline, baseline / value if value else None)


def emit(figures: list[Figure], json_path: str | Path | None) -> None:
    """Print one line per figure; write them as a JSON list when ``json_path`` is given."""
    for figure in figures:
        print(figure.line(), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")


def load(json_path: str | Path) -> list[Figure]:
    """Figures written by :func:`emit`."""
    return [Figure(**item) for item in json.loads(Path(json_path).read_text())]
