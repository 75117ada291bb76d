"""Config system: YAML + dotted overrides, strict types, one clear line per bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests._megatron_config import MegatronRun, load_run
from uniapl_mcore.config import ConfigError, parse_override


def test_defaults_and_overrides_parse_types():
    cfg = load_run(None, ["model.num_layers=4", "optimizer.lr=3e-4", "optimizer.clip_grad=1",
                             "parallel.sequence_parallel=false", "optimizer.lr_decay_steps=null"])
    assert isinstance(cfg, MegatronRun)
    assert cfg.model.num_layers == 4
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert isinstance(cfg.optimizer.clip_grad, float)
    assert cfg.optimizer.lr_decay_steps is None


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  hidden_size: 32\n  head_dim: 8\ntrain:\n  max_steps: 7\n")
    cfg = load_run(path, ["train.max_steps=9"])
    assert (cfg.model.hidden_size, cfg.model.head_dim, cfg.train.max_steps) == (32, 8, 9)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["train.max_step=3"], "train.max_step: unknown key (did you mean 'train.max_steps'?)"),
    (["modle.num_layers=3"], "modle: unknown key (did you mean 'model'?)"),
    (["train.max_steps=three"], "train.max_steps: expected int, got str 'three'"),
    (["train.max_steps=2.5"], "train.max_steps: expected int, got float 2.5"),
    (["parallel.sequence_parallel=1"], "parallel.sequence_parallel: expected true/false, got 1"),
    (["optimizer.lr_decay_style=exp"],
     "optimizer.lr_decay_style: must be one of 'constant', 'linear', 'cosine'; got 'exp'"),
    (["parallel.tensor_parallel_size=3"],
     "parallel.tensor_parallel_size: 3 does not divide model.num_attention_heads=4"),
    (["model.num_query_groups=3"], "model.num_query_groups: 3 must divide num_attention_heads=4"),
    (["optimizer.lr=-1"], "optimizer.lr: must be > 0, got -1.0"),
    (["model=3"], "model: expected a section (mapping), got 3"),
    (["train.max_steps.x=1"], "train.max_steps: expected int, got dict {'x': 1}"),
    (["train.max_steps=3", "train.max_steps.x=1"], "train.max_steps: is a value, not a section"),
    (["noequals"], "override 'noequals' is not of the form key.sub=value"),
])
def test_bad_values_fail_with_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_run(None, overrides)
    assert str(info.value) == expected
    assert "\n" not in str(info.value)


def test_world_size_not_divisible_by_model_parallel():
    cfg = load_run(None, ["parallel.tensor_parallel_size=2",
                             "parallel.pipeline_parallel_size=2"])
    with pytest.raises(ConfigError) as info:
        cfg.check_world_size(6)
    assert str(info.value) == ("parallel: world size 6 is not divisible by tensor_parallel_size × "
                               "pipeline_parallel_size × context_parallel_size = 4")
    cfg.check_world_size(8)


def test_lm_path_batch_fields_are_refused():
    """The trainer sizes steps by prompts and token budgets: the old LM-path fields are
    unknown keys, not silently ignored ones."""
    for key in ("train.global_batch_size=8", "train.seq_length=512",
                "train.log_interval_steps=1"):
        with pytest.raises(ConfigError, match=rf"^{key.split('=')[0]}: unknown key"):
            load_run(None, [key])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line \d+: invalid YAML"):
        load_run(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  max_step: 8\n")
    with pytest.raises(ConfigError) as info:
        load_run(typo)
    assert str(info.value).startswith("train.max_step: unknown key (did you mean "
                                      "'train.max_steps'?)")
    assert "typo.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_run(tmp_path / "missing.yaml")


def test_override_values_are_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=") == ("a", "")
    assert parse_override("a=x=y") == ("a", "x=y")


@pytest.mark.parametrize(("args", "expected"), [
    (["train.max_step=3"],
     "uniapl train: config error: train.max_step: unknown key (did you mean 'train.max_steps'?)"),
    (["parallel.tensor_parallel_size=3"], "uniapl train: config error: "
     "parallel.tensor_parallel_size: 3 does not divide model.num_attention_heads=4"),
    (["--nproc-per-node", "3", "parallel.tensor_parallel_size=2"], "uniapl train: config error: "
     "parallel: world size 3 is not divisible by tensor_parallel_size × pipeline_parallel_size "
     "× context_parallel_size = 2"),
    (["loss.objective=dpo"], "uniapl train: config error: loss.objective: 'dpo' is not "
     "available: DPO / KTO learn from offline preference pairs, which the online trainer does "
     "not load (their losses are functions in uniapl_mcore.losses.preference); use one of "
     "'sft', 'grpo', 'a_sft', 'a_grpo', 'uniapl', 'chord', 'a_chord'"),
])
def test_cli_reports_bad_config_in_one_line_before_starting(args, expected, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "uniapl_mcore.cli", "train", "--run-dir",
                           str(tmp_path / "run"), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == expected
    assert not (tmp_path / "run").exists()
