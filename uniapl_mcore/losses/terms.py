"""The token-level loss terms: SFT (§3.1, CHORD-φ §6.5), GRPO (§3.8), adversarial (§5.2).

Each is a pure function of one micro-batch's tensors and the slice's *global* denominators
(:class:`~uniapl_mcore.losses.aggregation.SliceDenominators`); it returns this micro-batch's
share of the term (sum over micro-batches and DP ranks = the global term) and summable
metrics. Shapes: ``[b, t]`` per token (rows × response positions), ``[b]`` per row.
Log-probs are fp32 nats of the target / sampled token; the mask must be 0 on rows outside
the slice.
"""

from __future__ import annotations

import logging

import torch

from uniapl_mcore.losses.aggregation import (
    SliceDenominators,
    aggregate,
    masked,
    token_mean,
)
from uniapl_mcore.losses.aggregation import at_least_fp32 as fp32
from uniapl_mcore.losses.config import SFT_WEIGHTINGS, LossConfig
from uniapl_mcore.losses.metrics import TermOutput, detached
from uniapl_mcore.losses.policy import (
    approx_kl_to_old,
    check_same_shape,
    clipped_surrogate,
    kl_per_token,
)

logger = logging.getLogger(__name__)


def sft_token_weights(logp: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """Detached token weights: ``phi`` p(1−p), ``is`` p, ``none`` → None (weight 1)."""
    if weighting not in SFT_WEIGHTINGS:
        raise ValueError(f"sft_weighting: must be one of {', '.join(SFT_WEIGHTINGS)}; "
                         f"got {weighting!r}")
    if weighting == "none":
        return None
    p = fp32(logp.detach()).exp()
    return p * (1.0 - p) if weighting == "phi" else p


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, denom: SliceDenominators, *,
             agg_mode: str = "token-mean", weighting: str = "none",
             prefix: str = "sft") -> TermOutput:
    """L_SFT = agg(−w · log π_θ(y_t)) over the target tokens (§3.1); w = 1 / sg(p(1−p)) / sg(p).

    Args:
        logp: log π_θ of each target token, fp32 [b, t] (differentiable).
        mask: [b, t], 1 on target tokens (prompt and the empty-think prefix are 0).
        denom: global denominators of the SFT slice (token-mean: N_S target tokens).
        agg_mode: one of the four aggregation modes.
        weighting: ``none``, ``phi`` (CHORD-φ) or ``is``.

    Metrics: ``{prefix}/loss``, ``{prefix}/logp_mean`` (token mean of log π on the targets),
    ``{prefix}/tokens`` (Σ mask).
    """
    check_same_shape("logp", logp, mask=mask)
    weights = sft_token_weights(logp, weighting)
    per_token = -fp32(logp) if weights is None else -fp32(logp) * weights
    loss = aggregate(per_token, mask, agg_mode, denom)
    metrics = {f"{prefix}/loss": loss, f"{prefix}/logp_mean": token_mean(logp, mask, denom),
               f"{prefix}/tokens": mask.float().sum()}
    if weights is not None:
        metrics[f"{prefix}/weight_mean"] = token_mean(weights, mask, denom)
    return TermOutput(loss, detached(metrics))


def weighted(per_token: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``per_token`` × the detached ``weights`` [b, t]; ``per_token`` itself when None."""
    return per_token if weights is None else per_token * weights.detach()


def _surrogate_metrics(prefix: str, surrogate, mask: torch.Tensor,
                       denom: SliceDenominators) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}/clip_frac_low": token_mean(surrogate.clipped_low.float(), mask, denom),
        f"{prefix}/clip_frac_high": token_mean(surrogate.clipped_high.float(), mask, denom),
        f"{prefix}/dual_clip_frac": token_mean(surrogate.dual_clipped.float(), mask, denom),
    }


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, denom: SliceDenominators, cfg: LossConfig, *,
              ref_logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
              is_weights: torch.Tensor | None = None, prefix: str = "grpo") -> TermOutput:
    """L_GRPO = agg(ℓ_pg) + β·agg(k_t) − c_ent·agg(H_t) over the preference rollouts (§3.8).

    Args:
        logp: log π_θ of the sampled tokens, fp32 [b, t] (differentiable).
        old_logp: log π_old (rollout policy) [b, t].
        advantages: Â, [b] or [b, t]
            (:func:`~uniapl_mcore.losses.advantages.group_advantages`).
        mask: [b, t] response-token mask of the P rows.
        denom: global denominators of the P slice (``cfg.loss_agg_mode`` picks which).
        cfg: clip range, dual clip, aggregation, KL (``kl_coef_in_loss``, estimator,
            straight-through) and entropy coefficient.
        ref_logp: log π_ref [b, t]; required when the in-loss KL coefficient is > 0.
        entropy: H_t [b, t] (differentiable); required when ``entropy_coef`` > 0.
        is_weights: rollout importance weights [b, t] (detached, §3.9) on ℓ_pg only; None:
            no correction.

    Metrics: ``{prefix}/loss``, ``/pg_loss``, ``/kl`` (agg of k_t, if ``ref_logp``),
    ``/entropy`` (agg of H_t, if given), ``/clip_frac_low``, ``/clip_frac_high``,
    ``/dual_clip_frac``, ``/ratio_mean``, ``/approx_kl`` (k3 of KL(π_old‖π_θ), token mean),
    ``/tokens``; maxima ``/ratio_max``.
    """
    check_same_shape("logp", logp, old_logp=old_logp, mask=mask, ref_logp=ref_logp,
                     entropy=entropy, is_weights=is_weights)
    beta = cfg.kl_coef_in_loss
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp: required when kl_coef > 0 and the KL is in the loss")
    if cfg.entropy_coef > 0 and entropy is None:
        raise ValueError("entropy: required when entropy_coef > 0")
    mode = cfg.loss_agg_mode
    surrogate = clipped_surrogate(logp, old_logp, advantages, eps_low=cfg.clip_eps_low,
                                  eps_high=cfg.clip_eps_high, dual_clip_c=cfg.dual_clip_c,
                                  log_ratio_clamp=cfg.log_ratio_clamp)
    pg = aggregate(weighted(surrogate.loss, is_weights), mask, mode, denom)
    loss = pg
    metrics = {f"{prefix}/pg_loss": pg, **_surrogate_metrics(prefix, surrogate, mask, denom),
               f"{prefix}/ratio_mean": token_mean(surrogate.ratio, mask, denom),
               f"{prefix}/approx_kl": token_mean(
                   approx_kl_to_old(logp, old_logp, cfg.log_ratio_clamp), mask, denom),
               f"{prefix}/tokens": mask.float().sum()}
    if ref_logp is not None:
        kl = aggregate(kl_per_token(logp, ref_logp, cfg.kl_estimator, cfg.kl_straight_through),
                       mask, mode, denom)
        metrics[f"{prefix}/kl"] = kl
        if beta > 0:
            loss = loss + beta * kl
    if entropy is not None:
        ent = aggregate(entropy, mask, mode, denom)
        metrics[f"{prefix}/entropy"] = ent
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
    metrics[f"{prefix}/loss"] = loss
    ratio_max = masked(surrogate.ratio, mask).max() if mask.numel() else torch.zeros(())
    return TermOutput(loss, detached(metrics), detached({f"{prefix}/ratio_max": ratio_max}))


def adversarial_loss(logp: torch.Tensor, old_logp: torch.Tensor,
                     adv_advantages: torch.Tensor, mask: torch.Tensor,
                     denom: SliceDenominators, cfg: LossConfig, *,
                     is_weights: torch.Tensor | None = None, prefix: str = "adv") -> TermOutput:
    """L_ADV = agg(ℓ_adv) (§5.2): the clipped surrogate with A = Â_adv = c − b.

    At ρ = 1 its gradient is −Σ m (c − b) ∇log π / D, the REINFORCE gradient of −E[c].

    Args:
        logp: log π_θ of the sampled tokens, fp32 [b, t] (differentiable).
        old_logp: log π_old [b, t].
        adv_advantages: c − b, [b] or [b, t]
            (:func:`~uniapl_mcore.losses.advantages.adversarial_advantages`).
        mask: [b, t] response-token mask of the slice's rollouts.
        denom: global denominators of the slice (P, or the SFT-prompt rollouts).
        cfg: ``adv_clip``, clip range, dual clip and ``loss_agg_mode`` (shared with GRPO).
        is_weights: rollout importance weights [b, t] (detached, §3.9); None: no correction.

    Metrics: ``{prefix}/loss``, ``/clip_frac_low``, ``/clip_frac_high``, ``/dual_clip_frac``,
    ``/tokens``.
    """
    check_same_shape("logp", logp, old_logp=old_logp, mask=mask, is_weights=is_weights)
    surrogate = clipped_surrogate(logp, old_logp, adv_advantages, eps_low=cfg.clip_eps_low,
                                  eps_high=cfg.clip_eps_high, dual_clip_c=cfg.dual_clip_c,
                                  log_ratio_clamp=cfg.log_ratio_clamp, clip=cfg.adv_clip)
    loss = aggregate(weighted(surrogate.loss, is_weights), mask, cfg.loss_agg_mode, denom)
    metrics = {f"{prefix}/loss": loss, **_surrogate_metrics(prefix, surrogate, mask, denom),
               f"{prefix}/tokens": mask.float().sum()}
    return TermOutput(loss, detached(metrics))
