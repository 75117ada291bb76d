"""Rollout correction (§3.9): importance weights, mismatch metrics, and the objective's
gradient with rollout IS against a plain-PyTorch float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from uniapl_mcore.losses import LossConfig, RowKind, objective_loss, step_denominators
from uniapl_mcore.losses.config import RolloutISConfig
from uniapl_mcore.losses.rollout_correction import mismatch_metrics, rollout_is_weights

from .reference import agg, full_logprobs_entropy, ppo_token
from .test_objective import FOUR, ONE, T_MAX, make_global_batch, micro_batch

TOL = 1e-6


def _rollout_logp(batch, seed: int = 7) -> torch.Tensor:
    """π_rollout: π_old perturbed (a deliberate mismatch, some ratios above the cap)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch.old.shape, generator=gen, dtype=torch.float64) * 0.6
    return (batch.old.double() + noise).float()


def _reference_weights(old: torch.Tensor, roll: torch.Tensor, mask: torch.Tensor,
                       cfg: RolloutISConfig) -> torch.Tensor:
    """Row by row, token by token, float64."""
    out = torch.zeros(old.shape, dtype=torch.float64)
    for i in range(old.shape[0]):
        on = [t for t in range(old.shape[1]) if mask[i, t] > 0]
        seq = math.exp(sum(float(old[i, t]) - float(roll[i, t]) for t in on))
        for t in on:
            ratio = seq if cfg.level == "sequence" else math.exp(float(old[i, t])
                                                                 - float(roll[i, t]))
            out[i, t] = min(ratio, cfg.cap) if cfg.mode == "truncate" else float(ratio <= cfg.cap)
    return out


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_weights_match_reference(level, mode):
    batch, _ = make_global_batch(LossConfig())
    roll = _rollout_logp(batch)
    cfg = RolloutISConfig(level=level, mode=mode, cap=2.0)
    found = rollout_is_weights(batch.old, roll, batch.mask, cfg)
    expected = _reference_weights(batch.old, roll, batch.mask, cfg)
    assert (found.weights.double() - expected).abs().max() <= TOL * 2
    assert bool(found.capped.any()) and not bool(found.capped.all())
    assert not bool((found.capped & (batch.mask == 0)).any())
    if mode == "mask":
        assert set(found.weights.unique().tolist()) <= {0.0, 1.0}


def test_mismatch_metrics_values():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 0.0, 0.0]])
    roll = torch.tensor([[-1.5, -2.0, -0.3], [-0.7, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    summable, maxima = mismatch_metrics(old, roll, mask, tokens=4)
    deltas = [0.5, 0.0, -0.2, -0.3]
    assert float(summable["mismatch/abs_diff_mean"]) == pytest.approx(1.0 / 4, abs=1e-7)
    k3 = sum(math.exp(d) - 1 - d for d in deltas) / 4
    assert float(summable["mismatch/k3"]) == pytest.approx(k3, abs=1e-7)
    assert float(maxima["mismatch/abs_diff_max"]) == pytest.approx(0.5, abs=1e-7)


def _run(batch, weights, splits, cfg, roll):
    w = weights.clone().requires_grad_()
    denoms = step_denominators([batch.mask[torch.tensor(r)] for r in splits],
                               [batch.kind[torch.tensor(r)] for r in splits],
                               cfg.max_response_tokens)
    total, metrics = torch.zeros(()), {}
    for rows in splits:
        mb = micro_batch(batch, rows, w)
        if roll is not None:
            mb.rollout_logp = roll[torch.tensor(rows), :mb.mask.shape[1]]
        out = objective_loss(mb, denoms, cfg)
        out.loss.backward()
        total = total + out.loss.detach()
        for key, value in {**out.metrics, **out.maxima}.items():
            metrics.setdefault(key, []).append(float(value))
    return float(total), w.grad.clone(), metrics


def _reference(batch, weights, cfg, roll):
    """a_grpo / uniapl with the IS weight on the GRPO and adversarial policy-gradient tokens."""
    logp, _ = full_logprobs_entropy(batch.features.double() @ weights, batch.targets)
    mode, tm = cfg.loss_agg_mode, cfg.max_response_tokens
    old = batch.old.double()
    rollout_rows = ((batch.kind == int(RowKind.PREF)) | (batch.kind == int(RowKind.SFT_ROLLOUT)))
    w_is = _reference_weights(batch.old, roll, batch.mask * rollout_rows[:, None], cfg.rollout_is)

    def rows(kind):
        return batch.kind == int(kind)

    s, p, r = rows(RowKind.SFT), rows(RowKind.PREF), rows(RowKind.SFT_ROLLOUT)
    l_sft = agg(-logp[s], batch.mask[s], cfg.sft_agg_mode, tm)
    pg = ppo_token(logp[p], old[p], batch.adv[p], cfg.clip_eps_low, cfg.clip_eps_high,
                   cfg.dual_clip_c) * w_is[p]
    l_grpo = agg(pg, batch.mask[p], mode, tm)

    def l_adv(sel):
        loss = ppo_token(logp[sel], old[sel], batch.adv_adv[sel], cfg.clip_eps_low,
                         cfg.clip_eps_high, cfg.dual_clip_c) * w_is[sel]
        return agg(loss, batch.mask[sel], mode, tm)

    alpha, lam = cfg.alpha_at(0), cfg.lambda_adv
    return alpha * (l_sft + lam * l_adv(r)) + (1 - alpha) * (l_grpo + lam * l_adv(p))


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode", ["truncate", "mask"])
def test_objective_gradient_with_rollout_is_matches_reference(level, mode):
    cfg = LossConfig(objective="uniapl", alpha=0.3, lambda_adv=0.5, kl_coef=0.0,
                     adv_on_sft_rows=True, max_response_tokens=T_MAX,
                     rollout_is=RolloutISConfig(level=level, mode=mode, cap=2.0))
    batch, weights = make_global_batch(cfg, seed=3)
    roll = _rollout_logp(batch)
    w = weights.clone().double().requires_grad_()
    ref_loss = _reference(batch, w, cfg, roll)
    (ref_grad,) = torch.autograd.grad(ref_loss, w)
    for splits in (ONE, FOUR):
        loss, grad, metrics = _run(batch, weights, splits, cfg, roll)
        assert abs(loss - float(ref_loss.detach())) <= TOL * max(1.0, abs(float(ref_loss.detach())))
        assert (grad.double() - ref_grad).abs().max() <= TOL
        assert 0 < sum(metrics["rollout_is/capped_frac"]) < 1
        assert sum(metrics["rollout_is/weight_mean"]) > 0


def test_level_none_is_bitwise_todays_loss():
    """Attaching the engine's log-probs with rollout IS off changes no bit of the loss or the
    gradient; it only adds the ``mismatch/`` metrics."""
    cfg = LossConfig(objective="uniapl", alpha=0.3, lambda_adv=0.5, kl_coef=0.05,
                     max_response_tokens=T_MAX)
    batch, weights = make_global_batch(cfg, seed=4)
    roll = _rollout_logp(batch)
    loss0, grad0, m0 = _run(batch, weights, FOUR, cfg, None)
    loss1, grad1, m1 = _run(batch, weights, FOUR, cfg, roll)
    assert loss0 == loss1 and torch.equal(grad0, grad1)
    assert set(m1) - set(m0) == {"mismatch/abs_diff_mean", "mismatch/k3",
                                 "mismatch/abs_diff_max"}
    assert sum(m1["mismatch/abs_diff_mean"]) > 0.1


def test_rollout_is_needs_rollout_logprobs():
    cfg = LossConfig(objective="a_grpo", rollout_is=RolloutISConfig(level="token"),
                     max_response_tokens=T_MAX)
    batch, weights = make_global_batch(cfg)
    with pytest.raises(ValueError, match="rollout_logp"):
        _run(batch, weights, ONE, cfg, None)


def test_config_refuses_bad_values():
    from uniapl_mcore.config import ConfigError

    for bad in ({"level": "seq"}, {"mode": "clip"}, {"cap": 0.5}):
        with pytest.raises(ConfigError):
            RolloutISConfig(**bad)
