"""Composite objectives (§6): unified vs a hand-built reference, split invariance, limits.

A tiny linear "model" (features [rows, t, d] @ W [d, V]) produces full-vocab logits; the
global batch mixes SFT rows, preference rollouts (two groups) and SFT-prompt rollouts with
different lengths, including an empty response.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from uniapl_mcore.losses import (
    LossConfig,
    ObjectiveWeights,
    PolicyBatch,
    RowKind,
    compute_step_advantages,
    objective_loss,
    objective_weights,
    reduce_metrics,
    step_denominators,
    unified_loss,
    vocab_parallel_logprobs_entropy,
)

from .reference import agg, full_logprobs_entropy, kl_token, ppo_token

TOL = 1e-6
T, D, V, T_MAX = 8, 5, 24, 12
KINDS = [RowKind.SFT] * 4 + [RowKind.PREF] * 8 + [RowKind.SFT_ROLLOUT] * 4
GROUPS = [-1] * 4 + [0] * 4 + [1] * 4 + [2] * 4


@dataclass
class GlobalBatch:
    features: torch.Tensor  # [n, T, D]
    targets: torch.Tensor  # [n, T]
    mask: torch.Tensor  # [n, T]
    kind: torch.Tensor  # [n]
    old: torch.Tensor  # [n, T]
    ref: torch.Tensor  # [n, T]
    adv: torch.Tensor  # [n]
    adv_adv: torch.Tensor  # [n]


def make_global_batch(cfg: LossConfig, seed: int = 0) -> tuple[GlobalBatch, torch.Tensor]:
    """The step's rows and the initial weights W [D, V]."""
    gen = torch.Generator().manual_seed(seed)
    n = len(KINDS)
    weights = torch.randn(D, V, generator=gen) * 0.5
    features = torch.randn(n, T, D, generator=gen)
    targets = torch.randint(0, V, (n, T), generator=gen)
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    lengths[5] = 0  # an empty preference rollout
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    with torch.no_grad():
        logp, _ = full_logprobs_entropy(features @ weights, targets)
    old = (logp + torch.randn(n, T, generator=gen, dtype=torch.float64) * 0.3).float()
    ref = (logp + torch.randn(n, T, generator=gen, dtype=torch.float64) * 0.3).float()
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5])  # group 1: identical
    scores = torch.randn(12, generator=gen) * 3
    pref = compute_step_advantages(cfg, torch.tensor(GROUPS[4:12]), rewards,
                                   scores=scores[:8])
    rollouts = compute_step_advantages(cfg, torch.tensor(GROUPS[12:]) - 2, None,
                                       scores=scores[8:])
    adv = torch.cat([torch.zeros(4), pref.advantages, rollouts.advantages])
    adv_adv = torch.cat([torch.zeros(4), pref.adversarial, rollouts.adversarial])
    kind = torch.tensor([int(k) for k in KINDS])
    return GlobalBatch(features, targets, mask, kind, old, ref, adv, adv_adv), weights


def micro_batch(batch: GlobalBatch, rows: list[int], weights: torch.Tensor) -> PolicyBatch:
    """Rows ``rows`` padded to their own longest response, logits from ``weights``."""
    idx = torch.tensor(rows)
    length = max(int(batch.mask[idx].sum(-1).max()), 1)
    logits = batch.features[idx, :length] @ weights
    mask = batch.mask[idx, :length]
    logp, ent = vocab_parallel_logprobs_entropy(logits, batch.targets[idx, :length], mask.bool(),
                                                tp_group="local", chunk_tokens=5)
    return PolicyBatch(logp=logp, mask=mask, row_kind=batch.kind[idx],
                       old_logp=batch.old[idx, :length], ref_logp=batch.ref[idx, :length],
                       entropy=ent, advantages=batch.adv[idx], adv_advantages=batch.adv_adv[idx])


def run_step(batch: GlobalBatch, weights: torch.Tensor, splits: list[list[int]],
             cfg: LossConfig, step: int = 0):
    """Σ of micro-batch losses, the gradient w.r.t. W and the reduced metrics."""
    w = weights.clone().requires_grad_()
    denoms = step_denominators([batch.mask[torch.tensor(r)] for r in splits],
                               [batch.kind[torch.tensor(r)] for r in splits],
                               cfg.max_response_tokens)
    total = torch.zeros(())
    outputs = []
    for rows in splits:
        out = objective_loss(micro_batch(batch, rows, w), denoms, cfg, step)
        out.loss.backward()
        total = total + out.loss.detach()
        outputs.append(out)
    metrics = reduce_metrics([o.metrics for o in outputs], [o.maxima for o in outputs])
    return float(total), w.grad.clone(), metrics


def reference_objective(batch: GlobalBatch, weights: torch.Tensor, cfg: LossConfig,
                        step: int = 0) -> torch.Tensor:
    """Eq. 2 written out on full-vocab float64 log-probs, slice by slice."""
    logp, ent = full_logprobs_entropy(batch.features.double() @ weights, batch.targets)
    mode, tm = cfg.loss_agg_mode, cfg.max_response_tokens

    def rows(kind):
        return batch.kind == int(kind)

    s, p, r = rows(RowKind.SFT), rows(RowKind.PREF), rows(RowKind.SFT_ROLLOUT)
    sft_w = torch.ones_like(logp[s])
    if cfg.resolved_sft_weighting == "phi":
        prob = logp[s].detach().exp()
        sft_w = prob * (1 - prob)
    l_sft = agg(-sft_w * logp[s], batch.mask[s], cfg.sft_agg_mode, tm)
    old = batch.old.double()
    pg = ppo_token(logp[p], old[p], batch.adv[p], cfg.clip_eps_low, cfg.clip_eps_high,
                   cfg.dual_clip_c)
    l_grpo = (agg(pg, batch.mask[p], mode, tm)
              + cfg.kl_coef * agg(kl_token(logp[p], batch.ref[p].double(), cfg.kl_estimator),
                                  batch.mask[p], mode, tm)
              - cfg.entropy_coef * agg(ent[p], batch.mask[p], mode, tm))

    def l_adv(sel):
        loss = ppo_token(logp[sel], old[sel], batch.adv_adv[sel], cfg.clip_eps_low,
                         cfg.clip_eps_high, cfg.dual_clip_c, clip=cfg.adv_clip)
        return agg(loss, batch.mask[sel], mode, tm)

    alpha = cfg.alpha_at(step)
    adv_sft = l_adv(r) if cfg.resolved_adv_on_sft_rows else torch.zeros(())
    return unified_loss(l_sft, l_grpo, adv_sft, l_adv(p), alpha, cfg.lambda_adv)


def _grad_of(fn, weights):
    w = weights.clone().double().requires_grad_()
    loss = fn(w)
    (g,) = torch.autograd.grad(loss, w)
    return float(loss.detach()), g


ONE = [list(range(16))]
FOUR = [[0, 4, 5, 12], [1, 6, 7, 8], [9, 10, 11, 13], [2, 3, 14, 15]]  # mixed slices, uneven


def _assert_close(a: float, b: float, what: str) -> None:
    assert abs(a - b) <= TOL * max(1.0, abs(b)), (what, a, b)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("objective", ["uniapl", "a_chord"])
def test_unified_matches_reference(mode, objective):
    cfg = LossConfig(objective=objective, alpha=0.3, lambda_adv=0.5, loss_agg_mode=mode,
                     entropy_coef=0.01, kl_coef=0.05, max_response_tokens=T_MAX,
                     clip_eps_high=0.28)
    batch, weights = make_global_batch(cfg)
    step = 300
    loss, grad, metrics = run_step(batch, weights, ONE, cfg, step)
    ref_loss, ref_grad = _grad_of(lambda w: reference_objective(batch, w, cfg, step), weights)
    _assert_close(loss, ref_loss, "loss")
    assert (grad.double() - ref_grad).abs().max() <= TOL
    assert abs(metrics["objective/loss"] - loss) <= TOL
    if objective == "a_chord":
        assert "adv_sft/loss" not in metrics  # off by default in A-CHORD
        assert metrics["sft/weight_mean"] > 0  # φ weighting on


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_micro_batch_split_gives_same_loss_gradient_and_metrics(mode):
    cfg = LossConfig(objective="uniapl", alpha=0.4, lambda_adv=0.3, loss_agg_mode=mode,
                     sft_agg_mode=mode, kl_coef=0.05, entropy_coef=0.02,
                     max_response_tokens=T_MAX)
    batch, weights = make_global_batch(cfg, seed=1)
    loss1, grad1, metrics1 = run_step(batch, weights, ONE, cfg)
    loss4, grad4, metrics4 = run_step(batch, weights, FOUR, cfg)
    _assert_close(loss4, loss1, "loss")
    assert (grad4 - grad1).abs().max() <= TOL * max(1.0, float(grad1.abs().max()))
    assert metrics1.keys() == metrics4.keys()
    for key, value in metrics1.items():
        _assert_close(metrics4[key], value, key)
    assert metrics1["pref/rows"] == 8 and metrics1["sft/rows"] == 4
    assert metrics1["pref/zero_adv_frac"] == pytest.approx(0.5)


def test_alpha_limits_equal_a_sft_and_a_grpo():
    base = {"lambda_adv": 0.2, "kl_coef": 0.05, "max_response_tokens": T_MAX}
    batch, weights = make_global_batch(LossConfig(**base), seed=2)
    _, g_u1, _ = run_step(batch, weights, FOUR, LossConfig(objective="uniapl", alpha=1.0, **base))
    _, g_asft, _ = run_step(batch, weights, FOUR, LossConfig(objective="a_sft", **base))
    assert (g_u1 - g_asft).abs().max() <= TOL
    _, g_u0, _ = run_step(batch, weights, FOUR, LossConfig(objective="uniapl", alpha=0.0, **base))
    _, g_agrpo, _ = run_step(batch, weights, FOUR, LossConfig(objective="a_grpo", **base))
    assert (g_u0 - g_agrpo).abs().max() <= TOL
    _, g_sft, _ = run_step(batch, weights, FOUR, LossConfig(objective="sft", **base))
    assert (g_sft - g_asft).abs().max() > 1e-4  # the adversarial term does contribute


def test_chord_is_mu_weighted_grpo_plus_phi_sft():
    cfg = LossConfig(objective="chord", kl_coef=0.0, max_response_tokens=T_MAX)
    batch, weights = make_global_batch(cfg, seed=3)
    step = 400  # μ = 0.02 + 0.48·½
    mu = cfg.alpha_at(step)
    assert mu == pytest.approx(0.26)
    loss, grad, metrics = run_step(batch, weights, FOUR, cfg, step)
    # reference_objective includes λ·L_ADV|PREF; CHORD has none: remove it by λ = 0
    cfg0 = LossConfig(objective="chord", kl_coef=0.0, lambda_adv=0.0, max_response_tokens=T_MAX)
    ref_loss, ref_grad = _grad_of(lambda w: reference_objective(batch, w, cfg0, step), weights)
    _assert_close(loss, ref_loss, "loss")
    assert (grad.double() - ref_grad).abs().max() <= TOL
    _assert_close(loss, (1 - mu) * metrics["grpo/loss"] + mu * metrics["sft/loss"], "parts")


def test_empty_slices_contribute_zero_not_nan():
    cfg = LossConfig(objective="uniapl", max_response_tokens=T_MAX)
    batch, weights = make_global_batch(cfg, seed=4)
    only_pref = [list(range(4, 12))]
    w = weights.clone().requires_grad_()
    denoms = step_denominators([batch.mask[4:12]], [batch.kind[4:12]], T_MAX)
    assert denoms.sft.sequences == 0 and denoms.sft_rollout.tokens == 0
    out = objective_loss(micro_batch(batch, only_pref[0], w), denoms, cfg)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(w.grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())
    # a micro-batch of ignored / fully masked rows: zero loss, zero gradient
    empty = PolicyBatch(logp=torch.zeros(2, 3, requires_grad=True), mask=torch.zeros(2, 3),
                        row_kind=torch.tensor([int(RowKind.PREF), int(RowKind.IGNORE)]),
                        advantages=torch.zeros(2), adv_advantages=torch.zeros(2),
                        ref_logp=torch.zeros(2, 3))
    out = objective_loss(empty, denoms, cfg)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and torch.all(empty.logp.grad == 0)


def test_objective_weights_table():
    lam = 1e-3

    def weights(**kw):
        return objective_weights(LossConfig(**kw), step=0)

    assert weights(objective="sft") == ObjectiveWeights(1, 0, 0, 0)
    assert weights(objective="grpo") == ObjectiveWeights(0, 1, 0, 0)
    assert weights(objective="a_sft") == ObjectiveWeights(1, 0, lam, 0)
    assert weights(objective="a_grpo") == ObjectiveWeights(0, 1, 0, lam)
    w = weights(objective="uniapl", alpha=0.25)
    assert w == ObjectiveWeights(0.25, 0.75, 0.25 * lam, 0.75 * lam)
    assert weights(objective="a_grpo", adv_injection="reward_coef").adv_pref == 0
    chord = objective_weights(LossConfig(objective="a_chord"), step=200)  # μ = peak = 0.5
    assert chord == ObjectiveWeights(0.5, 0.5, 0.0, 0.5 * lam)
    assert weights(objective="chord").adv_pref == 0


def test_policy_batch_validation_and_sequence_objectives():
    with pytest.raises(ValueError, match="row_kind"):
        PolicyBatch(logp=torch.zeros(2, 3), mask=torch.ones(2, 3), row_kind=torch.zeros(3))
    with pytest.raises(ValueError, match="advantages"):
        PolicyBatch(logp=torch.zeros(2, 3), mask=torch.ones(2, 3), row_kind=torch.zeros(2),
                    advantages=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="ref_logp"):
        PolicyBatch(logp=torch.zeros(2, 3), mask=torch.ones(2, 3), row_kind=torch.zeros(2),
                    ref_logp=torch.zeros(2, 4))
    batch = PolicyBatch(logp=torch.zeros(2, 3), mask=torch.ones(2, 3),
                        row_kind=torch.ones(2, dtype=torch.long))
    denoms = step_denominators([batch.mask], [batch.row_kind], T_MAX)
    with pytest.raises(ValueError, match="objective"):
        LossConfig(objective="dpo")  # DPO / KTO are the functions in losses.preference
    with pytest.raises(ValueError, match="advantages"):
        objective_loss(batch, denoms, LossConfig(objective="grpo"))
