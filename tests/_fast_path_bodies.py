"""Per-rank bodies of the GPU-fast-path tests that run on CPU (module-level: the harness
pickles them). Each body starts one gloo group and runs several variants in it, rebuilding
Megatron's parallel state per variant, so every variant starts from the same weights."""

from __future__ import annotations

from typing import Any

STEPS = 3


def _saved_activation_bytes(trainable, batch, layout) -> int:
    """Bytes autograd saves for backward during one training-mode forward of ``batch``."""
    import torch

    from uniapl_mcore.trainer.lm_step import TokenBatch

    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    batch: TokenBatch = batch.to(layout.device)
    trainable.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainable.chunks[0](input_ids=batch.tokens, position_ids=batch.position_ids,
                                   attention_mask=batch.attention_mask, labels=batch.labels)
    loss.sum().backward()  # release the graph (the buffers are zeroed by the next step)
    return total


def train_variants(variants: dict[str, list[str]], measure_saved: bool = False
                   ) -> dict[str, dict[str, Any]]:
    """For each named list of config overrides: ``STEPS`` optimizer steps of the smoke LM
    task. Returns ``{name: {"steps": [(loss, grad_norm)], "weights": float64 checksum of
    this rank's parameters after the last step, "saved_bytes": activation bytes of one
    forward (with ``measure_saved``), "grad_sync": whether the schedule got a
    grad_sync_func, "buckets": DDP bucket groups on this rank}}``."""
    import torch
    import torch.distributed as dist

    from uniapl_mcore.config import load_config
    from uniapl_mcore.megatron.model import build_trainable_model
    from uniapl_mcore.runtime.dist_env import DistEnv
    from uniapl_mcore.runtime.parallel import init_parallel
    from uniapl_mcore.trainer.lm_step import train_step
    from uniapl_mcore.trainer.smoke import local_micro_batches

    env = DistEnv.from_environ()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    out: dict[str, dict[str, Any]] = {}
    for name, overrides in variants.items():
        cfg = load_config(None, [f"train.max_steps={STEPS}", *overrides])
        layout = init_parallel(cfg.parallel, cfg.train.seed)  # reuses the group
        try:
            trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout,
                                              cfg.train.max_steps)
            result: dict[str, Any] = {
                "grad_sync": trainable.config.grad_sync_func is not None,
                "buckets": sum(len(c.bucket_groups) for c in trainable.chunks)}
            if measure_saved:
                batch = local_micro_batches(cfg, layout, 0)[0]
                result["saved_bytes"] = _saved_activation_bytes(trainable, batch, layout)
            steps = []
            for step in range(STEPS):
                r = train_step(trainable, local_micro_batches(cfg, layout, step), layout)
                steps.append((r.loss, r.grad_norm))
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

    from uniapl_mcore.config import ModelConfig, ParallelConfig
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
