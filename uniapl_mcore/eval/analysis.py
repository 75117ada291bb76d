"""Analysis of held-out generations: response lengths and log-prob differences vs the teacher.

Reproduces the paper's Figure 3 (response-length distributions, teacher vs each trained model)
and Figure 4 (KDE of the per-response log-prob difference Δ_i = log p(y_model,i) −
log p(y_teacher,i), log-probs being mean per-token log-probs in nats) from the generation files
the trainer writes (``<run_dir>/generations/step_NNNNNN.jsonl``, one JSON object per held-out
prompt; see :data:`REQUIRED_FIELDS`).

Teacher responses come from the first run's ``teacher_response``; the other runs are joined to
it by ``id``. Log-probs come either from the files (``response_logprob_mean`` /
``teacher_logprob_mean``, both under that run's policy) or, with a score model, from one fixed
Hugging Face causal LM that scores every model's responses and the teacher's
(:class:`ResponseScorer`).

Outputs in the output directory: ``fig3_response_length.png``, ``fig4_logprob_diff_kde.png``
(skipped when no log-probs are available), ``analysis.json`` (per-model statistics) and
``logprobs.jsonl`` (per-row log-probs and Δ).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uniapl_mcore.data.jsonl import read_jsonl

logger = logging.getLogger(__name__)

FIG3 = "fig3_response_length.png"
FIG4 = "fig4_logprob_diff_kde.png"
SUMMARY = "analysis.json"
LOGPROBS = "logprobs.jsonl"
#: KDE bandwidth (nats) when Scott's rule gives none (fewer than 2 samples, or no spread).
FALLBACK_BANDWIDTH = 0.1
KDE_GRID_POINTS = 512
_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


class AnalysisError(ValueError):
    """Bad input to the analysis; ``str(err)`` is one line naming the file (and line/field)."""


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class GenerationRow:
    """One held-out generation (lengths in tokens, log-probs in nats per token)."""

    id: str
    prompt: str
    response: str
    response_tokens: int
    teacher_response: str
    teacher_tokens: int
    reward_strict: float
    reward_partial: float | None
    response_logprob_mean: float | None
    teacher_logprob_mean: float | None


_STR_FIELDS = ("prompt", "response", "teacher_response")
_COUNT_FIELDS = ("response_tokens", "teacher_tokens")
_OPTIONAL_FLOATS = ("reward_partial", "response_logprob_mean", "teacher_logprob_mean")
#: Fields every generation line must carry (the optional floats may be null or absent).
REQUIRED_FIELDS = ("id", *_STR_FIELDS, *_COUNT_FIELDS, "reward_strict")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _row_from_json(obj: Any, where: str) -> GenerationRow:
    """Validate one parsed line; errors name ``where`` (``file:line``) and the field."""
    if not isinstance(obj, dict):
        raise AnalysisError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise AnalysisError(f"{where}: missing field '{name}'")
    if not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
        raise AnalysisError(f"{where}: field 'id' must be a string")
    for name in _STR_FIELDS:
        if not isinstance(obj[name], str):
            raise AnalysisError(f"{where}: field '{name}' must be a string")
    for name in _COUNT_FIELDS:
        value = obj[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise AnalysisError(f"{where}: field '{name}' must be an integer >= 0, "
                                f"got {value!r}")
    if not _is_number(obj["reward_strict"]) or not math.isfinite(obj["reward_strict"]):
        raise AnalysisError(f"{where}: field 'reward_strict' must be a finite number")
    optional: dict[str, float | None] = {}
    for name in _OPTIONAL_FLOATS:
        value = obj.get(name)
        if value is not None and not _is_number(value):
            raise AnalysisError(f"{where}: field '{name}' must be a number or null, "
                                f"got {value!r}")
        optional[name] = None if value is None or not math.isfinite(value) else float(value)
    return GenerationRow(
        id=str(obj["id"]), prompt=obj["prompt"], response=obj["response"],
        response_tokens=obj["response_tokens"], teacher_response=obj["teacher_response"],
        teacher_tokens=obj["teacher_tokens"], reward_strict=float(obj["reward_strict"]),
        **optional,
    )  # fmt: skip


def resolve_generations(path: Path) -> Path:
    """``path`` itself when a file; for a run directory its newest ``generations/step_*.jsonl``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise AnalysisError(f"{path}: no such file or directory")
    steps = [(int(m.group(1)), p) for p in (path / "generations").glob("step_*.jsonl")
             if (m := _STEP_FILE.match(p.name))]
    if not steps:
        raise AnalysisError(f"{path}: a directory without generations/step_*.jsonl files")
    return max(steps)[1]


def read_generations(path: Path) -> list[GenerationRow]:
    """Rows of one generations JSONL file (blank lines skipped; ids must be unique)."""
    path = Path(path)
    rows: list[GenerationRow] = []
    seen: dict[str, int] = {}
    try:
        for lineno, obj in read_jsonl(path, AnalysisError):
            where = f"{path}:{lineno}"
            row = _row_from_json(obj, where)
            if row.id in seen:
                raise AnalysisError(f"{where}: duplicate id {row.id!r} (first on line "
                                    f"{seen[row.id]})")
            seen[row.id] = lineno
            rows.append(row)
    except FileNotFoundError:
        raise AnalysisError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{path}: cannot read ({exc})") from None
    return rows


# --------------------------------------------------------------------------- statistics


def summary_stats(values: Sequence[float]) -> dict[str, float]:
    """``mean``, ``median`` and population ``std`` (ddof=0) of a non-empty sample."""
    x = np.asarray(values, dtype=np.float64)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "std": float(x.std())}


def wasserstein1(a: Sequence[float], b: Sequence[float]) -> float:
    """Wasserstein-1 distance between two empirical distributions (same units as the samples).

    W1 = ∫ |F_a(x) − F_b(x)| dx over the merged sorted samples (equal sizes: the mean of
    |sorted(a) − sorted(b)|).
    """
    xa = np.sort(np.asarray(a, dtype=np.float64))
    xb = np.sort(np.asarray(b, dtype=np.float64))
    if xa.size == 0 or xb.size == 0:
        raise ValueError("wasserstein1 needs two non-empty samples")
    merged = np.sort(np.concatenate([xa, xb]))
    widths = np.diff(merged)
    cdf_a = np.searchsorted(xa, merged[:-1], side="right") / xa.size
    cdf_b = np.searchsorted(xb, merged[:-1], side="right") / xb.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def scott_bandwidth(samples: Sequence[float]) -> float:
    """Scott's rule for a 1-D Gaussian KDE: ``std(ddof=1) · n^(-1/5)`` (sample units).

    Falls back to :data:`FALLBACK_BANDWIDTH` for fewer than 2 samples or zero spread.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size < 2:
        return FALLBACK_BANDWIDTH
    sigma = float(x.std(ddof=1))
    return sigma * x.size ** (-0.2) if sigma > 0 else FALLBACK_BANDWIDTH


def gaussian_kde(samples: Sequence[float], grid: Sequence[float],
                 bandwidth: float | None = None) -> np.ndarray:
    """Gaussian kernel density of ``samples`` (n,) evaluated at ``grid`` (m,) → (m,).

    ``bandwidth`` (sample units) defaults to :func:`scott_bandwidth`; the density integrates
    to 1 over the real line (units: 1 / sample units).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        raise ValueError("gaussian_kde needs at least one sample")
    h = scott_bandwidth(x) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"bandwidth must be > 0, got {h}")
    g = np.asarray(grid, dtype=np.float64)
    z = (g[:, None] - x[None, :]) / h
    return np.exp(-0.5 * z * z).sum(axis=1) / (x.size * h * math.sqrt(2 * math.pi))


def kde_grid(samples: Sequence[Sequence[float]], points: int = KDE_GRID_POINTS) -> np.ndarray:
    """A common grid covering every sample set ± 3 bandwidths, (points,)."""
    lows, highs = [], []
    for s in samples:
        x = np.asarray(s, dtype=np.float64)
        h = scott_bandwidth(x)
        lows.append(x.min() - 3 * h)
        highs.append(x.max() + 3 * h)
    return np.linspace(min(lows), max(highs), points)


# --------------------------------------------------------------------------- scoring


def _render_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as one user turn with the generation prompt (thinking off when supported)."""
    kwargs: dict[str, Any] = {}
    if "enable_thinking" in str(tokenizer.chat_template):
        kwargs["enable_thinking"] = False
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, **kwargs)


class ResponseScorer:
    """Mean per-token log-probs (nats) of responses under one fixed HF causal LM.

    The prompt is rendered with the model's chat template (one user turn, generation prompt,
    ``enable_thinking=False`` when the template knows it) and tokenized without added special
    tokens; the response text is tokenized on its own and appended (as training does). Only
    the response tokens are scored. Rows are batched by length, right-padded and masked;
    the model runs in float32 on CUDA when available, else CPU.
    """

    def __init__(self, model_dir: Path, batch_size: int = 8, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise AnalysisError(f"--score-model {model_dir}: not a Hugging Face model directory "
                                "(no config.json)")
        if batch_size < 1:
            raise AnalysisError(f"--batch-size must be >= 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise AnalysisError(f"--score-model {model_dir}: the tokenizer has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, local_files_only=True).to(self.device).eval()
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        logger.info("scoring with %s on %s", model_dir, self.device)

    def encode(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """``(prompt ids, response ids)`` as scored."""
        prompt_ids = self.tokenizer.encode(_render_prompt(self.tokenizer, prompt),
                                           add_special_tokens=False)
        response_ids = self.tokenizer.encode(response, add_special_tokens=False)
        return list(map(int, prompt_ids)), list(map(int, response_ids))

    def mean_logprobs(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """Mean log-prob per response token of each ``(prompt, response)``; None when empty."""
        encoded = [self.encode(p, r) for p, r in pairs]
        out: list[float | None] = [None] * len(pairs)
        order = sorted((i for i, (_, r) in enumerate(encoded) if r),
                       key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        for lo in range(0, len(order), self.batch_size):
            batch = order[lo:lo + self.batch_size]
            for i, value in zip(batch, self._score_batch([encoded[i] for i in batch]),
                                strict=True):
                out[i] = value
        return out

    def _score_batch(self, rows: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """One forward over right-padded rows; the mean response-token log-prob of each."""
        import torch

        lengths = [len(p) + len(r) for p, r in rows]
        width = max(lengths)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, (p, r) in enumerate(rows):
            ids[b, :lengths[b]] = torch.tensor(p + r)
            mask[b, :lengths[b]] = 1
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device),
                                attention_mask=mask.to(self.device)).logits
        means = []
        for b, (p, r) in enumerate(rows):
            # logits at position t predict token t+1: response tokens p..p+len(r)-1
            row_logits = logits[b, len(p) - 1:len(p) + len(r) - 1].float()
            targets = ids[b, len(p):len(p) + len(r)].to(row_logits.device)
            logp = torch.log_softmax(row_logits, dim=-1).gather(-1, targets[:, None])
            means.append(float(logp.mean()))
        return means


# --------------------------------------------------------------------------- joining


@dataclass
class ModelRows:
    """One model's rows joined to the teacher rows of the first run (same order)."""

    name: str
    path: Path
    rows: list[GenerationRow]
    teacher: list[GenerationRow]
    missing_ids: int
    extra_ids: int


def join_runs(files: Mapping[str, Path], tables: Mapping[str, list[GenerationRow]],
              max_rows: int | None = None) -> list[ModelRows]:
    """Join every run to the first run's rows (its first ``max_rows``) by ``id``."""
    names = list(files)
    first = names[0]
    all_first_ids = {r.id for r in tables[first]}
    reference = tables[first][:max_rows] if max_rows is not None else tables[first]
    if not reference:
        raise AnalysisError(f"{files[first]}: no rows")
    joined = []
    for name in names:
        if not tables[name]:
            raise AnalysisError(f"{files[name]}: no rows")
        by_id = {r.id: r for r in tables[name]}
        rows = [by_id[t.id] for t in reference if t.id in by_id]
        teacher = [t for t in reference if t.id in by_id]
        missing = len(reference) - len(rows)
        extra = len(by_id.keys() - all_first_ids)
        if missing or extra:
            logger.warning("%s (%s): %d of the %d teacher ids missing, %d ids not in %s "
                           "(ignored)", name, files[name], missing, len(reference), extra,
                           files[first])
        if not rows:
            raise AnalysisError(f"{files[name]}: no row shares an id with {files[first]}")
        joined.append(ModelRows(name, files[name], rows, teacher, missing, extra))
    return joined


# --------------------------------------------------------------------------- log-probs


@dataclass
class LogprobPoint:
    """Per-row log-probs (nats/token) and their difference Δ = response − teacher."""

    id: str
    response_logprob: float
    teacher_logprob: float

    @property
    def delta(self) -> float:
        return self.response_logprob - self.teacher_logprob


def file_logprobs(model: ModelRows) -> list[LogprobPoint]:
    """Δ from the rows' own ``response_logprob_mean`` / ``teacher_logprob_mean`` (nulls out)."""
    return [LogprobPoint(r.id, r.response_logprob_mean, r.teacher_logprob_mean)
            for r in model.rows
            if r.response_logprob_mean is not None and r.teacher_logprob_mean is not None]


def scored_logprobs(models: Sequence[ModelRows], scorer: ResponseScorer
                    ) -> dict[str, list[LogprobPoint]]:
    """Δ with one score model: teacher responses scored once, then each model's responses."""
    teacher_rows = {t.id: t for m in models for t in m.teacher}
    ids = list(teacher_rows)
    teacher_lp = dict(zip(ids, scorer.mean_logprobs(
        [(teacher_rows[i].prompt, teacher_rows[i].teacher_response) for i in ids]), strict=True))
    out = {}
    for model in models:
        values = scorer.mean_logprobs([(r.prompt, r.response) for r in model.rows])
        out[model.name] = [LogprobPoint(r.id, v, teacher_lp[r.id])
                           for r, v in zip(model.rows, values, strict=True)
                           if v is not None and teacher_lp[r.id] is not None]
        logger.info("scored %s: %d rows with both log-probs", model.name, len(out[model.name]))
    return out


# --------------------------------------------------------------------------- figures


def outside_legend(ax: Any) -> None:
    """The legend right of the axes (outside the plotting area, so it never hides data)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9)


def plot_length_series(series: Mapping[str, Sequence[float]], out: Path, title: str,
                       filled: str | None = None) -> Path:
    """Response-length histograms (tokens; shared bins, fraction of responses per bin) of
    each named sample, dashed vertical lines at the means; ``filled`` (e.g. the teacher) is
    drawn filled in grey, the others as step outlines. Legend outside the axes."""
    from uniapl_mcore.trainer.metrics_log import new_figure, save_figure

    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in series.items() if len(v)}
    merged = np.concatenate(list(arrays.values()))
    bins = np.histogram_bin_edges(merged, bins=int(np.clip(math.sqrt(merged.size), 5, 50)))
    fig = new_figure(9.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    k = 0
    for name, lengths in arrays.items():
        weights = np.full(lengths.size, 1.0 / lengths.size)
        label = f"{name} (n={lengths.size}, mean {lengths.mean():.1f})"
        if name == filled:
            color = "tab:gray"
            ax.hist(lengths, bins=bins, weights=weights, histtype="stepfilled", alpha=0.35,
                    color=color, label=label)
        else:
            color = f"C{k % 10}"
            k += 1
            ax.hist(lengths, bins=bins, weights=weights, histtype="step", linewidth=1.8,
                    color=color, label=label)
        ax.axvline(lengths.mean(), color=color, linestyle="--", linewidth=1.2)
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("fraction of responses")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    outside_legend(ax)
    return save_figure(fig, out)


def plot_lengths(models: Sequence[ModelRows], teacher_lengths: Sequence[int], out: Path) -> Path:
    """Figure 3: response-length histograms of the teacher and each model (tokens)."""
    series: dict[str, Sequence[float]] = {"teacher responses": list(teacher_lengths)}
    series.update({m.name: [r.response_tokens for r in m.rows] for m in models})
    return plot_length_series(series, out, "Response-length distribution: teacher vs trained "
                                           "models", filled="teacher responses")


def plot_delta_kde(deltas: Mapping[str, Sequence[float]], out: Path, *, title: str,
                   xlabel: str, ylabel: str = "density", mean_digits: int = 3
                   ) -> dict[str, dict[str, list[float]]]:
    """A Gaussian KDE (Scott's bandwidth) of each series of Δ on one grid, a dotted line at
    Δ = 0, the legend right of the axes (name, n, mean Δ to ``mean_digits`` decimals);
    written to ``out``. Series without values are left out.

    Returns each series' ``{"grid": [...], "density": [...]}`` (Δ's unit, 1/that unit).
    """
    from uniapl_mcore.trainer.metrics_log import new_figure, save_figure

    present = {name: d for name, d in deltas.items() if len(d)}
    grid = kde_grid(list(present.values()))
    fig = new_figure(9.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    curves = {}
    for k, (name, d) in enumerate(present.items()):
        density = gaussian_kde(d, grid)
        curves[name] = {"grid": grid.tolist(), "density": density.tolist()}
        ax.plot(grid, density, color=f"C{k % 10}", linewidth=1.8,
                label=f"{name} (n={len(d)}, mean Δ {np.mean(d):+.{mean_digits}f})")
        ax.fill_between(grid, density, color=f"C{k % 10}", alpha=0.12)
    ax.axvline(0.0, color="black", linestyle=":", linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    outside_legend(ax)
    save_figure(fig, out)
    return curves


def plot_logprob_kde(deltas: Mapping[str, Sequence[float]], out: Path, source: str
                     ) -> dict[str, dict[str, list[float]]]:
    """Figure 4: KDE of Δ (mean log-prob per token, nats) per model, vertical line at 0.

    Returns each model's ``{"grid": [...], "density": [...]}`` (nats, 1/nats).
    """
    return plot_delta_kde(
        deltas, out, title=f"Log-prob difference vs teacher (KDE; log-probs: {source})",
        xlabel="Δ = log p(y_model) − log p(y_teacher)  (mean per token, nats)")


# --------------------------------------------------------------------------- driver


def _model_summary(model: ModelRows, points: list[LogprobPoint] | None) -> dict[str, Any]:
    lengths = [r.response_tokens for r in model.rows]
    teacher = [t.teacher_tokens for t in model.teacher]
    summary: dict[str, Any] = {"file": str(model.path), "n": len(model.rows),
                               "missing_ids": model.missing_ids, "extra_ids": model.extra_ids}
    summary.update({f"length_{k}": v for k, v in summary_stats(lengths).items()})
    summary.update({f"teacher_length_{k}": v for k, v in summary_stats(teacher).items()})
    summary["length_w1"] = wasserstein1(lengths, teacher)
    summary["reward_strict_mean"] = float(np.mean([r.reward_strict for r in model.rows]))
    deltas = [p.delta for p in points or []]
    summary["delta_n"] = len(deltas)
    if deltas:
        stats = summary_stats(deltas)
        summary.update({"delta_mean": stats["mean"], "delta_std": stats["std"],
                        "delta_median": stats["median"],
                        "frac_delta_positive": float(np.mean(np.asarray(deltas) > 0))})
    else:
        summary.update(dict.fromkeys(("delta_mean", "delta_std", "delta_median",
                                      "frac_delta_positive")))
    return summary


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_logprobs(path: Path, points: Mapping[str, list[LogprobPoint]]) -> None:
    lines = [json.dumps({"model": name, "id": p.id, "response_logprob": p.response_logprob,
                         "teacher_logprob": p.teacher_logprob, "delta": p.delta},
                        ensure_ascii=False)
             for name, ps in points.items() for p in ps]
    _write_text(path, "".join(line + "\n" for line in lines))


def analyze(runs: Mapping[str, Path], out: Path, score_model: Path | None = None,
            max_rows: int | None = None, batch_size: int = 8,
            device: str | None = None) -> dict[str, Any]:
    """Figures 3 and 4 plus ``analysis.json`` for ``runs`` (name → generations file or run dir).

    The first run supplies the teacher responses; ``max_rows`` limits its rows (the others
    are joined by id). With ``score_model`` (an HF causal-LM directory with a tokenizer) all
    log-probs are computed by that model (``batch_size`` rows per forward, ``device``);
    otherwise they come from the files. Returns the content written to ``analysis.json``.
    """
    if not runs:
        raise AnalysisError("at least one --run NAME=PATH is needed")
    if max_rows is not None and max_rows < 1:
        raise AnalysisError(f"--max-rows must be >= 1, got {max_rows}")
    files = {name: resolve_generations(Path(p)) for name, p in runs.items()}
    tables = {name: read_generations(path) for name, path in files.items()}
    models = join_runs(files, tables, max_rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    if score_model is not None:
        source = f"score_model:{score_model}"
        points = scored_logprobs(models, ResponseScorer(Path(score_model), batch_size, device))
    else:
        source = "file"
        points = {m.name: file_logprobs(m) for m in models}

    teacher_lengths = [t.teacher_tokens for t in models[0].teacher]
    figures = {"fig3": str(plot_lengths(models, teacher_lengths, out / FIG3))}
    note = None
    if any(points.values()):
        deltas = {name: [p.delta for p in ps] for name, ps in points.items()}
        plot_logprob_kde(deltas, out / FIG4, source)
        figures["fig4"] = str(out / FIG4)
        _write_logprobs(out / LOGPROBS, points)
    else:
        note = ("Figure 4 skipped: no row has both a response and a teacher log-prob "
                + ("(empty responses?)" if score_model is not None else
                   "(null response_logprob_mean / teacher_logprob_mean; pass --score-model "
                   "to compute them)"))
        logger.warning("%s", note)

    result: dict[str, Any] = {
        "logprob_source": source,
        "teacher_run": models[0].name,
        "figures": figures,
        "figure4_skipped": note,
        "models": {m.name: _model_summary(m, points[m.name]) for m in models},
    }
    _write_text(out / SUMMARY, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """A short plain-text table of :func:`analyze`'s per-model results."""

    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (f"{'model':<20} {'n':>5} {'len mean':>9} {'len med':>8} {'teach mean':>10} "
              f"{'W1 len':>8} {'Δ mean':>8} {'Δ>0':>6} {'strict':>7}")
    lines = [header, "-" * len(header)]
    for name, m in result["models"].items():
        lines.append(
            f"{name[:20]:<20} {m['n']:>5d} {m['length_mean']:>9.1f} {m['length_median']:>8.1f} "
            f"{m['teacher_length_mean']:>10.1f} {m['length_w1']:>8.1f} "
            f"{fmt(m['delta_mean'], '+8.3f'):>8} {fmt(m['frac_delta_positive'], '6.2f'):>6} "
            f"{m['reward_strict_mean']:>7.3f}")
    lines.append(f"log-probs: {result['logprob_source']}")
    if result.get("figure4_skipped"):
        lines.append(result["figure4_skipped"])
    return "\n".join(lines)
