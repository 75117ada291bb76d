"""GPU fast-path switches on CPU: FP8 / recomputation / overlapped-DDP config validation,
what they map to in Megatron's TransformerConfig and DDP config, and training steps with
recomputation and overlapped gradient reduce / param gather that match the plain ones."""

from __future__ import annotations

import pytest
import torch

from tests._megatron_config import load_run
from uniapl_mcore.config import ConfigError, load_config
from uniapl_mcore.megatron.model import ddp_config
from uniapl_mcore.models import gpt
from uniapl_mcore.models.gpt import transformer_config
from uniapl_mcore.testing import run_distributed
from uniapl_mcore.trainer.config import UniaplConfig

from ._fast_path_bodies import train_variants

TE_BF16 = ["model.transformer_impl=transformer_engine", "model.params_dtype=bfloat16"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only errors")

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.fp8.recipe=delayed"],
     "model.fp8.recipe: 'delayed' runs in Transformer Engine layers: set transformer_impl to "
     "'transformer_engine' (got 'auto')"),
    (["model.fp8.recipe=tensorwise", "model.transformer_impl=transformer_engine"],
     "model.fp8.recipe: FP8 training runs on top of bf16 mixed precision: set params_dtype to "
     "'bfloat16' (got 'float32')"),
    (["model.fp8.recipe=nvfp4"],
     "model.fp8.recipe: must be one of 'none', 'delayed', 'tensorwise', 'blockwise', "
     "'mxfp8'; got 'nvfp4'"),
    (["model.fp8.format=e5m2"], "model.fp8.format: must be one of 'e4m3', 'hybrid'; got 'e5m2'"),
    (["model.fp8.param=true"], "model.fp8.param: needs an FP8 recipe (recipe is 'none')"),
    (["model.fp8.amax_history_len=0"], "model.fp8.amax_history_len: must be >= 1, got 0"),
    (["model.fp8.recipe=blockwise", "model.fp8.param=true",
      "optimizer.use_distributed_optimizer=false", *TE_BF16],
     "model.fp8.param: FP8 weights are all-gathered by the distributed optimizer: set "
     "optimizer.use_distributed_optimizer"),
    (["model.fp8.recipee=delayed"],
     "model.fp8.recipee: unknown key (did you mean 'model.fp8.recipe'?)"),
    (["model.recompute.granularity=partial"],
     "model.recompute.granularity: must be one of 'none', 'selective', 'full'; got 'partial'"),
    (["model.recompute.method=random"],
     "model.recompute.method: must be one of 'uniform', 'block'; got 'random'"),
    (["model.recompute.num_layers=0"], "model.recompute.num_layers: must be >= 1, got 0"),
    (["model.recompute.modules=[attention]"],
     "model.recompute.modules: unknown module(s) 'attention'; choose from 'core_attn', 'mlp', "
     "'moe', 'moe_act', 'layernorm'"),
    (["model.recompute.granularity=selective", "model.recompute.modules=[]"],
     "model.recompute.modules: selective recomputation needs at least one module"),
    (["model.recompute.granularity=selective", "model.recompute.modules=[layernorm]",
      "model.transformer_impl=local"],
     "model.recompute.modules: layernorm recomputation needs Transformer Engine layers "
     "(transformer_impl is 'local')"),
    (["model.recompute.granularity=selective", "model.recompute.modules=[moe]"],
     "model.recompute.modules: moe applies to mixture-of-experts models (num_experts is 0)"),
    (["model.recompute.granularity=selective", "model.recompute.modules=[mlp]",
      "model.num_experts=4", "model.moe_ffn_hidden_size=32"],
     "model.recompute.modules: 'mlp' is the dense MLP; this model's MLP is a mixture of "
     "experts: use 'moe'"),
    (["model.recompute.granularity=full", "model.recompute.num_layers=2",
      "parallel.pipeline_parallel_size=2"],
     "model.recompute.num_layers: 2 exceeds the 1 layers per pipeline stage"),
    (["parallel.overlap_param_gather=true"],
     "parallel.overlap_param_gather: needs overlap_grad_reduce (Megatron overlaps the gather "
     "only together with the gradient reduce)"),
    (["parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true",
      "optimizer.use_distributed_optimizer=false"],
     "parallel.overlap_param_gather: needs optimizer.use_distributed_optimizer (the gather is "
     "the distributed optimizer's)"),
    (["parallel.ddp_bucket_size=0"], "parallel.ddp_bucket_size: must be > 0 when set, got 0"),
    (["parallel.overlap_grad_reduce=maybe"],
     "parallel.overlap_grad_reduce: expected true/false, got 'maybe'"),
])
def test_bad_fast_path_values_fail_with_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_run(None, overrides)
    assert str(info.value) == expected
    assert "\n" not in str(info.value)


def test_fast_path_is_off_by_default_and_sections_merge_partially(tmp_path):
    cfg = load_run(None)
    assert (cfg.model.fp8.recipe, cfg.model.recompute.granularity) == ("none", "none")
    assert not (cfg.parallel.overlap_grad_reduce or cfg.parallel.overlap_param_gather)
    path = tmp_path / "gpu.yaml"
    path.write_text("model:\n  transformer_impl: transformer_engine\n  params_dtype: bfloat16\n"
                    "  fp8: {recipe: delayed}\n  recompute: {granularity: full, num_layers: 2}\n"
                    "parallel: {overlap_grad_reduce: true, overlap_param_gather: true}\n")
    cfg = load_run(path, ["model.fp8.format=e4m3"])
    assert (cfg.model.fp8.recipe, cfg.model.fp8.format) == ("delayed", "e4m3")
    assert cfg.model.fp8.amax_history_len == 1024  # untouched keys keep their defaults
    assert (cfg.model.recompute.method, cfg.model.recompute.num_layers) == ("uniform", 2)


def test_trainer_refuses_deferred_param_gather():
    overrides = ["parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true"]
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, cls=UniaplConfig)
    assert str(info.value).startswith("parallel.overlap_param_gather: not supported by the "
                                      "online trainer")
    cfg = load_config(None, ["parallel.overlap_grad_reduce=true"], cls=UniaplConfig)
    assert cfg.parallel.overlap_grad_reduce


def test_trainer_pads_fp8_micro_batches_to_16_tokens():
    fp8 = [*TE_BF16, "model.fp8.recipe=tensorwise"]
    with pytest.raises(ConfigError) as info:
        load_config(None, fp8, cls=UniaplConfig)
    assert str(info.value) == ("data.pad_to_multiple_of: FP8 GEMMs need token counts in "
                               "multiples of 16: set 16 (got 1)")
    cfg = load_config(None, [*fp8, "data.pad_to_multiple_of=16"], cls=UniaplConfig)
    assert cfg.model.fp8.recipe == "tensorwise"


# --------------------------------------------------------------------------- Megatron configs


@pytest.mark.parametrize(("overrides", "fields"), [
    ([], {"recompute_granularity": None, "recompute_method": None, "recompute_num_layers": None,
          "fp8": None}),
    (["model.recompute.granularity=full"],
     {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}),
    (["model.recompute.granularity=full", "model.recompute.method=block",
      "model.recompute.num_layers=2"],
     {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 2}),
    (["model.recompute.granularity=selective", "model.recompute.modules=[core_attn,mlp]"],
     {"recompute_granularity": "selective", "recompute_method": None,
      "recompute_num_layers": None, "recompute_modules": ["core_attn", "mlp"]}),
])
def test_transformer_config_carries_recompute(overrides, fields):
    cfg = load_run(None, overrides)
    tc = transformer_config(cfg.model, cfg.parallel)
    for name, value in fields.items():
        assert getattr(tc, name) == value, name


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise", "mxfp8"])
def test_transformer_config_carries_fp8(monkeypatch, recipe):
    """The mapping itself (Transformer Engine pretended present; fused kernels left off)."""
    monkeypatch.setattr(gpt, "te_available", lambda: True)
    monkeypatch.setattr(gpt, "fp8_support", lambda name: (True, ""))
    cfg = load_run(None, [*TE_BF16, f"model.fp8.recipe={recipe}", "model.fp8.margin=1",
                             "model.fp8.amax_history_len=16",
                             "model.fp8.amax_compute_algo=most_recent"])
    tc = transformer_config(cfg.model, cfg.parallel, apply_rope_fusion=False,
                            bias_activation_fusion=False, bias_dropout_fusion=False)
    assert (tc.fp8, tc.fp8_recipe, tc.fp8_margin) == ("hybrid", recipe, 1)
    assert (tc.fp8_amax_history_len, tc.fp8_amax_compute_algo) == (16, "most_recent")
    assert (tc.fp8_param, tc.bf16, tc.params_dtype) == (False, True, torch.bfloat16)


def test_unsupported_fp8_recipe_is_a_clear_runtime_error(monkeypatch):
    monkeypatch.setattr(gpt, "te_available", lambda: True)
    monkeypatch.setattr(gpt, "fp8_support", lambda name: (False, "needs a Blackwell GPU"))
    cfg = load_run(None, [*TE_BF16, "model.fp8.recipe=mxfp8"])
    with pytest.raises(RuntimeError, match="^model.fp8.recipe=mxfp8 cannot run here: needs a "
                                           "Blackwell GPU$"):
        transformer_config(cfg.model, cfg.parallel)


@NO_CUDA
def test_fp8_without_transformer_engine_is_a_clear_runtime_error():
    cfg = load_run(None, [*TE_BF16, "model.fp8.recipe=delayed"])
    with pytest.raises(RuntimeError, match="^model.fp8.recipe=delayed cannot run here: "
                                           "Transformer Engine \\(with CUDA\\) is not available"):
        gpt._fast_path_kwargs(cfg.model)
    assert gpt.fp8_support("tensorwise")[0] is False


@NO_CUDA
def test_te_only_recompute_module_without_transformer_engine():
    cfg = load_run(None, ["model.recompute.granularity=selective",
                             "model.recompute.modules=[core_attn,layernorm]"])
    with pytest.raises(ConfigError) as info:
        transformer_config(cfg.model, cfg.parallel)
    assert str(info.value) == ("model.recompute.modules: layernorm recomputation needs "
                               "Transformer Engine layers, which are not available here")


def test_ddp_config_carries_overlap_settings():
    cfg = load_run(None, ["parallel.overlap_grad_reduce=true",
                             "parallel.overlap_param_gather=true",
                             "parallel.ddp_bucket_size=1000000"])
    ddp = ddp_config(cfg.model, cfg.parallel, cfg.optimizer)
    assert (ddp.overlap_grad_reduce, ddp.overlap_param_gather, ddp.bucket_size) == \
        (True, True, 1_000_000)
    assert ddp.use_distributed_optimizer and ddp.grad_reduce_in_fp32
    assert not ddp.align_param_gather and not ddp.fp8_param_gather
    plain = ddp_config(*(lambda c: (c.model, c.parallel, c.optimizer))(load_run(None)))
    assert not (plain.overlap_grad_reduce or plain.overlap_param_gather)
    assert plain.bucket_size is None


# --------------------------------------------------------------------------- training on CPU

RTOL = 1e-6


def _assert_same_steps(got, ref):
    assert len(got) == len(ref) == 3
    for (loss, norm), (ref_loss, ref_norm) in zip(got, ref, strict=True):
        assert loss == pytest.approx(ref_loss, rel=RTOL)
        assert norm == pytest.approx(ref_norm, rel=RTOL)


@pytest.mark.slow
def test_recomputation_matches_and_keeps_fewer_activations():
    moe = ["model.num_experts=4", "model.moe_ffn_hidden_size=32"]
    dense = {
        "none": [],
        "full-uniform": ["model.recompute.granularity=full"],
        "full-block": ["model.recompute.granularity=full", "model.recompute.method=block",
                       "model.recompute.num_layers=1"],
        "selective": ["model.recompute.granularity=selective",
                      "model.recompute.modules=[core_attn,mlp]"],
    }
    experts = {
        "moe-none": moe,
        "moe-full": [*moe, "model.recompute.granularity=full"],
        "moe-selective": [*moe, "model.recompute.granularity=selective",
                          "model.recompute.modules=[moe]"],
    }
    (out,) = run_distributed(train_variants, 1, args=({**dense, **experts}, True),
                             timeout_s=300)
    for group, ref in ((dense, out["none"]), (experts, out["moe-none"])):
        assert len({round(loss, 6) for loss, _ in ref["steps"]}) == 3  # the weights moved
        for name in group:
            _assert_same_steps(out[name]["steps"], ref["steps"])
            assert out[name]["weights"] == pytest.approx(ref["weights"], rel=RTOL)
    saved = {name: out[name]["saved_bytes"] for name in out}
    # 2 layers: full keeps each layer's input only; block recomputes 1 of the 2 layers;
    # selective drops the attention core's and the MLP's (or the MoE block's) internals
    assert saved["full-uniform"] < saved["full-block"] < saved["none"]
    assert saved["selective"] < saved["none"]
    assert saved["moe-full"] < saved["moe-selective"] < saved["moe-none"]


@pytest.mark.slow
def test_overlapped_grad_reduce_and_param_gather_match_on_gloo():
    """DP=2 and PP=2 on two gloo processes: Megatron's bucketed asynchronous reduce (small
    buckets: several per step) and the deferred all-gather give the plain run's steps at the
    same layout (each layout draws its own initial weights)."""
    small = "parallel.ddp_bucket_size=20000"
    variants = {
        "dp2": [],
        "dp2-overlap": ["parallel.overlap_grad_reduce=true", small],
        "dp2-overlap-gather": ["parallel.overlap_grad_reduce=true",
                               "parallel.overlap_param_gather=true", small],
        "dp2-overlap-allreduce": ["parallel.overlap_grad_reduce=true", small,
                                  "optimizer.use_distributed_optimizer=false"],
        "pp2": ["parallel.pipeline_parallel_size=2"],
        "pp2-overlap": ["parallel.pipeline_parallel_size=2", "parallel.overlap_grad_reduce=true",
                        small],
    }
    results = run_distributed(train_variants, 2, args=(variants,), timeout_s=600)
    for out in results:
        assert not out["dp2"]["grad_sync"] and out["dp2-overlap"]["grad_sync"]
        assert out["dp2"]["buckets"] == 1 and out["dp2-overlap"]["buckets"] > 1
        for name in ("dp2-overlap", "dp2-overlap-gather", "dp2-overlap-allreduce"):
            _assert_same_steps(out[name]["steps"], out["dp2"]["steps"])
            assert out[name]["weights"] == pytest.approx(out["dp2"]["weights"], rel=RTOL)
        _assert_same_steps(out["pp2-overlap"]["steps"], out["pp2"]["steps"])
        assert out["pp2-overlap"]["weights"] == pytest.approx(out["pp2"]["weights"], rel=RTOL)


def test_dry_run_counts_recomputed_activations():
    from dataclasses import replace

    from uniapl_mcore.models.config import ModelConfig, RecomputeConfig
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.trainer.plan import activation_bytes_per_token, kept_activation_bytes

    model, par = ModelConfig(params_dtype="bfloat16"), ParallelConfig()  # 2 layers, H = 64
    per_layer = activation_bytes_per_token(model, par)
    tokens, layers, in_flight = 100, 2, 3
    assert kept_activation_bytes(model, par, tokens, layers, in_flight) == \
        per_layer * tokens * layers * in_flight
    full = replace(model, recompute=RecomputeConfig(granularity="full"))
    layer_input = 2 * 64  # bf16 hidden state per token
    # every layer keeps its input per micro-batch in flight, plus one recomputed layer
    assert kept_activation_bytes(full, par, tokens, layers, in_flight) == \
        tokens * (layer_input * layers * in_flight + per_layer)
    block = replace(model, recompute=RecomputeConfig(granularity="full", method="block"))
    assert kept_activation_bytes(block, par, tokens, layers, in_flight) == \
        tokens * ((layer_input + per_layer) * in_flight + per_layer)
    mlp = replace(model, recompute=RecomputeConfig(granularity="selective", modules=["mlp"]))
    assert kept_activation_bytes(mlp, par, tokens, layers, in_flight) == \
        (per_layer - 2 * 3 * model.ffn_hidden_size) * tokens * layers * in_flight
    attn = replace(model, recompute=RecomputeConfig(granularity="selective"))  # core_attn
    assert kept_activation_bytes(attn, par, tokens, layers, in_flight) == \
        per_layer * tokens * layers * in_flight  # flash attention keeps no s² term anyway
