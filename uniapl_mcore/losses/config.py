"""Configuration of the UniAPL objective (section ``loss`` of the run config).

Defaults follow ``specs/objective.md`` §10 (paper values where the paper gives them:
λ_adv 1e-3, KL 1e-3 with the k3 estimator, PPO clip 0.2). Fields whose default depends on
the objective (``sft_weighting``, ``adv_on_sft_rows``, ``mu_schedule``) are ``None`` in the
file and resolved by the ``resolved_*`` properties, so a dumped config stays objective-neutral.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from uniapl_mcore.config import check

Objective = Literal["sft", "grpo", "a_sft", "a_grpo", "uniapl", "chord", "a_chord"]
AggMode = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                  "seq-mean-token-sum-norm"]
KlEstimator = Literal["k1", "k2", "k3", "abs"]
SftWeighting = Literal["none", "phi", "is"]
AdvBaseline = Literal["group_mean", "leave_one_out", "batch_mean", "none"]
AdvInjection = Literal["loss", "advantage", "reward_raw", "reward_coef"]
AdvReference = Literal["teacher", "gt", "gt_delta"]
RolloutISLevel = Literal["none", "token", "sequence"]
RolloutISMode = Literal["truncate", "mask"]

OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)
AGG_MODES: tuple[str, ...] = typing.get_args(AggMode)
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KlEstimator)
SFT_WEIGHTINGS: tuple[str, ...] = typing.get_args(SftWeighting)
ADV_BASELINES: tuple[str, ...] = typing.get_args(AdvBaseline)
ADV_INJECTIONS: tuple[str, ...] = typing.get_args(AdvInjection)
ADV_REFERENCES: tuple[str, ...] = typing.get_args(AdvReference)
ROLLOUT_IS_LEVELS: tuple[str, ...] = typing.get_args(RolloutISLevel)
ROLLOUT_IS_MODES: tuple[str, ...] = typing.get_args(RolloutISMode)
#: injections that add the discriminator signal to the verifiable reward (§5.4 ablations)
REWARD_INJECTIONS = ("reward_raw", "reward_coef")

#: objective names refused with a reason (read by ``config.build_dataclass``)
REMOVED_OBJECTIVES = {
    name: "DPO / KTO learn from offline preference pairs, which the online trainer does not "
          "load (their losses are functions in uniapl_mcore.losses.preference); use one of "
          + ", ".join(map(repr, OBJECTIVES)) for name in ("dpo", "kto")}
#: the DPO / KTO settings this section once had
_PREFERENCE_KEYS = ("dpo_beta", "kto_beta", "kto_lambda_d", "kto_lambda_u")

CHORD_OBJECTIVES = ("chord", "a_chord")
#: objectives whose loss contains the adversarial term (when ``adv_injection == "loss"``)
ADVERSARIAL_OBJECTIVES = ("a_sft", "a_grpo", "uniapl", "a_chord")


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    check(value in choices, name, f"must be one of {', '.join(map(repr, choices))}; "
                                  f"got {value!r}")


@dataclass
class MuScheduleConfig:
    """CHORD's μ schedule (Trinity ``mu_schedule_function``), in optimizer steps.

    Linear warm-up to ``peak`` over ``warmup_steps``, cosine decay to ``valley`` over
    ``decay_steps``, then ``valley``. Defaults: the CHORD example yaml (W 200, D 400,
    peak 0.5, valley 0.02).
    """

    warmup_steps: int = 200
    decay_steps: int = 400
    peak: float = 0.5
    valley: float = 0.02

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.decay_steps >= 0, "decay_steps", f"must be >= 0, got {self.decay_steps}")
        check(0.0 <= self.peak <= 1.0, "peak", f"must be in [0, 1], got {self.peak}")
        check(0.0 <= self.valley <= 1.0, "valley", f"must be in [0, 1], got {self.valley}")

    def value(self, step: int) -> float:
        """μ at optimizer step ``step`` (0-based)."""
        w, d = self.warmup_steps, self.decay_steps
        if step < w:
            return self.peak * step / w
        if step >= w + d:
            return self.valley
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step - w) / d))
        return self.valley + (self.peak - self.valley) * cosine


@dataclass
class RolloutISConfig:
    """Rollout importance sampling (§3.9): a detached weight on each policy-gradient token of
    the GRPO term and the adversarial surrogate, for the engine's π_rollout ≠ π_old.

    ``level``: ``none`` (off), ``token`` (ratio π_old / π_rollout per token) or ``sequence``
    (the product of the ratios over the response, on every token of it). ``mode``:
    ``truncate`` (w = min(ratio, cap)) or ``mask`` (w = 1 if ratio ≤ cap, else the token is
    dropped). ``cap``: C (≥ 1; 2.0 is the common default).
    """

    level: RolloutISLevel = "none"
    mode: RolloutISMode = "truncate"
    cap: float = 2.0

    def __post_init__(self) -> None:
        _check_choice(self.level, ROLLOUT_IS_LEVELS, "level")
        _check_choice(self.mode, ROLLOUT_IS_MODES, "mode")
        check(self.cap >= 1.0, "cap", f"must be >= 1, got {self.cap}")

    @property
    def enabled(self) -> bool:
        return self.level != "none"


@dataclass
class LossConfig:
    """Every switch of the objective (``specs/objective.md`` §3–§6, §10).

    Attributes:
        objective: which loss to optimise (§6): ``sft``, ``grpo``, ``a_sft``, ``a_grpo``,
            ``uniapl`` (Eq. 2), ``chord``, ``a_chord``. (DPO / KTO are sequence-level
            functions in :mod:`uniapl_mcore.losses.preference`, not objectives here.)
        alpha: constant SFT-vs-preference weight α of the unified objective.
        mu_schedule: schedule for α (μ in CHORD). None: the CHORD example schedule for
            ``chord``/``a_chord``, constant ``alpha`` otherwise.
        sft_weighting: SFT token weights: ``none`` (plain NLL), ``phi`` (sg(p(1−p)),
            CHORD-φ), ``is`` (sg(p)). None: ``phi`` for CHORD objectives, else ``none``.
        sft_agg_mode: aggregation of the SFT term (default token-mean, as CHORD).
        lambda_adv: adversarial weight λ (paper default 1e-3).
        adv_baseline: baseline b subtracted from the discriminator coefficient c.
        adv_clip: PPO-clip the adversarial surrogate (False: plain −Â·ρ).
        adv_injection: how POLAR enters: ``loss`` (separate term, the method),
            ``advantage`` (Â += λ·Â_adv), ``reward_raw`` (R += w·r), ``reward_coef`` (R += w·c).
        adv_reward_weight: w of the reward-injection ablations.
        adv_reference: POLAR reference: ``teacher``, ``gt``, ``gt_delta`` (Δr = r − r_T).
        adv_on_sft_rows: apply L_ADV|SFT on student rollouts of SFT prompts (a separate term
            under ``adv_injection`` ``loss`` and ``advantage``; the reward injections have no
            reward there to add to, so they refuse true). None: True for ``uniapl``/``a_sft``
            (False under a reward injection), False for ``a_chord``.
        clip_eps_low, clip_eps_high: PPO clip range [1 − low, 1 + high].
        dual_clip_c: dual-clip constant (> 1) for negative advantages; None disables.
        log_ratio_clamp: |log ρ| is clamped to this before exp (veRL: 20).
        norm_adv_by_std: divide group-centred rewards by the group std (False: Dr.GRPO).
        adv_std_eps: ε added to the group std.
        loss_agg_mode: aggregation of the GRPO / KL / entropy / adversarial terms (§3.5).
        max_response_tokens: T_max of ``seq-mean-token-sum-norm`` (tokens).
        kl_estimator: per-token KL estimator to the reference policy.
        kl_coef: β (paper: 1e-3).
        kl_in_reward: subtract β·Σ_t k1 from the reward instead of adding a loss term.
        kl_straight_through: forward value of the estimator, gradient of k2 (veRL ``+``).
        entropy_coef: c_ent of the entropy bonus (default 0).
        logprob_chunk_tokens: tokens per chunk of the vocab-parallel log-prob computation
            (bounds the fp32 working set to chunk × vocab/tp).
        rollout_is: rollout importance sampling (:class:`RolloutISConfig`).
    """

    #: removed keys and refused values, with the reason (read by ``config.build_dataclass``)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        key: "DPO / KTO are not objectives of the online trainer "
             "(uniapl_mcore.losses.preference takes β and λ as arguments); delete the key"
        for key in _PREFERENCE_KEYS}
    REMOVED_VALUES: ClassVar[dict[str, dict[str, str]]] = {"objective": REMOVED_OBJECTIVES}

    objective: Objective = "uniapl"
    alpha: float = 0.1
    mu_schedule: MuScheduleConfig | None = None
    sft_weighting: SftWeighting | None = None
    sft_agg_mode: AggMode = "token-mean"
    lambda_adv: float = 1e-3
    adv_baseline: AdvBaseline = "group_mean"
    adv_clip: bool = True
    adv_injection: AdvInjection = "loss"
    adv_reward_weight: float = 1.0
    adv_reference: AdvReference = "teacher"
    adv_on_sft_rows: bool | None = None
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip_c: float | None = 3.0
    log_ratio_clamp: float = 20.0
    norm_adv_by_std: bool = True
    adv_std_eps: float = 1e-6
    loss_agg_mode: AggMode = "token-mean"
    max_response_tokens: int = 4096
    kl_estimator: KlEstimator = "k3"
    kl_coef: float = 1e-3
    kl_in_reward: bool = False
    kl_straight_through: bool = False
    entropy_coef: float = 0.0
    logprob_chunk_tokens: int = 1024
    rollout_is: RolloutISConfig = field(default_factory=RolloutISConfig)

    def __post_init__(self) -> None:
        _check_choice(self.objective, OBJECTIVES, "objective")
        _check_choice(self.sft_agg_mode, AGG_MODES, "sft_agg_mode")
        _check_choice(self.loss_agg_mode, AGG_MODES, "loss_agg_mode")
        _check_choice(self.kl_estimator, KL_ESTIMATORS, "kl_estimator")
        _check_choice(self.adv_baseline, ADV_BASELINES, "adv_baseline")
        _check_choice(self.adv_injection, ADV_INJECTIONS, "adv_injection")
        _check_choice(self.adv_reference, ADV_REFERENCES, "adv_reference")
        if self.sft_weighting is not None:
            _check_choice(self.sft_weighting, SFT_WEIGHTINGS, "sft_weighting")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        for name in ("lambda_adv", "adv_reward_weight", "kl_coef", "entropy_coef"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check(0.0 <= self.clip_eps_low < 1.0, "clip_eps_low",
              f"must be in [0, 1), got {self.clip_eps_low}")
        check(self.clip_eps_high >= 0, "clip_eps_high", f"must be >= 0, got {self.clip_eps_high}")
        check(self.dual_clip_c is None or self.dual_clip_c > 1.0, "dual_clip_c",
              f"must be > 1 (or null to disable), got {self.dual_clip_c}")
        check(self.log_ratio_clamp > 0, "log_ratio_clamp", "must be > 0")
        check(self.adv_std_eps >= 0, "adv_std_eps", f"must be >= 0, got {self.adv_std_eps}")
        check(self.max_response_tokens > 0, "max_response_tokens",
              f"must be > 0, got {self.max_response_tokens}")
        check(self.logprob_chunk_tokens > 0, "logprob_chunk_tokens",
              f"must be > 0, got {self.logprob_chunk_tokens}")
        check(not (self.kl_in_reward and self.kl_straight_through), "kl_straight_through",
              "only applies to the in-loss KL; kl_in_reward is set")
        check(not (self.adv_on_sft_rows and self.adv_injection in REWARD_INJECTIONS),
              "adv_on_sft_rows", f"L_ADV|SFT needs adv_injection 'loss' or 'advantage': "
              f"{self.adv_injection!r} adds the discriminator signal to verifiable rewards, "
              "which student rollouts of SFT prompts do not have")

    # ------------------------------------------------------------------ resolved values

    @property
    def is_chord(self) -> bool:
        return self.objective in CHORD_OBJECTIVES

    @property
    def resolved_sft_weighting(self) -> str:
        """``sft_weighting``, or its objective default (``phi`` for CHORD, else ``none``)."""
        if self.sft_weighting is not None:
            return self.sft_weighting
        return "phi" if self.is_chord else "none"

    @property
    def resolved_adv_on_sft_rows(self) -> bool:
        """``adv_on_sft_rows``, or its default: on for ``uniapl``/``a_sft`` unless a reward
        injection is chosen (there is no reward on those rollouts), off otherwise."""
        if self.adv_on_sft_rows is not None:
            return self.adv_on_sft_rows
        return self.objective in ("uniapl", "a_sft") and \
            self.adv_injection not in REWARD_INJECTIONS

    @property
    def resolved_mu_schedule(self) -> MuScheduleConfig | None:
        """The α/μ schedule in force: explicit, the CHORD example for CHORD, else None."""
        if self.mu_schedule is not None:
            return self.mu_schedule
        return MuScheduleConfig() if self.is_chord else None

    @property
    def kl_coef_in_loss(self) -> float:
        """β applied as a loss term (0 when the KL goes into the reward)."""
        return 0.0 if self.kl_in_reward else self.kl_coef

    @property
    def adversarial_on_sft_rollouts(self) -> bool:
        """Whether the objective has L_ADV|SFT: the separate adversarial term on student
        rollouts of SFT prompts (``adv_injection`` ``loss`` or ``advantage``)."""
        return self.objective in ADVERSARIAL_OBJECTIVES and self.resolved_adv_on_sft_rows

    def alpha_at(self, step: int) -> float:
        """α (μ for CHORD) at optimizer step ``step``."""
        schedule = self.resolved_mu_schedule
        return self.alpha if schedule is None else schedule.value(step)
