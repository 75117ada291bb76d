#!/usr/bin/env python3
"""Model FLOPs utilisation (MFU) of a Qwen3-shaped dense model on one GPU, bf16 and FP8.

Trains a Qwen3 model (GQA, qk-norm, SwiGLU, RoPE, head_dim 128, vocabulary 151936, tied
embeddings) with Megatron-Core on a one-rank NCCL world: Transformer Engine layer spec
(Megatron's local spec when Transformer Engine is absent, and then no FP8), bf16 mixed
precision, Adam (distributed optimizer, fp32 master weights and gradients), random tokens.
Each step is ``--micro-batches`` forward + backward passes of one ``--seq-length`` row (or,
with ``--packing thd``, of random-length sequences packed into that many tokens, THD layout)
and one optimizer step. The size is the largest of Qwen3-0.6B / 1.7B / 4B whose training
memory (``uniapl_mcore.trainer.plan.single_gpu_training_bytes``) fits the GPU, unless
``--size`` names one. Then the same run with each FP8 recipe that Transformer Engine supports
on this GPU (``--fp8-recipes``).

Model FLOPs of one training pass over sequences of lengths n_i (forward + backward = 3 ×
forward, 2 FLOPs per multiply-add; causal attention):

    FLOPs = 6·(N + V·h)·Σ n_i  +  6·L·(a·d)·Σ n_i²

N: non-embedding parameters (every GEMM weight plus the norm weights, < 0.1 %); V·h: the
output projection (computed even when tied to the embedding); L layers, a query heads of
width d. The attention term counts QKᵀ and AV over the causal triangle: a query at position
t attends to t keys, 4·a·d·t forward FLOPs per layer, Σ_t t = n(n+1)/2 ≈ n²/2. Per token of
a plain row of s tokens: 6·(N + V·h) + 6·L·a·d·s. Padding positions of packed micro-batches
count no FLOPs.

    MFU = model FLOPs per second / peak dense bf16 FLOPs per second of the GPU

(H100 SXM and H200: 989.4 TFLOP/s bf16, 1978.9 FP8; FP8 runs are reported against both
peaks). Unknown GPUs need ``--peak-bf16-tflops`` / ``--peak-fp8-tflops``. ``torch.profiler``
records ``--profile-steps`` further steps of each run and prints the three CUDA kernels with
the most self CUDA time.

    python tools/bench/gpu_mfu.py [--size auto] [--steps 10] [--seq-length 4096]
        [--micro-batches 4] [--packing plain|thd] [--fp8-recipes auto] [--json FILE]

Without CUDA it prints that it skipped, measures nothing, writes no ``--json`` file and
exits 0.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from figures import Figure, emit, higher_is_better

from uniapl_mcore.megatron.config import OptimizerConfig
from uniapl_mcore.models.config import FP8_RECIPES, Fp8Config, ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig
from uniapl_mcore.trainer.plan import (
    GIB,
    HEADROOM_FRACTION,
    count_parameters,
    single_gpu_training_bytes,
)

logger = logging.getLogger(__name__)

#: Qwen3 dense shapes (Hugging Face config.json of Qwen/Qwen3-*): layers, hidden, FFN,
#: query heads, KV heads. All: head_dim 128, vocabulary 151936, tied embeddings.
QWEN3_SHAPES: dict[str, dict[str, int]] = {
    "0.6b": dict(num_layers=28, hidden_size=1024, ffn_hidden_size=3072,
                 num_attention_heads=16, num_query_groups=8),
    "1.7b": dict(num_layers=28, hidden_size=2048, ffn_hidden_size=6144,
                 num_attention_heads=16, num_query_groups=8),
    "4b": dict(num_layers=36, hidden_size=2560, ffn_hidden_size=9728,
               num_attention_heads=32, num_query_groups=8),
}

#: (device-name substring, dense bf16 TFLOP/s, dense FP8 TFLOP/s or None): vendor datasheet
#: peaks without sparsity; the first match wins (specific names before generic ones).
PEAK_TFLOPS: list[tuple[str, float, float | None]] = [
    ("GH200", 989.4, 1978.9),
    ("H200", 989.4, 1978.9),
    ("H100 NVL", 835.0, 1670.0),
    ("H100 PCIe", 756.0, 1513.0),
    ("H100", 989.4, 1978.9),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4, 1978.9),
    ("B200", 2250.0, 4500.0),
    ("A100", 312.0, None),
]

FP8_CHOICES = [r for r in FP8_RECIPES if r != "none"]


# --------------------------------------------------------------------------- model FLOPs


def qwen3_model(size: str, seq_length: int, impl: str = "transformer_engine",
                fp8_recipe: str = "none") -> ModelConfig:
    """The Qwen3 ``size`` shape in bf16, ``impl`` layers, FP8 ``fp8_recipe`` (or none)."""
    return ModelConfig(**QWEN3_SHAPES[size], head_dim=128, vocab_size=151936,
                       max_position_embeddings=max(40960, seq_length), rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, qk_norm=True, tie_word_embeddings=True,
                       params_dtype="bfloat16", transformer_impl=impl,
                       fp8=Fp8Config(recipe=fp8_recipe))


def dense_flops_per_token(model: ModelConfig) -> float:
    """6·(N + V·h): the GEMM FLOPs of one token's forward + backward (see the module doc)."""
    n_non_embedding = count_parameters(model).non_embedding
    return 6.0 * (n_non_embedding + model.vocab_size * model.hidden_size)


def attention_flops_per_square_token(model: ModelConfig) -> float:
    """6·L·a·d: causal-attention FLOPs of forward + backward per n² of a sequence."""
    return 6.0 * model.num_layers * model.num_attention_heads * model.head_dim


def training_flops(model: ModelConfig, lengths: Sequence[int]) -> float:
    """Model FLOPs of one forward + backward over sequences of ``lengths`` tokens:
    6·(N + V·h)·Σn + 6·L·a·d·Σn² (the module doc derives it)."""
    tokens = sum(lengths)
    squares = sum(n * n for n in lengths)
    return dense_flops_per_token(model) * tokens + \
        attention_flops_per_square_token(model) * squares


def formula_text(model: ModelConfig, seq_length: int) -> str:
    """The formula with this model's numbers, for the report."""
    n = count_parameters(model).non_embedding
    vh = model.vocab_size * model.hidden_size
    ad = model.num_attention_heads * model.head_dim
    per_token = training_flops(model, [seq_length]) / seq_length
    return (f"model FLOPs per token = 6·(N + V·h) + 6·L·(a·d)·s = 6·({n:,} + {vh:,}) + "
            f"6·{model.num_layers}·{ad}·{seq_length} = {per_token / 1e9:.3f} GFLOP "
            f"(packed rows: 6·L·a·d·Σn²/Σn in place of 6·L·a·d·s)")


# --------------------------------------------------------------------------- sizing, peaks


def pick_size(gpu_memory_bytes: float, seq_length: int) -> str | None:
    """The largest Qwen3 shape whose estimated training memory (Adam, bf16, one micro-batch
    of ``seq_length`` tokens, no recomputation) fits ``HEADROOM_FRACTION`` of the GPU."""
    best = None
    for size in QWEN3_SHAPES:  # ascending
        need = single_gpu_training_bytes(qwen3_model(size, seq_length), seq_length).total
        if need <= HEADROOM_FRACTION * gpu_memory_bytes:
            best = size
    return best


def peak_tflops(device_name: str) -> tuple[float, float | None] | None:
    """(bf16, FP8) dense peak TFLOP/s of a GPU named ``device_name``, None if unknown."""
    for key, bf16, fp8 in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return bf16, fp8
    return None


# --------------------------------------------------------------------------- data, step


@dataclass
class MicroBatch:
    """tokens, labels, position_ids: int64 [1, T] on the GPU; loss_mask: fp32 [1, T];
    packed: Megatron ``PackedSeqParams`` (THD) or None; attention_mask: None on the GPU
    (causal), an explicit bool [1, 1, T, T] mask on CPU; lengths: the real sequences' token
    counts (what the FLOPs count)."""

    tokens: Any
    labels: Any
    position_ids: Any
    loss_mask: Any
    packed: Any
    lengths: list[int]
    attention_mask: Any = None

    def to(self, device: Any) -> MicroBatch:
        """Already on the GPU (the schedule's device hook): itself."""
        return self


def plain_micro_batch(vocab: int, seq_length: int, generator) -> MicroBatch:
    """One row of ``seq_length`` random tokens (causal attention over all of it)."""
    import torch

    from uniapl_mcore.megatron.schedule import causal_mask

    ids = torch.randint(0, vocab, (1, seq_length + 1), generator=generator)
    positions = torch.arange(seq_length).unsqueeze(0)
    # Megatron builds its default causal mask on CUDA; CPU runs (tests) pass one
    mask = None if torch.cuda.is_available() else causal_mask(seq_length)
    return MicroBatch(ids[:, :-1].cuda(), ids[:, 1:].cuda(), positions.cuda(),
                      torch.ones(1, seq_length).cuda(), None, [seq_length], mask)


def packed_micro_batch(vocab: int, seq_length: int, generator) -> MicroBatch:
    """Random-length sequences (uniform in [s/16, s/2] tokens) of random tokens packed into
    ``seq_length`` positions, THD layout (needs Transformer Engine attention)."""
    import torch

    from uniapl_mcore.data.packing import PackItem, build_micro_batch

    items, used = [], 0
    while True:
        n = int(torch.randint(seq_length // 16, seq_length // 2 + 1, (1,),
                              generator=generator))
        if used + n > seq_length:
            break
        ids = torch.randint(0, vocab, (n + 1,), generator=generator).tolist()
        items.append(PackItem(ids, [1] * (n + 1)))
        used += n
    mb = build_micro_batch(items, pad_id=0, length=seq_length)
    packed = mb.packed_seq_params()
    packed.cu_seqlens_q = packed.cu_seqlens_kv = mb.cu_seqlens.to(torch.int32).cuda()
    return MicroBatch(mb.tokens.cuda(), mb.labels.cuda(), mb.position_ids.cuda(),
                      mb.loss_mask.cuda(), packed, [it.length for it in items])


def _loss(loss_mask, per_token_loss):
    """Masked per-token NLL sum; Megatron divides by the token count."""
    import torch

    loss_sum = (per_token_loss.float() * loss_mask).sum()
    return loss_sum, loss_mask.sum().to(torch.int), {"lm_loss": loss_sum.detach()}


def _forward_step(mb: MicroBatch, model):
    output = model(input_ids=mb.tokens, position_ids=mb.position_ids,
                   attention_mask=mb.attention_mask, labels=mb.labels,
                   packed_seq_params=mb.packed)
    return output, partial(_loss, mb.loss_mask)


def train_step(trainable, micro_batches: list[MicroBatch], layout) -> None:
    """Forward + backward over ``micro_batches``, one optimizer and LR-schedule step."""
    from uniapl_mcore.megatron.schedule import train_on_batches

    train_on_batches(trainable, micro_batches, _forward_step, layout)


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    """One precision's measurement."""

    label: str
    step_s: float
    tokens_per_s: float
    flops_per_s: float
    peak_memory_gib: float
    top_kernels: list[tuple[str, float, float]]  # (name, ms per step, share of CUDA time)


def top_cuda_kernels(prof, steps: int, k: int = 3) -> list[tuple[str, float, float]]:
    """The ``k`` CUDA kernels with the most self CUDA time in a profile of ``steps`` steps:
    (name, ms per step, share of all kernel time)."""
    import torch

    totals: Counter[str] = Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] += event.time_range.elapsed_us()
    all_us = sum(totals.values()) or 1.0
    return [(name, us / 1e3 / steps, us / all_us) for name, us in totals.most_common(k)]


def measure(label: str, model: ModelConfig, layout, args: argparse.Namespace) -> RunResult:
    """Build, warm up, time ``args.steps`` steps, profile ``args.profile_steps`` more."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from uniapl_mcore.megatron.model import build_trainable_model

    generator = torch.Generator().manual_seed(args.seed)
    make = packed_micro_batch if args.packing == "thd" else plain_micro_batch
    batches = [make(model.vocab_size, args.seq_length, generator)
               for _ in range(args.micro_batches)]
    flops_per_step = sum(training_flops(model, mb.lengths) for mb in batches)
    tokens_per_step = sum(sum(mb.lengths) for mb in batches)
    optim = OptimizerConfig(lr=1e-5, min_lr=1e-5, warmup_steps=0, lr_decay_style="constant",
                            use_distributed_optimizer=True)
    trainable = build_trainable_model(model, ParallelConfig(), optim, layout,
                                      args.warmup + args.steps + args.profile_steps)
    cuda = torch.cuda.is_available()  # False only in the CPU test of this function
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            train_step(trainable, batches, layout)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(trainable, batches, layout)
        torch.cuda.synchronize()
        step_s = (time.perf_counter() - start) / args.steps
        peak = torch.cuda.max_memory_allocated() / GIB if cuda else 0.0
        kernels: list[tuple[str, float, float]] = []
        if args.profile_steps:
            with profile(activities=activities) as prof:
                for _ in range(args.profile_steps):
                    train_step(trainable, batches, layout)
                torch.cuda.synchronize()
            kernels = top_cuda_kernels(prof, args.profile_steps)
    finally:
        del trainable
        gc.collect()
        torch.cuda.empty_cache()
    return RunResult(label, step_s, tokens_per_step / step_s, flops_per_step / step_s, peak,
                     kernels)


# --------------------------------------------------------------------------- report


def figures_of(results: list[RunResult], peak_bf16: float | None,
               peak_fp8: float | None) -> list[Figure]:
    """tokens/s (FP8 runs against the bf16 run), step time, peak memory and MFU figures."""
    base = results[0]
    out: list[Figure] = []
    for r in results:
        name = f"gpu_mfu.{r.label}"
        if r is base:
            out.append(Figure(f"{name}.tokens_per_s", r.tokens_per_s, "tokens/s"))
        else:
            out.append(higher_is_better(f"{name}.tokens_per_s", r.tokens_per_s, "tokens/s",
                                        base.tokens_per_s))
        out.append(Figure(f"{name}.step_s", r.step_s, "s"))
        out.append(Figure(f"{name}.model_tflops_per_s", r.flops_per_s / 1e12, "TFLOP/s"))
        out.append(Figure(f"{name}.peak_memory", r.peak_memory_gib, "GiB"))
        if peak_bf16:
            suffix = "mfu" if r is base else "mfu_vs_bf16_peak"
            out.append(Figure(f"{name}.{suffix}", r.flops_per_s / (peak_bf16 * 1e12),
                              "fraction"))
        if r is not base and peak_fp8:
            out.append(Figure(f"{name}.mfu_vs_fp8_peak", r.flops_per_s / (peak_fp8 * 1e12),
                              "fraction"))
    return out


def print_kernels(results: list[RunResult]) -> None:
    for r in results:
        for rank, (name, ms, share) in enumerate(r.top_kernels, 1):
            print(f"profile {r.label} top{rank}: {ms:8.2f} ms/step {share:6.1%}  {name[:110]}")


# --------------------------------------------------------------------------- main


def requested_fp8_recipes(text: str) -> list[str]:
    """The recipes ``--fp8-recipes`` names (``auto``: all, ``none``: none).

    Raises:
        ValueError: an unknown recipe name.
    """
    if text == "none":
        return []
    names = FP8_CHOICES if text == "auto" else [r.strip() for r in text.split(",") if r.strip()]
    unknown = [n for n in names if n not in FP8_CHOICES]
    if unknown:
        raise ValueError(f"unknown FP8 recipe(s) {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(FP8_CHOICES)}, auto or none")
    return names


def fp8_recipes_to_run(names: list[str]) -> list[tuple[str, str | None]]:
    """``(recipe, why it is skipped, or None)``: Transformer Engine's own support check."""
    from uniapl_mcore.models.gpt import fp8_support

    out = []
    for name in names:
        available, reason = fp8_support(name)
        out.append((name, None if available else reason or "not supported here"))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["auto", *QWEN3_SHAPES], default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--profile-steps", type=int, default=2,
                        help="profiled steps after the timed ones (0: no profile)")
    parser.add_argument("--seq-length", type=int, default=4096, help="tokens per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=4, help="per optimizer step")
    parser.add_argument("--packing", choices=["plain", "thd"], default="plain",
                        help="plain: one row per micro-batch; thd: packed random-length "
                             "sequences (Transformer Engine)")
    parser.add_argument("--fp8-recipes", default="auto",
                        help=f"comma list of {', '.join(FP8_CHOICES)}; auto: every one this "
                             "GPU supports; none: bf16 only")
    parser.add_argument("--peak-bf16-tflops", type=float, default=None)
    parser.add_argument("--peak-fp8-tflops", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    for name in ("steps", "seq_length", "micro_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.seq_length % 16:
        parser.error("--seq-length must be a multiple of 16 (FP8 GEMM shapes)")
    try:
        args.fp8_recipe_list = requested_fp8_recipes(args.fp8_recipes)
    except ValueError as err:
        parser.error(f"--fp8-recipes: {err}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        # no --json file either: tools/bench/run_all.py reads that as "skipped", with this
        # line as the reason
        print("gpu_mfu: skipped: no CUDA device here (torch.cuda.is_available() is False); "
              "nothing measured")
        return 0
    return run(args)


def run(args: argparse.Namespace) -> int:
    """The measurement on this machine's first GPU (see the module doc)."""
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")  # before the CUDA context
    import torch

    from uniapl_mcore.data.packing import thd_supported
    from uniapl_mcore.models.gpt import te_available
    from uniapl_mcore.runtime.parallel import init_parallel

    props = torch.cuda.get_device_properties(0)
    peaks = peak_tflops(props.name)
    peak_bf16 = args.peak_bf16_tflops or (peaks[0] if peaks else None)
    peak_fp8 = args.peak_fp8_tflops or (peaks[1] if peaks else None)
    te = te_available()
    if args.packing == "thd" and not thd_supported():
        print("gpu_mfu: --packing thd needs Transformer Engine attention; it is not available",
              file=sys.stderr)
        return 2
    size = args.size if args.size != "auto" else pick_size(props.total_memory, args.seq_length)
    if size is None:
        print(f"gpu_mfu: not even Qwen3-0.6B fits {props.total_memory / GIB:.1f} GiB for "
              "training; nothing measured", file=sys.stderr)
        return 2
    impl = "transformer_engine" if te else "local"
    model = qwen3_model(size, args.seq_length, impl)
    params = count_parameters(model)
    print(f"gpu_mfu: {props.name} ({props.total_memory / GIB:.1f} GiB), peak bf16 "
          f"{peak_bf16 or 'unknown'} / FP8 {peak_fp8 or 'unknown'} TFLOP/s dense")
    print(f"gpu_mfu: Qwen3-{size} ({params.total / 1e9:.3f} B params, "
          f"{params.non_embedding / 1e9:.3f} B non-embedding), {impl} layers, "
          f"{args.micro_batches} × {args.seq_length} tokens per step ({args.packing}), "
          f"{args.steps} timed steps")
    print(f"gpu_mfu: {formula_text(model, args.seq_length)}")
    print("gpu_mfu: MFU = model FLOPs per second / peak dense bf16 FLOPs per second "
          "(FP8 runs also / peak dense FP8)")
    layout = init_parallel(ParallelConfig(), args.seed)
    try:
        results = [measure("bf16", model, layout, args)]
        recipes = fp8_recipes_to_run(args.fp8_recipe_list) if te else []
        if not te and args.fp8_recipe_list:
            print("gpu_mfu: FP8 skipped: Transformer Engine is not available")
        for recipe, skipped in recipes:
            if skipped:
                print(f"gpu_mfu: FP8 {recipe} skipped: {skipped}")
                continue
            fp8_model = replace(model, fp8=Fp8Config(recipe=recipe))
            results.append(measure(f"fp8_{recipe}", fp8_model, layout, args))
    finally:
        layout.destroy()
    emit(figures_of(results, peak_bf16, peak_fp8), args.json)
    print_kernels(results)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
