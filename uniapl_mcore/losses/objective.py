"""Composite objectives: A-SFT, A-GRPO, unified (Eq. 2), CHORD and A-CHORD (§6).

    L = w_sft · L_SFT(S) + w_pref · L_GRPO(P) + w_adv_sft · L_ADV(SFT rollouts)
        + w_adv_pref · L_ADV(P)

with the weights of :func:`objective_weights` (α·…, (1−α)·…, λ·…) and each term normalised
over its own slice of the global batch (:class:`StepDenominators`), so α and λ are the only
weights between parts and an empty slice contributes 0. CHORD is the same with α = μ(step)
and φ-weighted SFT; A-CHORD adds the adversarial terms.

Use from a Megatron ``loss_func``: compute :func:`step_denominators` over the global batch
once per step, then per micro-batch call :func:`objective_loss` and return its loss. The
loss is already divided by global denominators: gradients must be *summed* over
micro-batches and DP ranks (undo Megatron's division by the number of micro-batches and
DDP's averaging over DP, e.g. multiply by ``num_microbatches × dp``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from uniapl_mcore.losses.aggregation import (
    RowKind,
    SliceDenominators,
    StepDenominators,
    check_row_shapes,
    row_mean,
)
from uniapl_mcore.losses.config import ADVERSARIAL_OBJECTIVES, LossConfig
from uniapl_mcore.losses.metrics import TermOutput, detached
from uniapl_mcore.losses.policy import check_same_shape
from uniapl_mcore.losses.rollout_correction import mismatch_metrics, rollout_is_weights
from uniapl_mcore.losses.terms import adversarial_loss, grpo_loss, sft_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectiveWeights:
    """Weights of the four parts of the objective (α, λ already folded in)."""

    sft: float
    pref: float
    adv_sft: float
    adv_pref: float


def objective_weights(cfg: LossConfig, step: int = 0) -> ObjectiveWeights:
    """The weight of each part at optimizer ``step`` for ``cfg.objective``.

    ``sft`` (1, 0, 0, 0); ``grpo`` (0, 1, 0, 0); ``a_sft`` (1, 0, λ, 0); ``a_grpo``
    (0, 1, 0, λ); ``uniapl`` / ``a_chord`` (α, 1−α, αλ, (1−α)λ); ``chord`` (μ, 1−μ, 0, 0).
    The adversarial-on-SFT weight is 0 unless ``adversarial_on_sft_rollouts``; the
    adversarial-on-P weight is 0 unless ``adv_injection == "loss"``.
    """
    objective, lam = cfg.objective, cfg.lambda_adv
    if objective in ("sft", "a_sft"):
        sft, pref = 1.0, 0.0
    elif objective in ("grpo", "a_grpo"):
        sft, pref = 0.0, 1.0
    else:  # uniapl, chord, a_chord
        alpha = cfg.alpha_at(step)
        sft, pref = alpha, 1.0 - alpha
    adversarial = objective in ADVERSARIAL_OBJECTIVES
    adv_sft = lam * sft if cfg.adversarial_on_sft_rollouts else 0.0
    adv_pref = lam * pref if adversarial and cfg.adv_injection == "loss" else 0.0
    return ObjectiveWeights(sft, pref, adv_sft, adv_pref)


@dataclass
class PolicyBatch:
    """One micro-batch of rows for the token-level objectives (b rows, t response positions).

    Attributes:
        logp: log π_θ of each target / sampled token, fp32 [b, t] (differentiable), e.g. from
            :func:`~uniapl_mcore.losses.vocab_parallel.vocab_parallel_logprobs_entropy`.
        mask: [b, t] loss mask (1 on counted response / target tokens).
        row_kind: int [b] of :class:`RowKind` (SFT, PREF, SFT_ROLLOUT, IGNORE).
        old_logp: log π_old [b, t] of rollout rows; None = on-policy (ρ = 1): π_old is
            π_θ detached (one update per rollout batch).
        rollout_logp: log π_rollout [b, t]: the engine's log-prob of each sampled token
            (0 on rows without one); enables the ``mismatch/`` metrics and rollout IS.
        ref_logp: log π_ref [b, t]; needed for the in-loss KL.
        entropy: H_t [b, t] (differentiable); needed when ``entropy_coef`` > 0.
        advantages: GRPO advantage [b] (used on PREF rows).
        adv_advantages: c − b [b] (used on PREF and SFT_ROLLOUT rows).
        rewards, coef, scores: [b], for the summable per-row metrics only.
    """

    logp: torch.Tensor
    mask: torch.Tensor
    row_kind: torch.Tensor
    old_logp: torch.Tensor | None = None
    rollout_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    adv_advantages: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_row_shapes(self.mask, self.row_kind)
        check_same_shape("logp", self.logp, mask=self.mask, old_logp=self.old_logp,
                         rollout_logp=self.rollout_logp, ref_logp=self.ref_logp,
                         entropy=self.entropy)
        b = self.logp.shape[0]
        for name in ("advantages", "adv_advantages", "rewards", "coef", "scores"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b,):
                raise ValueError(f"{name}: expected [{b}] (one per row), got "
                                 f"{tuple(value.shape)}")

    def slice_mask(self, kind: RowKind) -> torch.Tensor:
        """The loss mask restricted to rows of ``kind`` (float [b, t])."""
        rows = (self.row_kind == int(kind)).unsqueeze(-1)
        return torch.where(rows, self.mask.float(), torch.zeros((), device=self.mask.device))

    def rows(self, kind: RowKind) -> torch.Tensor:
        return self.row_kind == int(kind)

    def has(self, kind: RowKind) -> bool:
        return bool(self.rows(kind).any())


def _required(value: torch.Tensor | None, name: str, why: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name}: required {why}")
    return value


def _row_metrics(batch: PolicyBatch, kind: RowKind, denom: SliceDenominators,
                 prefix: str) -> dict[str, torch.Tensor]:
    """Summable row statistics of one slice (means over the slice's global row count)."""
    rows = batch.rows(kind)
    metrics = {f"{prefix}/rows": rows.double().sum(),
               f"{prefix}/response_tokens_mean": row_mean(
                   batch.slice_mask(kind).sum(dim=-1), rows, denom)}
    if batch.rewards is not None:
        metrics[f"{prefix}/reward_mean"] = row_mean(batch.rewards, rows, denom)
    if batch.advantages is not None and kind == RowKind.PREF:
        a = batch.advantages.float()
        metrics[f"{prefix}/adv_mean"] = row_mean(a, rows, denom)
        metrics[f"{prefix}/adv_sq_mean"] = row_mean(a.square(), rows, denom)
        metrics[f"{prefix}/zero_adv_frac"] = row_mean((a == 0).float(), rows, denom)
    if batch.coef is not None:
        c = batch.coef.float()
        metrics[f"{prefix}/coef_mean"] = row_mean(c, rows, denom)
        metrics[f"{prefix}/coef_sq_mean"] = row_mean(c.square(), rows, denom)
    if batch.scores is not None:
        r = batch.scores.float()
        metrics[f"{prefix}/score_mean"] = row_mean(r, rows, denom)
        metrics[f"{prefix}/score_near_frac"] = row_mean((r.abs() < 4.0).float(), rows, denom)
    return detached(metrics)


def _rollout_correction(batch: PolicyBatch, old: torch.Tensor, denoms: StepDenominators,
                        cfg: LossConfig, out: TermOutput) -> torch.Tensor | None:
    """§3.9 on this micro-batch: ``mismatch/`` metrics on the PREF tokens (when the engine's
    log-probs are attached) and the rollout IS weights [b, t] of the rollout rows (PREF and
    SFT_ROLLOUT; None when ``rollout_is.level`` is none)."""
    if batch.rollout_logp is not None:
        summable, maxima = mismatch_metrics(old, batch.rollout_logp,
                                            batch.slice_mask(RowKind.PREF), denoms.pref.tokens)
        out.add_metrics(summable)
        out.add_metrics(maxima, maxima=True)
    rows = batch.slice_mask(RowKind.PREF) + batch.slice_mask(RowKind.SFT_ROLLOUT)
    if not cfg.rollout_is.enabled or (batch.rollout_logp is None and not bool(rows.any())):
        return None  # off, or a step without rollouts
    rollout_logp = _required(batch.rollout_logp, "rollout_logp", "for rollout_is")
    found = rollout_is_weights(old, rollout_logp, rows, cfg.rollout_is)
    tokens = max(denoms.pref.tokens + denoms.sft_rollout.tokens, 1.0)
    out.add_metrics(detached({"rollout_is/weight_mean": found.weights.double().sum() / tokens,
                              "rollout_is/capped_frac": found.capped.double().sum() / tokens}))
    return found.weights


def _add(total: TermOutput, part: TermOutput, weight: float, name: str) -> None:
    total.loss = total.loss + weight * part.loss
    total.merge(part)
    total.metrics[f"objective/{name}_weighted"] = (weight * part.loss).detach().double()


def objective_loss(batch: PolicyBatch, denoms: StepDenominators, cfg: LossConfig,
                   step: int = 0) -> TermOutput:
    """This micro-batch's share of the configured objective (token-level objectives only).

    Args:
        batch: the micro-batch (see :class:`PolicyBatch`).
        denoms: global denominators of the step (:func:`step_denominators`).
        cfg: loss configuration; ``cfg.objective`` in sft, grpo, a_sft, a_grpo, uniapl,
            chord, a_chord.
        step: optimizer step (for the α / μ schedule).

    Returns a :class:`TermOutput` whose loss summed over all micro-batches and DP ranks is
    the global objective; metrics: every term's (unweighted) metrics, ``objective/loss``,
    ``objective/<part>_weighted`` and per-slice row statistics (``sft/``, ``pref/``,
    ``sft_rollout/``: rows, response length, reward / advantage / coef / score means).
    """
    weights = objective_weights(cfg, step)
    out = TermOutput(batch.logp.sum() * 0.0)  # keeps the graph connected for empty batches
    old = batch.old_logp if batch.old_logp is not None else batch.logp.detach()
    is_weights = _rollout_correction(batch, old, denoms, cfg, out)
    if weights.sft > 0 or denoms.sft.sequences > 0:
        part = sft_loss(batch.logp, batch.slice_mask(RowKind.SFT), denoms.sft,
                        agg_mode=cfg.sft_agg_mode, weighting=cfg.resolved_sft_weighting)
        _add(out, part, weights.sft, "sft")
        out.add_metrics(_row_metrics(batch, RowKind.SFT, denoms.sft, "sft"))
    if weights.pref > 0 or denoms.pref.sequences > 0:
        advantages = _required(batch.advantages, "advantages", "for the GRPO term")
        part = grpo_loss(batch.logp, old, advantages, batch.slice_mask(RowKind.PREF),
                         denoms.pref, cfg, ref_logp=batch.ref_logp, entropy=batch.entropy,
                         is_weights=is_weights)
        _add(out, part, weights.pref, "grpo")
        out.add_metrics(_row_metrics(batch, RowKind.PREF, denoms.pref, "pref"))
    if weights.adv_pref > 0:
        adv = _required(batch.adv_advantages, "adv_advantages", "for the adversarial term")
        part = adversarial_loss(batch.logp, old, adv, batch.slice_mask(RowKind.PREF),
                                denoms.pref, cfg, is_weights=is_weights, prefix="adv_pref")
        _add(out, part, weights.adv_pref, "adv_pref")
    if weights.adv_sft > 0:
        adv = _required(batch.adv_advantages, "adv_advantages", "for the adversarial term")
        part = adversarial_loss(batch.logp, old, adv, batch.slice_mask(RowKind.SFT_ROLLOUT),
                                denoms.sft_rollout, cfg, is_weights=is_weights,
                                prefix="adv_sft")
        _add(out, part, weights.adv_sft, "adv_sft")
        out.add_metrics(_row_metrics(batch, RowKind.SFT_ROLLOUT, denoms.sft_rollout,
                                     "sft_rollout"))
    out.metrics["objective/loss"] = out.loss.detach().double()
    return out


def unified_loss(sft: torch.Tensor, pref: torch.Tensor, adv_sft: torch.Tensor,
                 adv_pref: torch.Tensor, alpha: float, lambda_adv: float) -> torch.Tensor:
    """Eq. 2 from already-normalised parts: α(L_SFT + λL_ADV|SFT) + (1−α)(L_PREF + λL_ADV|PREF).

    All arguments 0-dim; ``pref`` may be L_GRPO, L_DPO or L_KTO.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    return alpha * (sft + lambda_adv * adv_sft) + (1.0 - alpha) * (pref + lambda_adv * adv_pref)
