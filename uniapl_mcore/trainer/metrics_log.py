"""The trainer's metrics sink: ``<run_dir>/metrics.jsonl``, TensorBoard, wandb, a progress bar.

One :class:`MetricsLog` lives on the logging rank (``enabled=False`` elsewhere makes every
method a no-op). Each :meth:`MetricsLog.log` call writes one JSON line (flushed and fsynced)
and forwards the numeric values as scalars to TensorBoard (``<run_dir>/tensorboard``) and, when
``logging.wandb_project`` is set, to Weights & Biases.

Resuming: :meth:`MetricsLog.open` rewrites ``metrics.jsonl`` atomically, keeping only complete
lines whose ``step`` is at most the resumed checkpoint's step (a killed run may have logged
steps after its last checkpoint, and may have left a torn last line), so a resumed run
reproduces the file of an uninterrupted one byte for byte. TensorBoard purges events after
the resume step; wandb continues the same run (its id is kept in ``<run_dir>/wandb_id.txt``).

:func:`read_metrics` parses the file back; :func:`plot_reward_curve` draws the reward curve
(held-out strict/partial rewards and the smoothed training reward against the step).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uniapl_mcore.config import ConfigError
from uniapl_mcore.trainer.config import LoggingConfig

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_id.txt"

#: Postfix keys of the progress bar, each the first present of its candidates.
_LOSS_KEYS = ("train/loss", "objective/loss")
_REWARD_KEYS = ("pref/reward_mean", "rollout/reward_mean")
_EVAL_KEY = "eval/reward_strict"
#: Training-reward keys of :func:`plot_reward_curve`, in order of preference.
_TRAIN_REWARD_KEYS = ("rollout/reward_mean", "pref/reward_mean")
SMOOTH_WINDOW = 10


# --------------------------------------------------------------------------- file helpers


def _parse_lines(data: bytes, path: Path) -> tuple[list[tuple[bytes, dict[str, Any]]], bool]:
    """Split ``metrics.jsonl`` bytes into ``(raw line incl. newline, record)`` pairs.

    Blank lines are skipped. The last line is *torn* (dropped; the flag returned is True)
    when it has no trailing newline or does not parse; any other line that does not parse
    as a JSON object with an int ``step`` raises ValueError naming the file and line.
    """
    raw_lines = data.splitlines(keepends=True)
    out: list[tuple[bytes, dict[str, Any]]] = []
    torn = False
    for lineno, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        last = lineno == len(raw_lines)
        if last and not raw.endswith(b"\n"):
            torn = True
            break
        try:
            record = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            if last:
                torn = True
                break
            raise ValueError(f"{path}:{lineno}: not a JSON line ({exc})") from None
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"{path}:{lineno}: a metrics line must be a JSON object with an "
                             f"integer 'step'")
        out.append((raw, record))
    return out, torn


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file, in file order (non-finite values read as None).

    A torn last line (a run killed mid-write) is skipped; a corrupt line elsewhere raises
    ValueError naming the file and line number.
    """
    path = Path(path)
    lines, torn = _parse_lines(path.read_bytes(), path)
    if torn:
        logger.warning("%s: skipped a torn last line", path)
    return [record for _, record in lines]


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` via a fsynced temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def truncate_metrics(path: Path, resume_step: int) -> int:
    """Keep only the complete lines of ``path`` with ``step <= resume_step``, byte-identical.

    Rewrites the file atomically when anything goes; returns the number of lines dropped
    (a torn last line counts as one). A missing file is left missing.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines, torn = _parse_lines(data, path)
    kept = [raw for raw, record in lines if record["step"] <= resume_step]
    dropped = len(lines) - len(kept) + int(torn)
    new = b"".join(kept)
    if new != data:
        _atomic_write_bytes(path, new)
    if dropped:
        logger.info("%s: dropped %d line(s) after resume step %d", path, dropped, resume_step)
    return dropped


# --------------------------------------------------------------------------- values


def _to_json_value(value: Any, where: str) -> Any:
    """``value`` as a JSON-ready value: numpy/torch scalars unwrapped, non-finite floats None."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {str(k): _to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy / torch 0-d
        return _to_json_value(value.item(), where)
    raise TypeError(f"metrics record: {where} has a value of type {type(value).__name__}, "
                    "which is not JSON-serializable")


def _scalar(value: Any) -> float | None:
    """``value`` as a float for TensorBoard/wandb (bools as 0/1), or None when not numeric."""
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return _scalar(value.item())
    return None


def _format_number(value: float) -> str:
    return f"{value:.4g}"


# --------------------------------------------------------------------------- the sink


class MetricsLog:
    """Metrics sink of one training run.

    Args:
        run_dir: the run directory (``metrics.jsonl``, ``tensorboard/``, ``wandb_id.txt``).
        cfg: the ``logging`` config section.
        total_steps: optimizer steps of the whole run (the progress bar's total).
        enabled: False on non-logging ranks: every method is a no-op.
        run_config: the resolved config, attached to the wandb run.

    Use: ``log = MetricsLog(...); log.open(resume_step); log.log({"step": 1, ...});
    log.close()`` (or ``with MetricsLog(...) as log: log.open(...); ...``).
    """

    def __init__(self, run_dir: Path, cfg: LoggingConfig, total_steps: int, enabled: bool,
                 run_config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.enabled = enabled
        self.run_config = run_config
        self.path = self.run_dir / METRICS_FILE
        self._file: Any = None
        self._tb: Any = None
        self._wandb_run: Any = None
        self._bar: Any = None
        self._last_step = 0
        self._postfix: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(self, resume_step: int) -> None:
        """Prepare every sink for a run starting after optimizer step ``resume_step`` (0: new)."""
        if not self.enabled:
            return
        if self._file is not None:
            raise RuntimeError("MetricsLog.open() called twice")
        if resume_step < 0:
            raise ValueError(f"resume_step must be >= 0, got {resume_step}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # closed in close()
        self._last_step = resume_step
        if self.cfg.tensorboard:
            self._tb = self._open_tensorboard(resume_step)
        if self.cfg.wandb_project:
            self._wandb_run = self._open_wandb()
        if self._bar_wanted():
            self._bar = self._open_bar(resume_step)

    def _open_tensorboard(self, resume_step: int) -> Any:
        """A SummaryWriter purging events after ``resume_step``, or None when unavailable."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            logger.warning("TensorBoard logging is off: cannot import it (%s); "
                           "pip install tensorboard, or set logging.tensorboard=false", exc)
            return None
        purge_step = resume_step + 1 if resume_step > 0 else None
        return SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def _wandb_id(self) -> str:
        """The run's wandb id, created once and kept in ``wandb_id.txt``."""
        id_path = self.run_dir / WANDB_ID_FILE
        if id_path.exists():
            run_id = id_path.read_text(encoding="utf-8").strip()
            if run_id:
                return run_id
        run_id = uuid.uuid4().hex[:16]
        _atomic_write_bytes(id_path, (run_id + "\n").encode())
        return run_id

    def _open_wandb(self) -> Any:
        try:
            import wandb
        except ImportError:
            raise ConfigError("logging.wandb_project", "needs the wandb package: pip install "
                              "wandb, or unset logging.wandb_project") from None
        return wandb.init(project=self.cfg.wandb_project, name=self.cfg.wandb_run_name,
                          id=self._wandb_id(), resume="allow", dir=str(self.run_dir),
                          config=self.run_config)

    def _bar_wanted(self) -> bool:
        mode = self.cfg.progress_bar
        if mode == "auto":
            return bool(getattr(sys.stderr, "isatty", lambda: False)())
        return mode == "on"

    def _open_bar(self, resume_step: int) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=resume_step, file=sys.stderr,
                    unit="step", dynamic_ncols=True, smoothing=0.1)

    def close(self) -> None:
        """Flush and close every sink (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ logging

    def log(self, record: dict[str, Any]) -> None:
        """Write ``record`` (an int ``"step"`` plus namespaced keys) to every sink.

        One JSON line in the record's key order (non-finite floats as null), flushed and
        fsynced; numeric values (bools as 0/1) as scalars at ``step`` to TensorBoard/wandb;
        the progress bar advances to ``step``.
        """
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError("MetricsLog.log() before open()")
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"metrics record needs an integer 'step', got {step!r}")
        line = json.dumps(_to_json_value(record, "record"), allow_nan=False, ensure_ascii=False)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        scalars = {k: v for k, v in ((k, _scalar(v)) for k, v in record.items() if k != "step")
                   if v is not None}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb_run is not None and scalars:
            self._wandb_run.log(scalars, step=step)
        self._update_bar(step, scalars)

    def _update_bar(self, step: int, scalars: dict[str, float]) -> None:
        delta = step - self._last_step
        self._last_step = max(self._last_step, step)
        if self._bar is None:
            return
        for label, keys in (("loss", _LOSS_KEYS), ("reward", _REWARD_KEYS),
                            ("eval", (_EVAL_KEY,))):
            value = _first_present(scalars, keys)
            if value is not None:
                self._postfix[label] = _format_number(value)
        self._bar.set_postfix(self._postfix, refresh=False)
        if delta > 0:
            self._bar.update(delta)
        else:
            self._bar.refresh()

    def write_console(self, message: str) -> None:
        """Print ``message`` above the progress bar (or log it at INFO when there is none)."""
        if not self.enabled:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            logger.info("%s", message)


def _first_present(values: dict[str, float], keys: Sequence[str]) -> float | None:
    for key in keys:
        if key in values:
            return values[key]
    return None


# --------------------------------------------------------------------------- plotting


def moving_average(values: Sequence[float], window: int = SMOOTH_WINDOW) -> list[float]:
    """Trailing moving average: element ``i`` is the mean of ``values[max(0, i-window+1):i+1]``."""
    out: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _by_step(records: Sequence[dict[str, Any]], key: str) -> dict[int, Any]:
    """``step -> value`` of ``key`` over records that have it non-null (last one wins)."""
    return {r["step"]: r[key] for r in records if r.get(key) is not None}


def _reward_points(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The points :func:`plot_reward_curve` draws (steps ascending)."""
    strict = _by_step(records, "eval/reward_strict")
    partial = _by_step(records, "eval/reward_partial")
    eval_steps = sorted(strict)
    train_key = next((k for k in _TRAIN_REWARD_KEYS if any(r.get(k) is not None
                                                           for r in records)), None)
    train = _by_step(records, train_key) if train_key else {}
    train_steps = sorted(train)
    train_reward = [float(train[s]) for s in train_steps]
    return {
        "eval_steps": eval_steps,
        "reward_strict": [float(strict[s]) for s in eval_steps],
        "reward_partial": [float(partial[s]) if s in partial else None for s in eval_steps],
        "train_key": train_key,
        "train_steps": train_steps,
        "train_reward": train_reward,
        "train_reward_smoothed": moving_average(train_reward),
    }


def save_figure(fig: Any, out: Path) -> Path:
    """Save a matplotlib figure to ``out`` atomically (temp file with the same suffix)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def new_figure(width: float = 8.0, height: float = 5.0) -> Any:
    """A matplotlib Figure rendered with Agg, independent of pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _y_limits(series: Sequence[Sequence[float | None]]) -> tuple[float, float]:
    """[0, 1], widened only when a value lies outside it."""
    values = [v for s in series for v in s if v is not None and math.isfinite(v)]
    low, high = min([0.0, *values]), max([1.0, *values])
    pad = 0.0 if (low, high) == (0.0, 1.0) else 0.02 * (high - low)
    return low - pad, high + pad


def plot_reward_curve(metrics_path: Path, out_png: Path) -> dict[str, list]:
    """Plot the reward curve of ``metrics_path`` into ``out_png`` (written atomically).

    Held-out ``eval/reward_strict`` and ``eval/reward_partial`` (markers + lines) and the
    per-step training reward (``rollout/reward_mean``, else ``pref/reward_mean``: raw values
    faint, trailing moving average over :data:`SMOOTH_WINDOW` steps) against the optimizer
    step; y in [0, 1] (widened only if a value falls outside). Returns the plotted points:
    ``eval_steps``, ``reward_strict``, ``reward_partial`` (None where a step has none),
    ``train_steps``, ``train_reward``, ``train_reward_smoothed`` and ``train_key``.
    """
    points = _reward_points(read_metrics(Path(metrics_path)))
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    if points["train_steps"]:
        steps, key = points["train_steps"], points["train_key"]
        ax.plot(steps, points["train_reward"], color="tab:gray", alpha=0.25, linewidth=0.8)
        ax.plot(steps, points["train_reward_smoothed"], color="tab:gray", linewidth=1.6,
                label=f"train {key} (moving avg {SMOOTH_WINDOW})")
    if points["eval_steps"]:
        ax.plot(points["eval_steps"], points["reward_strict"], "o-", color="tab:blue",
                label="held-out reward (strict)")
        partial = [math.nan if v is None else v for v in points["reward_partial"]]
        if any(v is not None for v in points["reward_partial"]):
            ax.plot(points["eval_steps"], partial, "s--", color="tab:orange",
                    label="held-out reward (partial)")
    if not points["eval_steps"] and not points["train_steps"]:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes,
                fontsize=14, color="tab:gray")
    ax.set_ylim(*_y_limits([points["reward_strict"], points["reward_partial"],
                            points["train_reward"]]))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.set_title(f"Reward curve: {Path(metrics_path).parent.name or metrics_path}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    save_figure(fig, Path(out_png))
    return points

