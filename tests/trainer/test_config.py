"""The UniAPL run config: settings the trainer does not honour are refused at load, in one
line naming the field; YAML spellings that mean a valid value are accepted."""

from __future__ import annotations

import pytest

from uniapl_mcore.config import ConfigError, load_config
from uniapl_mcore.megatron.config import check_layout
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig
from uniapl_mcore.trainer.config import UniaplConfig


def _load(overrides: list[str]) -> UniaplConfig:
    return load_config(None, overrides, cls=UniaplConfig)


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        _load(overrides)
    text = str(info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(("spelling", "expected"), [
    ("off", "off"), ("on", "on"), ("'off'", "off"), ("auto", "auto"), ("yes", "on"),
    ("no", "off")])
def test_progress_bar_accepts_yaml_booleans(tmp_path, spelling, expected):
    path = tmp_path / "run.yaml"
    path.write_text(f"logging:\n  progress_bar: {spelling}\n")
    assert load_config(path, cls=UniaplConfig).logging.progress_bar == expected
    assert _load([f"logging.progress_bar={spelling}"]).logging.progress_bar == expected


def test_progress_bar_still_refuses_other_values():
    assert _error(["logging.progress_bar=sometimes"]) == (
        "logging.progress_bar: must be one of 'auto', 'on', 'off'; got 'sometimes'")
    assert _error(["logging.progress_bar=1"]) == (
        "logging.progress_bar: must be one of 'auto', 'on', 'off'; got 1")


def test_data_packing_is_gone():
    """The trainer packs rows by ``data.micro_batch_tokens`` itself; the old ``data.packing``
    switch (thd / mask) changed nothing and is refused, saying so."""
    assert _error(["data.packing=mask"]) == (
        "data.packing: removed: the trainer packs each step's rows into micro-batches of at "
        "most data.micro_batch_tokens padded tokens itself; delete the key")


TRAINER_OBJECTIVES = "'sft', 'grpo', 'a_sft', 'a_grpo', 'uniapl', 'chord', 'a_chord'"


@pytest.mark.parametrize("name", ["dpo", "kto"])
def test_offline_objectives_are_refused_with_the_reason(name):
    expected = (f"loss.objective: '{name}' is not available: DPO / KTO learn from offline "
                "preference pairs, which the online trainer does not load (their losses are "
                "functions in uniapl_mcore.losses.preference); use one of " + TRAINER_OBJECTIVES)
    assert _error([f"loss.objective={name}"]) == expected
    assert _error([f"stages=[{{objective: {name}, steps: 1}}]"]) == \
        expected.replace("loss.objective", "stages[0].objective")


def test_valid_objective_lists_name_no_offline_objective():
    assert _error(["loss.objective=ppo"]) == \
        f"loss.objective: must be one of {TRAINER_OBJECTIVES}; got 'ppo'"
    assert _error(["stages=[{objective: ppo, steps: 1}]"]) == \
        f"stages[0].objective: must be one of {TRAINER_OBJECTIVES}; got 'ppo'"


@pytest.mark.parametrize("key", ["dpo_beta", "kto_beta", "kto_lambda_d", "kto_lambda_u"])
def test_offline_objective_settings_are_refused(key):
    assert _error([f"loss.{key}=0.2"]) == (
        f"loss.{key}: removed: DPO / KTO are not objectives of the online trainer "
        "(uniapl_mcore.losses.preference takes β and λ as arguments); delete the key")


@pytest.mark.parametrize("injection", ["reward_raw", "reward_coef", "advantage"])
def test_adv_injection_without_an_adversarial_objective_is_refused(injection):
    usable = "a_grpo, uniapl, a_chord" if injection != "advantage" else \
        "a_sft, a_grpo, uniapl, a_chord"
    assert _error(["loss.objective=grpo", f"loss.adv_injection={injection}"]) == (
        f"loss.adv_injection: '{injection}' needs an adversarial objective ({usable}); with "
        "grpo no discriminator runs and it would change nothing")
    staged = "stages=[{objective: sft, steps: 1}, {objective: chord, steps: 1}]"
    assert "with sft, chord no discriminator runs" in _error(
        [staged, f"loss.adv_injection={injection}"])
    # one adversarial stage of a pipeline is enough: it uses the setting
    _load(["stages=[{objective: sft, steps: 1}, {objective: a_grpo, steps: 1}]",
           f"loss.adv_injection={injection}"])


@pytest.mark.parametrize("injection", ["reward_raw", "reward_coef"])
def test_reward_injections_refuse_a_sft(injection):
    assert _error(["loss.objective=a_sft", f"loss.adv_injection={injection}"]) == (
        f"loss.adv_injection: '{injection}' adds the discriminator signal to verifiable "
        "rewards, which a_sft (no rewarded rollouts) does not have; use 'loss' or 'advantage'")


def test_reward_injections_refuse_the_sft_rollout_term():
    assert _error(["loss.objective=uniapl", "loss.adv_injection=reward_coef",
                   "loss.adv_on_sft_rows=true"]) == (
        "loss.adv_on_sft_rows: L_ADV|SFT needs adv_injection 'loss' or 'advantage': "
        "'reward_coef' adds the discriminator signal to verifiable rewards, which student "
        "rollouts of SFT prompts do not have")
    # left unset, uniapl's default turns the term off under a reward injection
    cfg = _load(["loss.objective=uniapl", "loss.adv_injection=reward_coef",
                 "loss.adv_on_sft_rows=null"])
    (stage,) = cfg.resolved_stages()
    assert stage.needs_discriminator and not stage.needs_sft_rollouts


@pytest.mark.parametrize("objective", ["a_sft", "uniapl"])
def test_advantage_injection_keeps_the_sft_rollout_term(objective):
    """Under ``advantage`` the SFT-prompt rollouts (no GRPO advantage to add to) keep their
    separate L_ADV|SFT term: the trainer rolls them out, as under ``loss``."""
    for injection in ("loss", "advantage"):
        cfg = _load([f"loss.objective={objective}", f"loss.adv_injection={injection}",
                     "loss.adv_on_sft_rows=true"])
        (stage,) = cfg.resolved_stages()
        assert stage.needs_sft_rollouts and stage.needs_discriminator
        assert cfg.any_rl


@pytest.mark.parametrize("section", ["parallel", "discriminator.parallel"])
def test_context_parallelism_is_refused(section):
    assert _error([f"{section}.context_parallel_size=2"]) == (
        f"{section}.context_parallel_size: 2: the trainer does not split sequences over "
        "context-parallel ranks (each would compute every token); use 1")


def test_discriminator_expert_parallelism_is_refused():
    assert _error(["discriminator.parallel.expert_parallel_size=2"]) == (
        "discriminator.parallel.expert_parallel_size: 2: the discriminator runs one TP × PP "
        "replica; use 1")


def test_context_parallelism_stays_a_megatron_layout():
    """The Megatron layer (parity tools, layouts) still takes CP > 1; only the trainer
    refuses it."""
    parallel = ParallelConfig(context_parallel_size=2)
    check_layout(ModelConfig(), parallel)
    assert parallel.model_parallel_size == 2


@pytest.mark.parametrize(("override", "expected"), [
    ("rollout.weight_sync.transport=nccl",
     "rollout.weight_sync.transport: 'nccl' is not available: use 'direct': stage leaders "
     "broadcast to the engine workers over NCCL when the model is on CUDA (gloo on CPU)"),
    ("rollout.weight_sync.bucket_bytes=5",
     "rollout.weight_sync.bucket_bytes: must be >= 1 MiB, got 5"),
    ("rollout.vllm.max_model_len=-1", "rollout.vllm.max_model_len: must be > 0, got -1"),
    ("rollout.sampling.max_new_tokens=0", "rollout.sampling.max_new_tokens: must be >= 1, got 0"),
])
def test_rollout_subsection_errors_name_the_field_once(override, expected):
    """The rollout sub-sections name fields relative to ``rollout``; loaded, the path is not
    doubled (it read ``rollout.weight_sync.weight_sync.transport``)."""
    assert _error([override]) == expected


def test_rollout_sampling_seed_is_refused():
    """Requests are seeded from (train.seed, step, row); a section-wide seed did nothing."""
    assert _error(["rollout.sampling.seed=3"]) == (
        "rollout.sampling.seed: removed: rollouts are seeded per request (the trainer from "
        "train.seed, the step and the row; generate_teacher from --seed and the row id); "
        "delete the key")


def test_direct_weight_sync_keeps_no_copy():
    """``direct`` keeps nothing to re-sync a restarted engine from: asking for it is refused,
    and the default resolves per transport."""
    assert _error(["rollout.weight_sync.transport=direct",
                   "rollout.weight_sync.keep_weights_for_restart=true"]).startswith(
        "rollout.weight_sync.keep_weights_for_restart: 'direct' keeps no copy")
    assert not _load(["rollout.weight_sync.transport=direct"]).rollout.weight_sync.keeps_weights
    assert _load([]).rollout.weight_sync.keeps_weights
