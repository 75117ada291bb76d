"""Per-rank bodies of the GPU-fast-path tests that run on CPU (module-level: the harness
pickles them). Each body starts one gloo group and runs several variants in it, rebuilding
Megatron's parallel state per variant, so every variant starts from the same weights."""

from __future__ import annotations

from typing import Any

STEPS = 3


def _loss_config():
    from uniapl_mcore.losses import LossConfig

    return LossConfig(objective="uniapl", alpha=0.5, lambda_adv=0.1, kl_coef=0.0)


LOSS = _loss_config()


def _saved_activation_bytes(trainable, batch, layout) -> int:
    """Bytes autograd saves for backward during one training-mode forward of ``batch``."""
    import torch

    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    batch = batch.to(layout.device)
    trainable.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = trainable.chunks[0](batch.tokens, batch.position_ids, batch.attention_mask)
    logits.float().sum().backward()  # release the graph (the buffers are zeroed next step)
    return total


def _policy_batches(cfg, layout, step: int):
    """This rank's micro-batches of the step's synthetic mixed batch (the trainer's
    layouts: token budget, or common width under PP) and their global denominators."""
    from uniapl_mcore.losses import step_denominators
    from uniapl_mcore.trainer.experience import step_micro_batches

    from ._bodies import synthetic_sequences

    seqs = synthetic_sequences(cfg.train.seed, step, cfg.model.vocab_size)
    batches = step_micro_batches(seqs, layout.dp, layout.dp_rank,
                                 explicit_mask=layout.device.type == "cpu",
                                 budget_tokens=None if layout.pp > 1 else 64,
                                 rows_per_micro_batch=2).batches
    denoms = step_denominators([b.loss_mask for b in batches], [b.row_kind for b in batches],
                               LOSS.max_response_tokens, layout.dp_group())
    return batches, denoms


def train_variants(variants: dict[str, list[str]], measure_saved: bool = False
                   ) -> dict[str, dict[str, Any]]:
    """For each named list of config overrides: ``STEPS`` production policy steps
    (``policy_train_step``, GRPO + SFT without KL) on the synthetic mixed batches of
    ``tests/_bodies``. Returns ``{name: {"steps": [(loss, grad_norm)], "weights": float64
    checksum of this rank's parameters after the last step, "saved_bytes": activation bytes
    of one forward (with ``measure_saved``), "grad_sync": whether the schedule got a
    grad_sync_func, "buckets": DDP bucket groups on this rank}}``."""
    import torch
    import torch.distributed as dist

    from tests._megatron_config import load_run
    from uniapl_mcore.megatron.model import build_trainable_model
    from uniapl_mcore.runtime.dist_env import DistEnv
    from uniapl_mcore.runtime.parallel import init_parallel
    from uniapl_mcore.trainer.policy_step import policy_train_step
    from uniapl_mcore.trainer.update import from_last_stage

    env = DistEnv.from_environ()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    out: dict[str, dict[str, Any]] = {}
    for name, overrides in variants.items():
        cfg = load_run(None, [f"train.max_steps={STEPS}", *overrides])
        layout = init_parallel(cfg.parallel, cfg.train.seed)  # reuses the group
        try:
            trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout,
                                              cfg.train.max_steps)
            result: dict[str, Any] = {
                "grad_sync": trainable.config.grad_sync_func is not None,
                "buckets": sum(len(c.bucket_groups) for c in trainable.chunks)}
            if measure_saved:
                batch = _policy_batches(cfg, layout, 0)[0][0]
                result["saved_bytes"] = _saved_activation_bytes(trainable, batch, layout)
            steps = []
            for step in range(STEPS):
                batches, denoms = _policy_batches(cfg, layout, step)
                metrics = from_last_stage(policy_train_step(
                    trainable, batches, denoms, LOSS, layout, step,
                    vocab_size=cfg.model.vocab_size), layout)
                steps.append((metrics["objective/loss"], metrics["optim/grad_norm"]))
            trainable.sync_params()
            result["steps"] = steps
            result["weights"] = sum(float(p.detach().double().sum())
                                    for chunk in trainable.chunks
                                    for p in chunk.module.parameters())
            out[name] = result
        finally:
            layout.destroy()
    torch.distributed.barrier()
    return out


def gpu_mfu_cpu_smoke(bench_dir: str) -> dict[str, Any]:
    """``tools/bench/gpu_mfu.py``'s measurement loop (Megatron training steps, timing,
    profile, figures) on the default tiny model on CPU: its numbers mean nothing here, the
    point is that the loop runs."""
    import dataclasses
    import sys

    from uniapl_mcore.models.config import ModelConfig
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    sys.path.insert(0, bench_dir)
    import gpu_mfu

    args = gpu_mfu.parse_args(["--steps", "2", "--warmup", "1", "--profile-steps", "1",
                               "--seq-length", "32", "--micro-batches", "2"])
    layout = init_parallel(ParallelConfig(), args.seed)
    try:
        result = gpu_mfu.measure("bf16", ModelConfig(), layout, args)
    finally:
        layout.destroy()
    fp8 = dataclasses.replace(result, label="fp8_tensorwise", flops_per_s=2 * result.flops_per_s,
                              tokens_per_s=2 * result.tokens_per_s)
    figures = gpu_mfu.figures_of([result, fp8], 989.4, 1978.9)
    return {"result": dataclasses.asdict(result),
            "figures": {f.name: (f.value, f.unit, f.ratio) for f in figures}}
