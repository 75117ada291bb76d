"""LossConfig: paper defaults, validation naming the field, YAML-style loading, schedules."""

from __future__ import annotations

import dataclasses

import pytest

from uniapl_mcore.config import ConfigError, build_dataclass
from uniapl_mcore.losses import LossConfig, MuScheduleConfig


def test_paper_defaults():
    cfg = LossConfig()
    assert cfg.objective == "uniapl"
    assert cfg.lambda_adv == 1e-3
    assert (cfg.kl_coef, cfg.kl_estimator, cfg.kl_in_reward) == (1e-3, "k3", False)
    assert (cfg.clip_eps_low, cfg.clip_eps_high, cfg.dual_clip_c) == (0.2, 0.2, 3.0)
    assert cfg.loss_agg_mode == "token-mean" and cfg.norm_adv_by_std
    assert (cfg.adv_baseline, cfg.adv_injection, cfg.adv_reference) == \
        ("group_mean", "loss", "teacher")
    assert cfg.entropy_coef == 0.0 and cfg.alpha == 0.1


def test_objective_dependent_defaults():
    uniapl = LossConfig()
    assert uniapl.resolved_sft_weighting == "none" and uniapl.resolved_adv_on_sft_rows
    assert uniapl.resolved_mu_schedule is None and uniapl.alpha_at(500) == 0.1
    chord = LossConfig(objective="a_chord")
    assert chord.resolved_sft_weighting == "phi" and not chord.resolved_adv_on_sft_rows
    assert chord.resolved_mu_schedule == MuScheduleConfig(200, 400, 0.5, 0.02)
    assert LossConfig(objective="a_chord", adv_on_sft_rows=True).resolved_adv_on_sft_rows
    assert LossConfig(objective="chord", sft_weighting="none").resolved_sft_weighting == "none"
    assert LossConfig(kl_in_reward=True).kl_coef_in_loss == 0.0
    assert LossConfig(adv_injection="advantage").adversarial_on_sft_rollouts
    assert not LossConfig(adv_injection="reward_coef").adversarial_on_sft_rollouts
    assert not LossConfig(objective="a_grpo").adversarial_on_sft_rollouts  # no SFT rows


def test_reward_injections_refuse_the_sft_rollout_term():
    with pytest.raises(ConfigError, match=r"^adv_on_sft_rows: L_ADV\|SFT needs adv_injection"):
        LossConfig(adv_injection="reward_raw", adv_on_sft_rows=True)


def test_mu_schedule_values():
    mu = MuScheduleConfig(warmup_steps=200, decay_steps=400, peak=0.5, valley=0.02)
    assert mu.value(0) == 0.0
    assert mu.value(100) == pytest.approx(0.25)
    assert mu.value(200) == pytest.approx(0.5)
    assert mu.value(400) == pytest.approx(0.02 + 0.48 * 0.5)
    assert mu.value(600) == pytest.approx(0.02)
    assert mu.value(10_000) == pytest.approx(0.02)
    phi_preset = MuScheduleConfig(0, 0, 0.1, 0.1)  # CHORD-φ class default: constant
    assert phi_preset.value(0) == phi_preset.value(50) == 0.1
    mu_preset = MuScheduleConfig(0, 200, 0.9, 0.05)  # CHORD-μ
    assert mu_preset.value(0) == pytest.approx(0.9) and mu_preset.value(200) == 0.05


@pytest.mark.parametrize("overrides, field", [
    ({"objective": "ppo"}, "objective"),
    ({"loss_agg_mode": "sum"}, "loss_agg_mode"),
    ({"kl_estimator": "k4"}, "kl_estimator"),
    ({"alpha": 1.5}, "alpha"),
    ({"lambda_adv": -1.0}, "lambda_adv"),
    ({"clip_eps_low": 1.0}, "clip_eps_low"),
    ({"dual_clip_c": 1.0}, "dual_clip_c"),
    ({"max_response_tokens": 0}, "max_response_tokens"),
    ({"sft_weighting": "square"}, "sft_weighting"),
    ({"kl_in_reward": True, "kl_straight_through": True}, "kl_straight_through"),
    ({"mu_schedule": {"peak": 2.0}}, "mu_schedule.peak"),
    ({"adv_clip": "yes"}, "adv_clip"),
    ({"lambda_advv": 0.1}, "lambda_advv"),
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        build_dataclass(LossConfig, overrides, "loss")
    assert err.value.field_path == f"loss.{field}"


def test_build_from_mapping_round_trip():
    data = {"objective": "a_chord", "mu_schedule": {"warmup_steps": 0, "decay_steps": 200,
                                                    "peak": 0.9, "valley": 0.05},
            "dual_clip_c": None, "lambda_adv": "1e-2", "kl_coef": 0}
    cfg = build_dataclass(LossConfig, data)
    assert cfg.mu_schedule.peak == 0.9 and cfg.dual_clip_c is None
    assert cfg.lambda_adv == 0.01 and cfg.kl_coef == 0.0
    assert build_dataclass(LossConfig, dataclasses.asdict(cfg)) == cfg
