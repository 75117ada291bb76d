"""Rollout-vs-trainer log-prob mismatch as whole-batch figures (weight-sync checks, tools).

The trainer's per-step ``mismatch/`` metrics and the rollout importance weights are
:mod:`uniapl_mcore.losses.rollout_correction` (summable per micro-batch).

All functions are pure. Shapes: ``rollout_logprobs`` and ``trainer_logprobs`` float [B, T]
(nats, log p of the sampled token under the engine resp. the trainer), ``mask`` bool/float
[B, T] (1 on response tokens). Means are over masked tokens of the whole batch (one
denominator: the number of response tokens), unless stated per sequence.
"""

from __future__ import annotations

import torch


def _check(rollout: torch.Tensor, trainer: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if rollout.shape != trainer.shape or rollout.shape != mask.shape:
        raise ValueError(f"mismatch: shapes differ: rollout {tuple(rollout.shape)}, trainer "
                         f"{tuple(trainer.shape)}, mask {tuple(mask.shape)}")
    return mask.to(torch.float64)


def mismatch_metrics(rollout_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, float]:
    """Scalar metrics over the masked tokens.

    - ``mean_abs_diff``: mean |log p_train - log p_rollout|;
    - ``max_abs_diff``: max of the same;
    - ``kl_k1``: mean (log p_rollout - log p_train), the sample estimate of
      KL(rollout || train) on rollout samples (can be negative);
    - ``kl_k3``: mean (r - 1 - log r) with r = p_train / p_rollout (Schulman's k3, >= 0,
      unbiased for KL(rollout || train));
    - ``ratio_mean`` / ``ratio_max``: of r; ``tokens``: the denominator.
    """
    from uniapl_mcore.losses.rollout_correction import mismatch_metrics as step_metrics

    weights = _check(rollout_logprobs, trainer_logprobs, mask)
    tokens = weights.sum()
    if tokens == 0:
        return {"mean_abs_diff": 0.0, "max_abs_diff": 0.0, "kl_k1": 0.0, "kl_k3": 0.0,
                "ratio_mean": 1.0, "ratio_max": 1.0, "tokens": 0.0}
    # |δ| and k3 exactly as the trainer's per-step mismatch/ metrics (one micro-batch here)
    summable, maxima = step_metrics(trainer_logprobs, rollout_logprobs, weights, float(tokens))
    log_r = (trainer_logprobs.double() - rollout_logprobs.double()) * weights
    ratio = log_r.exp()
    on = weights > 0
    return {
        "mean_abs_diff": float(summable["mismatch/abs_diff_mean"]),
        "max_abs_diff": float(maxima["mismatch/abs_diff_max"]),
        "kl_k1": float(-log_r.sum() / tokens),
        "kl_k3": float(summable["mismatch/k3"]),
        "ratio_mean": float((ratio * weights).sum() / tokens),
        "ratio_max": float(ratio[on].max()),
        "tokens": float(tokens),
    }


def pad_logprobs(rows: list[list[float]] | list[tuple[float, ...]], width: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ragged per-sample log-prob lists into float32 [B, T] and a bool mask [B, T]."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    values = torch.zeros(len(rows), width, dtype=torch.float32)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} log-probs, more than width {width}")
        values[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
        mask[i, :len(row)] = True
    return values, mask
