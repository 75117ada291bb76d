"""The dry run: exact parameter counts (against real Megatron models and published sizes),
the example configs, the memory estimate of the scale configs and layout errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from uniapl_mcore.config import ConfigError, load_config
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig
from uniapl_mcore.testing import run_distributed
from uniapl_mcore.trainer.config import UniaplConfig
from uniapl_mcore.trainer.plan import (
    count_parameters,
    dry_run,
    estimate_memory,
    layer_parameters,
    plan_layout,
    stage_parameters,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCALE_CONFIGS = {  # example → trainer GPUs it is written for
    "qwen3_0p6b_8gpu.yaml": 8,
    "qwen3_4b_8gpu.yaml": 8,
    "qwen3_0p6b_sft_then_a_grpo.yaml": 8,
    "qwen3_235b_a22b_multinode.yaml": 128,
}

#: Tiny architectures covering every counted component (kwargs of ModelConfig).
TINY_MODELS = [
    {"head_dim": 24, "qkv_bias": True},  # untied, head_dim ≠ hidden / heads, QKV bias
    {"tie_word_embeddings": True, "vocab_size": 130, "make_vocab_size_divisible_by": 8},
    {"num_experts": 4, "moe_router_topk": 2, "moe_ffn_hidden_size": 48},  # MoE, untied
    {"qk_norm": False, "value_head": True, "num_query_groups": 4},  # reward model
]


def _megatron_counts(models: list[dict], layouts: list[dict]) -> list[list[int]]:
    """For each parallel layout: the parameters of this rank's stage of each model as
    Megatron builds it (one process group; Megatron's parallel state rebuilt per layout)."""
    import torch.distributed as dist

    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.runtime.dist_env import DistEnv
    from uniapl_mcore.runtime.parallel import init_parallel

    env = DistEnv.from_environ()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    out = []
    for parallel in layouts:
        par = ParallelConfig(**parallel)
        layout = init_parallel(par, 1234)  # reuses the group; destroy() leaves it alone
        try:
            counts = []
            for kwargs in models:
                model = ModelConfig(**kwargs)
                if par.expert_parallel_size > 1 and not model.num_experts:
                    counts.append(None)  # Megatron refuses EP for a dense model
                    continue
                gpt = build_gpt_model(model, transformer_config(model, par),
                                      pre_process=layout.is_first_stage,
                                      post_process=layout.is_last_stage)
                counts.append(sum(p.numel() for p in gpt.parameters()))
            out.append(counts)
        finally:
            layout.destroy()
    return out


def _load_example(path: Path) -> UniaplConfig:
    return load_config(path, cls=UniaplConfig)


# --------------------------------------------------------------------------- parameters


LAYOUTS = [{}, {"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2},
           {"expert_parallel_size": 2}]


@pytest.mark.slow  # two processes building Megatron models: ~30 s on 2 CPU cores
def test_counts_equal_real_megatron_models():
    """Whole models (TP = PP = EP = 1) and every rank's share under TP 2, PP 2 and EP 2."""
    results = run_distributed(_megatron_counts, 2, args=(TINY_MODELS, LAYOUTS))
    for rank, per_layout in enumerate(results):
        for parallel, counts in zip(LAYOUTS, per_layout, strict=True):
            par = ParallelConfig(**parallel)
            stage = rank if par.pipeline_parallel_size > 1 else 0
            expected = [stage_parameters(ModelConfig(**kw), par, stage).total
                        if par.expert_parallel_size == 1 or kw.get("num_experts") else None
                        for kw in TINY_MODELS]
            assert counts == expected, (rank, parallel)
    whole = [count_parameters(ModelConfig(**kw)).total for kw in TINY_MODELS]
    assert results[0][0] == whole


def _qwen3(**kw) -> ModelConfig:
    return ModelConfig(head_dim=128, vocab_size=151936, max_position_embeddings=40960, **kw)


@pytest.mark.parametrize("model, total, non_embedding, active", [
    (_qwen3(num_layers=28, hidden_size=1024, ffn_hidden_size=3072, num_attention_heads=16,
            num_query_groups=8, tie_word_embeddings=True), 0.60e9, 0.44e9, None),
    (_qwen3(num_layers=36, hidden_size=2560, ffn_hidden_size=9728, num_attention_heads=32,
            num_query_groups=8, tie_word_embeddings=True), 4.02e9, 3.6e9, None),
    (_qwen3(num_layers=94, hidden_size=4096, ffn_hidden_size=1536, num_attention_heads=64,
            num_query_groups=4, num_experts=128, moe_router_topk=8, moe_ffn_hidden_size=1536),
     235e9, None, 22e9),
])
def test_published_sizes(model, total, non_embedding, active):
    counts = count_parameters(model)
    assert counts.total == pytest.approx(total, rel=0.02)
    if non_embedding:
        assert counts.non_embedding == pytest.approx(non_embedding, rel=0.02)
    if active:
        assert counts.active == pytest.approx(active, rel=0.02)
    else:
        assert counts.active == counts.total


def test_example_models_are_the_published_ones():
    sizes = {"qwen3_0p6b_8gpu.yaml": 0.60e9, "qwen3_4b_8gpu.yaml": 4.02e9,
             "qwen3_235b_a22b_multinode.yaml": 235e9}
    for name, size in sizes.items():
        cfg = _load_example(EXAMPLES / name)
        assert count_parameters(cfg.model).total == pytest.approx(size, rel=0.02), name
        polar = count_parameters(cfg.discriminator.model).total
        assert polar == pytest.approx(7.36e9, rel=0.02), name  # POLAR-7B (InternLM2.5-7B)


# --------------------------------------------------------------------------- examples


def test_every_example_loads():
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert {p.name for p in paths} >= set(SCALE_CONFIGS) | {"tiny_cpu.yaml"}
    for path in paths:
        _load_example(path)


def test_tiny_example_is_the_embedded_default():
    assert _load_example(EXAMPLES / "tiny_cpu.yaml") == UniaplConfig()


@pytest.mark.parametrize("name", sorted(SCALE_CONFIGS))
def test_scale_configs_fit_80_gib(name):
    cfg = _load_example(EXAMPLES / name)
    world = SCALE_CONFIGS[name]
    memory = estimate_memory(cfg, world, 80.0)
    assert memory.fits and 0.3 < memory.fraction <= 1.0, memory
    assert not [w for w in memory.warnings if "needs" in w], memory.warnings
    items = {i.name: i for i in memory.items}
    assert items["policy parameters"].training > 0
    assert (items["discriminator"].training > 0) is not cfg.discriminator.offload
    assert items["rollout engine"].generation > items["rollout engine"].training
    assert memory.peak_gib == pytest.approx(sum(
        i.gib(memory.peak_phase) for i in memory.items))
    report = dry_run(cfg, world, 80.0)
    assert "fits" in report and "DOES NOT FIT" not in report
    assert f"Layout on {world} trainer GPU(s)" in report
    for line in ("policy parameters", "optimizer state", "activations", "rollout engine",
                 "total"):
        assert line in report


def test_layout_of_the_moe_config():
    cfg = _load_example(EXAMPLES / "qwen3_235b_a22b_multinode.yaml")
    layout = plan_layout(cfg, 128)
    t = layout.trainer
    assert t.tp * t.pp * t.cp * t.dp == 128
    assert t.experts_per_rank * t.ep == 128
    assert t.expert_dp * t.ep == t.cp * t.dp  # experts split over TP too
    assert (t.dp, t.expert_dp, t.stage_layers) == (8, 1, (47, 47))
    small = dataclasses.replace(cfg, parallel=dataclasses.replace(
        cfg.parallel, tensor_parallel_size=2, pipeline_parallel_size=2, expert_parallel_size=2))
    t = plan_layout(small, 128).trainer  # DP 128 / 4 = 32; expert-DP 2·1·32 / (2·2) = 16
    assert (t.dp, t.expert_dp, t.dense_dp, t.experts_per_rank) == (32, 16, 32, 64)
    notes = {i.name: i.note for i in estimate_memory(small, 128).items}
    assert notes["optimizer state"].endswith("/32 DP, experts /16 expert-DP")


def test_uneven_pipeline_split_of_94_layers():
    """PP 4 does not divide Qwen3-235B-A22B's 94 layers: the balanced split (23, 24, 24, 23)
    is what the parameters, activations and the report count per stage."""
    cfg = _load_example(EXAMPLES / "qwen3_235b_a22b_multinode.yaml")
    pp4 = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel,
                                                                pipeline_parallel_size=4))
    assert plan_layout(pp4, 256).trainer.stage_layers == (23, 24, 24, 23)
    layer = layer_parameters(pp4.model, 8, 8)
    for stage, layers in enumerate((23, 24, 24, 23)):
        assert stage_parameters(pp4.model, pp4.parallel, stage).expert == layers * layer.expert
    memory = estimate_memory(pp4, 256, 80.0)
    notes = {i.name: i.note for i in memory.items}
    layers = (23, 24, 24, 23)[memory.stage]
    assert f"× {layers} layers ×" in notes["activations"]
    assert "layers/stage 23/24/24/23" in dry_run(pp4, 256, 80.0)
    fixed = dataclasses.replace(pp4, parallel=dataclasses.replace(
        pp4.parallel, first_stage_layers=22, last_stage_layers=24))
    assert plan_layout(fixed, 256).trainer.stage_layers == (22, 24, 24, 24)


def test_rollouts_per_step():
    cfg = _load_example(EXAMPLES / "qwen3_0p6b_sft_then_a_grpo.yaml")
    sft, grpo = plan_layout(cfg, 8).stages
    assert (sft.objective, sft.rollouts, sft.sft_rows) == ("sft", 0, cfg.prompts_per_step)
    assert grpo.objective == "a_grpo" and grpo.sft_rows == 0
    assert grpo.pref_rollouts == cfg.prompts_per_step * cfg.rollout.samples_per_prompt
    unified = _load_example(EXAMPLES / "qwen3_0p6b_8gpu.yaml")
    (stage,) = plan_layout(unified, 8).stages
    g_sft = unified.sft_samples_per_prompt or unified.rollout.samples_per_prompt
    assert stage.sft_rollouts == stage.sft_rows * g_sft > 0
    assert stage.sft_rows + stage.pref_prompts == unified.prompts_per_step


# --------------------------------------------------------------------------- errors


def test_impossible_world_sizes_raise():
    cfg = _load_example(EXAMPLES / "qwen3_4b_8gpu.yaml")
    with pytest.raises(ConfigError, match="^parallel: world size 7"):
        plan_layout(cfg, 7)
    moe = _load_example(EXAMPLES / "qwen3_235b_a22b_multinode.yaml")
    with pytest.raises(ConfigError):
        plan_layout(moe, 8)
    colocated = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, num_engines=16))
    with pytest.raises(ConfigError, match="^rollout.num_engines: 16 colocated engines"):
        plan_layout(colocated, 8)
    split = dataclasses.replace(cfg, rollout=dataclasses.replace(
        cfg.rollout, placement="disaggregated", num_engines=4))
    with pytest.raises(ConfigError, match="^rollout.placement: disaggregated engines need 4"):
        plan_layout(split, 8)
    assert plan_layout(split, 8, total_gpus=12).rollout.gpus == 4
    with pytest.raises(ConfigError, match="world_size"):
        plan_layout(cfg, 0)


def test_impossible_model_layouts_raise():
    cfg = _load_example(EXAMPLES / "qwen3_4b_8gpu.yaml")
    with pytest.raises(ConfigError, match="^parallel.expert_parallel_size: 2 needs a mixture"):
        dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel,
                                                              expert_parallel_size=2))
    disc = cfg.discriminator
    wide = dataclasses.replace(cfg, discriminator=dataclasses.replace(
        disc, parallel=dataclasses.replace(disc.parallel, tensor_parallel_size=16)))
    with pytest.raises(ConfigError, match="^discriminator.parallel: TP × PP = 16"):
        plan_layout(wide, 8)
    odd = dataclasses.replace(cfg, discriminator=dataclasses.replace(
        disc, parallel=dataclasses.replace(disc.parallel, pipeline_parallel_size=3,
                                           first_stage_layers=5)))
    with pytest.raises(ConfigError) as info:
        plan_layout(odd, 8)
    assert str(info.value) == (
        "discriminator.parallel.first_stage_layers: first_stage_layers=5 leaves 27 of "
        "discriminator.model.num_layers=32 layers for the other 2 stage(s), which need an "
        "equal count >= 1 each (leave both null for a balanced split)")
    balanced = dataclasses.replace(cfg, discriminator=dataclasses.replace(
        disc, parallel=dataclasses.replace(disc.parallel, pipeline_parallel_size=3)))
    assert plan_layout(balanced, 8).discriminator.pp == 3  # 10/11/11 layers


def test_over_budget_is_reported():
    cfg = _load_example(EXAMPLES / "qwen3_4b_8gpu.yaml")
    memory = estimate_memory(cfg, 8, 16.0)
    assert not memory.fits
    assert any(w.startswith("training phase needs") for w in memory.warnings)
    assert "DOES NOT FIT" in dry_run(cfg, 8, 16.0)


# --------------------------------------------------------------------------- weight sync


@pytest.mark.parametrize("name", sorted(SCALE_CONFIGS))
def test_sync_estimate_of_each_scale_config(name):
    from uniapl_mcore.trainer.plan import (
        SYNC_RING_BUCKETS,
        count_parameters,
        dry_run,
        sync_estimate,
    )

    cfg = _load_example(EXAMPLES / name)
    world = SCALE_CONFIGS[name]
    sync = sync_estimate(cfg, plan_layout(cfg, world))
    model = count_parameters(cfg.model).total * 2  # bf16
    assert sync.model == model
    assert sync.rank0_out == cfg.rollout.num_engines * model
    sharded = cfg.parallel.model_parallel_size * cfg.parallel.expert_parallel_size > 1
    if sharded:  # the other model-parallel ranks send their shards to rank 0
        assert 0 < sync.rank0_in < model and 0 < sync.largest_sender < model
    else:  # every rank holds the whole model; rank 0 sends its own copy
        assert sync.rank0_in == sync.largest_sender == 0
    assert sync.seconds == pytest.approx((sync.rank0_in + sync.rank0_out) / 25e9)
    assert sync.rank0_host == 2 * model  # this version + the one kept for restarts
    assert sync.rank_device == SYNC_RING_BUCKETS * cfg.rollout.weight_sync.bucket_bytes
    report = dry_run(cfg, world)
    assert "Weight sync per step" in report and "rank 0 receives" in report
    if name.startswith("qwen3_235b"):  # the figure: ~470 GB through rank 0 per step
        assert 460e9 < sync.model < 480e9


def test_sync_estimate_of_one_process():
    from uniapl_mcore.trainer.plan import sync_estimate

    cfg = UniaplConfig()
    sync = sync_estimate(cfg, plan_layout(cfg, 1))
    assert sync.largest_sender == 0 and sync.rank0_in == 0
    assert sync.readers == 1 and sync.rank0_out == sync.model


def test_direct_sync_estimate_has_no_rank0_funnel():
    """``transport: direct`` on the 235B example: each stage's leader sends its own stage
    once, no rank holds the model, and the estimate is far below the object-store one."""
    from uniapl_mcore.trainer.plan import dry_run, sync_estimate

    name = next(n for n in SCALE_CONFIGS if n.startswith("qwen3_235b"))
    cfg = _load_example(EXAMPLES / name)
    world = SCALE_CONFIGS[name]
    funnel = sync_estimate(cfg, plan_layout(cfg, world))
    cfg.rollout.weight_sync = type(cfg.rollout.weight_sync)(transport="direct")
    direct = sync_estimate(cfg, plan_layout(cfg, world))
    stages = cfg.parallel.pipeline_parallel_size
    assert direct.senders == stages and direct.rank0_host == 0
    assert direct.model == funnel.model
    assert direct.rank0_out < funnel.model / stages * 1.2  # its own stage only
    assert direct.seconds == pytest.approx(direct.largest_sender / 25e9)
    assert direct.seconds < funnel.seconds / 5
    assert "direct:" in dry_run(cfg, world)
