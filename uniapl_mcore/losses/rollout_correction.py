"""Rollout correction (``specs/objective.md`` §3.9): the engine that sampled a token
(π_rollout) is not exactly the trainer's policy when the step began (π_old).

- :func:`rollout_is_weights`: detached importance weights π_old / π_rollout per token
  (``token``) or per response (``sequence``: the product of the token ratios, in log space),
  truncated at C (``truncate``) or turned into a 0/1 keep-mask (``mask``: ratio ≤ C).
- :func:`mismatch_metrics`: |log π_old − log π_rollout| (mean and max) and the k3 estimate
  of KL(π_rollout ‖ π_old) on the sampled tokens, as summable shares of the step value.

Shapes: log-probs fp32 [b, t] (nats of the sampled token), ``mask`` [b, t] (1 on the
response tokens of the rows to use, 0 elsewhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from uniapl_mcore.losses.aggregation import at_least_fp32 as fp32
from uniapl_mcore.losses.aggregation import masked
from uniapl_mcore.losses.config import RolloutISConfig
from uniapl_mcore.losses.policy import check_same_shape


@dataclass
class ImportanceWeights:
    """Per-token weights w [b, t] (detached, 0 off the mask) and where the cap acted
    (``capped`` bool [b, t]: truncated to C, or dropped in ``mask`` mode)."""

    weights: torch.Tensor
    capped: torch.Tensor


def log_ratio(old_logp: torch.Tensor, rollout_logp: torch.Tensor,
              mask: torch.Tensor) -> torch.Tensor:
    """log π_old − log π_rollout on the mask, exactly 0 elsewhere; fp32 [b, t], detached."""
    check_same_shape("old_logp", old_logp, rollout_logp=rollout_logp, mask=mask)
    return masked(fp32(old_logp.detach()) - fp32(rollout_logp.detach()), mask)


def rollout_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor,
                       mask: torch.Tensor, cfg: RolloutISConfig) -> ImportanceWeights:
    """The rollout importance weights of §3.9 for ``cfg.level`` in (token, sequence).

    ``truncate``: w = min(ratio, C); ``mask``: w = 1[ratio ≤ C]. Sequence level uses
    ratio = exp(Σ_t log(π_old / π_rollout)) over each row's masked tokens, the same weight
    on every token of the row.
    """
    if cfg.level == "none":
        raise ValueError("rollout_is.level: 'none' has no weights")
    log_r = log_ratio(old_logp, rollout_logp, mask)
    if cfg.level == "sequence":
        log_r = log_r.sum(dim=-1, keepdim=True).expand_as(log_r)
    log_cap = math.log(cfg.cap)
    over = log_r > log_cap
    if cfg.mode == "truncate":
        weights = log_r.clamp(max=log_cap).exp()
    else:
        weights = (~over).to(log_r.dtype)
    on = mask.bool()
    return ImportanceWeights(masked(weights, on), over & on)


def mismatch_metrics(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor,
                     tokens: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(summable, max-reduced) ``mismatch/`` metrics of this micro-batch.

    ``tokens``: the global number of masked tokens the means divide by. Summable:
    ``abs_diff_mean`` Σ|δ| / N and ``k3`` Σ(r − 1 − log r) / N with δ = log r =
    log π_old − log π_rollout (k3 estimates KL(π_rollout ‖ π_old) ≥ 0 from tokens sampled by
    the engine); maxima: ``abs_diff_max``.
    """
    log_r = log_ratio(old_logp, rollout_logp, mask).double()
    n = max(float(tokens), 1.0)
    k3 = masked(log_r.clamp(-20.0, 20.0).exp() - 1.0 - log_r, mask)
    summable = {"mismatch/abs_diff_mean": log_r.abs().sum() / n,
                "mismatch/k3": k3.sum() / n}
    maxima = {"mismatch/abs_diff_max": log_r.abs().max() if log_r.numel()
              else torch.zeros((), dtype=torch.float64)}
    return summable, maxima
