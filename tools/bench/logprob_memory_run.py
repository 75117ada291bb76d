"""Method of ``logprob_memory.py``: peak memory of log-prob + entropy at TP=2,
vocab-parallel vs full-vocab gather.

Each variant runs forward + backward of (Σ log p(target) + Σ entropy) in two fresh gloo
processes (TP=2 through Megatron's parallel state, one vocabulary shard each) and reports,
per rank, how far the peak resident memory rose above the resident memory just before the
computation (shard and targets already allocated; the kernel's peak mark is reset there).
``gather`` is the naive path: all-gather the shards into full-vocabulary logits, then fp32
log_softmax and softmax·log_softmax.
"""

from __future__ import annotations

import logging
import resource
import time

import torch
import torch.distributed as dist

from uniapl_mcore.losses.vocab_parallel import vocab_parallel_logprobs_entropy

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
VARIANTS = ("vocab_parallel", "gather")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not permitted: the peak then includes what came before
        logger.warning("cannot reset the peak RSS; figures include earlier peaks")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _GatherVocab(torch.autograd.Function):
    """All-gather vocabulary shards [n, v/tp] → [n, v]; backward keeps this rank's slice."""

    @staticmethod
    def forward(ctx, shard, group):
        parts = [torch.empty_like(shard) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, shard.contiguous(), group=group)
        ctx.rank, ctx.width = dist.get_rank(group), shard.shape[-1]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        start = ctx.rank * ctx.width
        return grad[..., start:start + ctx.width].contiguous(), None


def gather_logprobs_entropy(shard: torch.Tensor, targets: torch.Tensor, group):
    """The naive reference path: gather the full vocabulary, then fp32 softmax math."""
    logits = _GatherVocab.apply(shard, group).float()
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def measure_rank(variant: str, vocab: int, tokens: int, dtype: str, chunk_tokens: int) -> dict:
    """One rank's measurement (run under ``run_distributed`` with world size 2)."""
    from megatron.core import parallel_state as mpu

    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    layout = init_parallel(ParallelConfig(tensor_parallel_size=2), seed=0)
    try:
        return _measure(variant, vocab, tokens, dtype, chunk_tokens,
                        mpu.get_tensor_model_parallel_group())
    finally:
        layout.destroy()


def _measure(variant: str, vocab: int, tokens: int, dtype: str, chunk_tokens: int,
             group) -> dict:
    tp, rank = dist.get_world_size(group), dist.get_rank(group)
    gen = torch.Generator().manual_seed(rank)
    shard = torch.randn(tokens, vocab // tp, generator=gen).to(DTYPES[dtype]).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=torch.Generator().manual_seed(0))
    dist.barrier()
    _reset_peak_rss()
    before = _rss_bytes()
    start = time.perf_counter()
    if variant == "vocab_parallel":
        logp, entropy = vocab_parallel_logprobs_entropy(shard, targets, tp_group=group,
                                                        chunk_tokens=chunk_tokens)
    elif rank != 0:
        # The gather path is the same on every rank; rank 1 only contributes its shard to the
        # all-gather (the one collective), so that two full-vocabulary copies never have to
        # fit in this machine's memory at once. Rank 0's peak is the per-rank figure.
        parts = [torch.empty_like(shard) for _ in range(tp)]
        dist.all_gather(parts, shard.detach().contiguous(), group=group)
        del parts
        return {"peak_growth_bytes": 0, "seconds": 0.0, "shard_bytes": 0,
                "logp_sum": float("nan"), "entropy_sum": float("nan")}
    else:
        logp, entropy = gather_logprobs_entropy(shard, targets, group)
    (logp.sum() + entropy.sum()).backward()
    elapsed = time.perf_counter() - start
    peak = _peak_rss_bytes()
    return {"peak_growth_bytes": max(peak - before, 0), "seconds": elapsed,
            "shard_bytes": shard.numel() * shard.element_size(),
            "logp_sum": float(logp.detach().sum()), "entropy_sum": float(entropy.detach().sum())}


def run_benchmark(vocab: int = 151936, tokens: int = 4096, dtype: str = "bfloat16",
                  chunk_tokens: int = 1024, timeout_s: float = 900.0,
                  variants: tuple[str, ...] = VARIANTS) -> dict:
    """The variants at TP=2 (one fresh pair of processes each); figures and memory ratio.

    The gather baseline needs ≈ 2.9 GiB per rank per 1024 tokens at vocab 151936 (bf16);
    only TP rank 0 runs its full-vocabulary math (the other rank joins the all-gather), so
    4096 tokens fit on a 24 GiB machine.
    """
    from uniapl_mcore.testing import run_distributed

    if vocab % 2:
        raise ValueError(f"vocab: must be divisible by the TP size 2, got {vocab}")
    results = {}
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"variants: unknown {variant!r}; choose from {VARIANTS}")
        per_rank = run_distributed(measure_rank, 2, args=(variant, vocab, tokens, dtype,
                                                          chunk_tokens), timeout_s=timeout_s)
        results[variant] = {
            "peak_growth_gib": max(r["peak_growth_bytes"] for r in per_rank) / 2**30,
            "seconds": max(r["seconds"] for r in per_rank),
            "logp_sum": per_rank[0]["logp_sum"], "entropy_sum": per_rank[0]["entropy_sum"],
            "per_rank_peak_growth_gib": [r["peak_growth_bytes"] / 2**30 for r in per_rank],
        }
    report = {"vocab": vocab, "tokens": tokens, "dtype": dtype, "chunk_tokens": chunk_tokens,
              **results}
    if len(results) == 2:
        vp, ga = results["vocab_parallel"], results["gather"]
        report["memory_ratio"] = vp["peak_growth_gib"] / max(ga["peak_growth_gib"], 1e-12)
        report["logp_sum_rel_diff"] = abs(vp["logp_sum"] - ga["logp_sum"]) / abs(ga["logp_sum"])
    return report
