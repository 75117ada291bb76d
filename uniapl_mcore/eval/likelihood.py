"""Total log-likelihood of dataset responses under a teacher and student models (paper Fig. 4).

The paper's Figure 4 samples dataset responses (the teacher's answers in the training data),
computes each one's **total** log-likelihood under the teacher model and under each trained
student, and plots the KDE of Δ_i = log p_student(y_i | x_i) − log p_teacher(y_i | x_i)
(nats, summed over the response's tokens). A student whose Δ concentrates near 0 assigns the
teacher's answers the probability the teacher does.

Tokenisation is the trainer's (:class:`~uniapl_mcore.data.templating.ChatTemplater` with the
:class:`~uniapl_mcore.data.config.DataConfig` defaults, on each model's own tokenizer): the
prompt is the chat-templated conversation with the generation prompt (and the empty think
block); the scored tokens are the answer's tokens plus the end-of-turn token — exactly the
SFT target, so the total is the negative SFT loss of the row (sum, not mean).

Models: a Hugging Face directory, a ``torch_dist`` checkpoint with ``hf/`` (exported to a
temporary HF directory), or a training run directory (its ``hf/`` export when present, else
``checkpoints/latest/policy``).

Outputs of :func:`analyze_logliks`: ``fig4_loglik_kde.png``, ``loglik.jsonl`` (one line per
response: the teacher's total and each student checkpoint's) and ``loglik.json`` (summary).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uniapl_mcore.eval.analysis import (
    AnalysisError,
    _write_text,
    plot_delta_kde,
    summary_stats,
)

logger = logging.getLogger(__name__)

FIG4_LOGLIK = "fig4_loglik_kde.png"
LOGLIK_ROWS = "loglik.jsonl"
LOGLIK_SUMMARY = "loglik.json"
DEFAULT_NUM_RESPONSES = 500


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class ResponsePair:
    """One dataset response: the conversation before it and the response text."""

    id: str
    messages: tuple[dict[str, str], ...]
    response: str


def _response_text(obj: Mapping[str, Any], where: str) -> str:
    """``response``, else ``teacher_response``, else ``teacher_responses[0].text``."""
    for key in ("response", "teacher_response"):
        if isinstance(obj.get(key), str):
            return obj[key]
    teachers = obj.get("teacher_responses")
    if isinstance(teachers, list) and teachers and isinstance(teachers[0], dict) \
            and isinstance(teachers[0].get("text"), str):
        return teachers[0]["text"]
    raise AnalysisError(f"{where}: no response text (fields 'response', 'teacher_response' or "
                        "'teacher_responses[0].text')")


def _messages(obj: Mapping[str, Any], where: str) -> tuple[dict[str, str], ...]:
    """``messages`` (a list of role/content objects), else ``prompt`` as one user turn."""
    messages = obj.get("messages")
    if isinstance(messages, list) and messages:
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise AnalysisError(f"{where}: field 'messages' must be a list of "
                                    "{role, content} strings")
        return tuple({"role": m["role"], "content": m["content"]} for m in messages)
    if isinstance(obj.get("prompt"), str):
        return ({"role": "user", "content": obj["prompt"]},)
    raise AnalysisError(f"{where}: no prompt (fields 'messages' or 'prompt')")


def parse_response_line(obj: Any, where: str, default_id: str) -> ResponsePair:
    """One JSONL object (unified row, generations row or ``{prompt, response}``)."""
    if not isinstance(obj, dict):
        raise AnalysisError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id", default_id)
    if not isinstance(rid, str | int) or isinstance(rid, bool):
        raise AnalysisError(f"{where}: field 'id' must be a string")
    return ResponsePair(str(rid), _messages(obj, where), _response_text(obj, where))


def read_responses(path: Path, num: int | None = DEFAULT_NUM_RESPONSES, seed: int = 0
                   ) -> list[ResponsePair]:
    """Dataset responses from a JSONL file; ``num`` of them sampled without replacement
    (``random.Random(seed)``; file order kept), all when ``num`` is None or larger."""
    from uniapl_mcore.data.jsonl import read_jsonl

    path = Path(path)
    try:
        pairs = [parse_response_line(obj, f"{path}:{lineno}", f"line{lineno}")
                 for lineno, obj in read_jsonl(path, AnalysisError)]
    except FileNotFoundError:
        raise AnalysisError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnalysisError(f"{path}: cannot read ({exc})") from None
    if not pairs:
        raise AnalysisError(f"{path}: no responses")
    if num is not None and num < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), num))
        pairs = [pairs[i] for i in keep]
    return pairs


def write_responses(path: Path, pairs: Sequence[ResponsePair]) -> Path:
    """``pairs`` as JSONL (``id``, ``messages``, ``response``), written atomically."""
    lines = [json.dumps({"id": p.id, "messages": list(p.messages), "response": p.response},
                        ensure_ascii=False) for p in pairs]
    _write_text(Path(path), "".join(line + "\n" for line in lines))
    return Path(path)


# --------------------------------------------------------------------------- models


def model_source(path: Path) -> Path:
    """What :func:`~uniapl_mcore.eval.generate.hf_model_dir` should load for ``path``: a run
    directory becomes its ``hf/`` export (when complete) or ``checkpoints/latest/policy``."""
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"{path}: no such model, checkpoint or run directory")
    if (path / "checkpoints").is_dir() and not (path / "config.json").is_file():
        if (path / "hf" / "config.json").is_file() and any((path / "hf").glob("*.safetensors")):
            return path / "hf"
        return path / "checkpoints" / "latest" / "policy"
    return path


class LoglikScorer:
    """Total log-likelihood (nats) of responses under one HF causal LM, float32.

    Rows are sorted by length, right-padded into batches of ``batch_size`` and masked; the
    model runs on ``device`` (default CUDA when available, else CPU).
    """

    def __init__(self, model_dir: Path, batch_size: int = 16, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from uniapl_mcore.data.config import DataConfig
        from uniapl_mcore.data.templating import ChatTemplater

        if batch_size < 1:
            raise AnalysisError(f"--batch-size must be >= 1, got {batch_size}")
        data = DataConfig()
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        try:
            self.templater = ChatTemplater(tokenizer, data.enable_thinking, data.think_prefix,
                                           data.end_of_turn_token)
        except ValueError as exc:
            raise AnalysisError(f"{model_dir}: {exc}") from None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, local_files_only=True).to(self.device).eval()
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def encode(self, pair: ResponsePair) -> tuple[list[int], list[int]]:
        """``(prompt ids, target ids)``: the trainer's prompt and SFT target (answer + EOT)."""
        from uniapl_mcore.data.templating import answer_text

        return (self.templater.encode_prompt(pair.messages),
                self.templater.encode_target(answer_text(pair.response)))

    def total_logliks(self, pairs: Sequence[ResponsePair]) -> list[float]:
        """Σ_t log p(target_t | prompt, target_<t) of each pair (nats), in input order."""
        encoded = [self.encode(p) for p in pairs]
        out = [math.nan] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: sum(map(len, encoded[i])))
        for lo in range(0, len(order), self.batch_size):
            batch = order[lo:lo + self.batch_size]
            sums = batch_total_logliks(self.model, [encoded[i] for i in batch], self.pad_id,
                                       self.device)
            for i, value in zip(batch, sums, strict=True):
                out[i] = value
        return out


def batch_total_logliks(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad_id: int,
                        device: Any) -> list[float]:
    """One forward over right-padded ``(prompt ids, target ids)`` rows → Σ target log-probs.

    Logits at position t predict token t + 1, so the target tokens at positions
    ``len(p) .. len(p) + len(r) − 1`` are scored by the logits one position earlier.
    """
    import torch

    lengths = [len(p) + len(r) for p, r in rows]
    ids = torch.full((len(rows), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (p, r) in enumerate(rows):
        ids[b, :lengths[b]] = torch.tensor(p + r)
        mask[b, :lengths[b]] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    sums = []
    for b, (p, r) in enumerate(rows):
        logp = torch.log_softmax(logits[b, len(p) - 1:len(p) + len(r) - 1], dim=-1)
        targets = ids[b, len(p):len(p) + len(r)].to(logp.device)
        sums.append(float(logp.gather(-1, targets[:, None]).sum()))
    return sums


def score_model(path: Path, pairs: Sequence[ResponsePair], batch_size: int = 16,
                device: str | None = None) -> list[float]:
    """Total log-likelihoods of ``pairs`` under the model at ``path`` (see :func:`model_source`)."""
    from uniapl_mcore.eval.generate import hf_model_dir

    with hf_model_dir(model_source(path)) as model_dir:
        logger.info("scoring %d responses under %s", len(pairs), path)
        return LoglikScorer(model_dir, batch_size, device).total_logliks(pairs)


# --------------------------------------------------------------------------- analysis


def loglik_gaps(student: Sequence[float], teacher: Sequence[float]) -> np.ndarray:
    """Δ_i = student_i − teacher_i (nats), (n,)."""
    return np.asarray(student, dtype=np.float64) - np.asarray(teacher, dtype=np.float64)


def plot_loglik_kde(deltas: Mapping[str, Sequence[float]], out: Path, teacher_label: str
                    ) -> Path:
    """Figure 4: KDE of Δ (total log-likelihood, nats) per student group, line at Δ = 0."""
    plot_delta_kde(deltas, out, mean_digits=1, ylabel="density (1/nat)",
                   xlabel="Δ = log p_student(y) − log p_teacher(y)  (total over the response, "
                          "nats)",
                   title=f"Dataset responses: log-likelihood under student − teacher\n"
                         f"(teacher: {teacher_label})")
    return out


def _student_summary(values: Sequence[Sequence[float]], teacher: Sequence[float],
                     paths: Sequence[Path]) -> dict[str, Any]:
    """Per checkpoint: mean Δ, mean |Δ|; over checkpoints: their mean and std (ddof=1)."""
    per = []
    for path, v in zip(paths, values, strict=True):
        d = loglik_gaps(v, teacher)
        per.append({"path": str(path), "loglik_mean": float(np.mean(v)),
                    "gap_mean": float(d.mean()), "abs_gap_mean": float(np.abs(d).mean()),
                    "gap_median": float(np.median(d))})
    gaps = [p["gap_mean"] for p in per]
    abs_gaps = [p["abs_gap_mean"] for p in per]
    return {"checkpoints": per, "gap_mean": float(np.mean(gaps)),
            "gap_std": float(np.std(gaps, ddof=1)) if len(gaps) > 1 else 0.0,
            "abs_gap_mean": float(np.mean(abs_gaps)),
            "abs_gap_std": float(np.std(abs_gaps, ddof=1)) if len(abs_gaps) > 1 else 0.0}


def analyze_logliks(teacher: Path, students: Mapping[str, Sequence[Path]],
                    pairs: Sequence[ResponsePair], out: Path, batch_size: int = 16,
                    device: str | None = None, teacher_label: str | None = None,
                    figure: Path | None = None) -> dict[str, Any]:
    """Score ``pairs`` under ``teacher`` and every student checkpoint (a name may pool
    several, e.g. seeds); write the KDE figure (``figure``, default ``out/`` +
    :data:`FIG4_LOGLIK`), per-response JSONL and summary JSON in ``out``.

    Returns the summary: per student name ``gap_mean`` (mean over checkpoints of the mean Δ,
    nats), ``gap_std`` (their std, ddof=1), ``abs_gap_mean`` / ``abs_gap_std`` (mean |Δ|).
    """
    if not students:
        raise AnalysisError("at least one --student NAME=PATH is needed with --teacher")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_ll = score_model(teacher, pairs, batch_size, device)
    scores = {name: [score_model(p, pairs, batch_size, device) for p in paths]
              for name, paths in students.items()}
    deltas = {name: np.concatenate([loglik_gaps(v, teacher_ll) for v in values]).tolist()
              for name, values in scores.items()}
    label = teacher_label or str(teacher)
    figure = Path(figure) if figure is not None else out / FIG4_LOGLIK
    plot_loglik_kde(deltas, figure, label)
    rows = []
    for i, pair in enumerate(pairs):
        row: dict[str, Any] = {"id": pair.id, "teacher": teacher_ll[i]}
        for name, values in scores.items():
            row[name] = [v[i] for v in values]
        rows.append(json.dumps(row))
    _write_text(out / LOGLIK_ROWS, "".join(line + "\n" for line in rows))
    teacher_stats = summary_stats(teacher_ll)
    summary = {"teacher": str(teacher), "teacher_label": label, "responses": len(pairs),
               "teacher_loglik_mean": teacher_stats["mean"],
               "students": {name: _student_summary(values, teacher_ll, students[name])
                            for name, values in scores.items()},
               "figure": str(figure)}
    _write_text(out / LOGLIK_SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def format_loglik_table(summary: Mapping[str, Any]) -> str:
    """Plain-text table of :func:`analyze_logliks`'s summary."""
    header = f"{'student':<20} {'ckpts':>5} {'mean Δ (nats)':>16} {'mean |Δ| (nats)':>17}"
    lines = [f"teacher {summary['teacher_label']}: mean total log-likelihood "
             f"{summary['teacher_loglik_mean']:.1f} nats over {summary['responses']} responses",
             header, "-" * len(header)]
    for name, s in summary["students"].items():
        lines.append(f"{name[:20]:<20} {len(s['checkpoints']):>5d} "
                     f"{s['gap_mean']:>+9.1f} ± {s['gap_std']:<5.1f} "
                     f"{s['abs_gap_mean']:>10.1f} ± {s['abs_gap_std']:<5.1f}")
    return "\n".join(lines)
