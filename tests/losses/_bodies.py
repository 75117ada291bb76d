"""Per-rank bodies of the distributed loss tests (module-level so the harness can pickle them).

One spawn of two gloo processes runs every check and returns the measured errors:
vocab-parallel log-probs / entropy at TP=2 against TP=1 (values and gradients), the whole
objective at TP=2, and a global batch split over 2 data-parallel ranks × 2 micro-batches
against one process with one micro-batch (loss, gradient, metrics).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from uniapl_mcore.losses import (
    LossConfig,
    PolicyBatch,
    kto_reference_point,
    objective_loss,
    reduce_metrics,
    step_denominators,
    vocab_parallel_logprobs_entropy,
)
from uniapl_mcore.runtime.layout import ParallelConfig
from uniapl_mcore.runtime.parallel import init_parallel


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a − ref| / max(1, |ref|): fp32 precision of values of any magnitude."""
    ref = ref.detach().double()
    return float(((a.detach().double() - ref).abs() / ref.abs().clamp(min=1.0)).max())


def _full_inputs(vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 10, vocab, generator=gen) * 4
    targets = torch.randint(0, vocab, (3, 10), generator=gen)
    mask = torch.rand(3, 10, generator=gen) > 0.3
    mask[1] = False
    weights = torch.randn(3, 10, 2, generator=gen, dtype=torch.float64)
    return logits, targets, mask, weights


def _logprob_case(tp_rank: int, tp: int, chunk_tokens: int, dtype: torch.dtype) -> dict:
    """TP-sharded vs TP=1 (local, full vocab): values and the shard of the gradient."""
    vocab = 64
    logits, targets, mask, weights = _full_inputs(vocab)
    logits = logits.to(dtype)
    v_local = vocab // tp
    full = logits.clone().requires_grad_()
    shard = logits[..., tp_rank * v_local:(tp_rank + 1) * v_local].clone().requires_grad_()
    lp_1, ent_1 = vocab_parallel_logprobs_entropy(full, targets, mask, tp_group="local",
                                                  chunk_tokens=chunk_tokens)
    lp_tp, ent_tp = vocab_parallel_logprobs_entropy(shard, targets, mask, tp_group=None,
                                                    chunk_tokens=chunk_tokens)
    lsm = torch.log_softmax(logits.double(), -1)
    ref_lp = lsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    ref_ent = -(lsm.exp() * lsm).sum(-1) * mask

    def loss(lp, ent):
        return (lp.double() * weights[..., 0]).sum() + (ent.double() * weights[..., 1]).sum()

    (g_1,) = torch.autograd.grad(loss(lp_1, ent_1), full)
    (g_tp,) = torch.autograd.grad(loss(lp_tp, ent_tp), shard)
    g_1_shard = g_1[..., tp_rank * v_local:(tp_rank + 1) * v_local]
    return {"logp": _rel_err(lp_tp, lp_1), "entropy": _rel_err(ent_tp, ent_1),
            "grad": _max_err(g_tp, g_1_shard), "logp_vs_ref": _rel_err(lp_tp, ref_lp),
            "entropy_vs_ref": _rel_err(ent_tp, ref_ent)}


def _objective_at_tp(tp_rank: int, tp: int) -> dict:
    """The unified objective from sharded logits: loss and shard gradient equal TP=1."""
    vocab = 64
    logits, targets, mask, _ = _full_inputs(vocab, seed=1)
    mask[1, :3] = True
    gen = torch.Generator().manual_seed(2)
    kinds = torch.tensor([0, 1, 2])
    extra = {"old_logp": torch.randn(3, 10, generator=gen) * 0.2 - 4.0,
             "ref_logp": torch.randn(3, 10, generator=gen) * 0.2 - 4.0,
             "advantages": torch.tensor([0.0, 1.3, 0.0]),
             "adv_advantages": torch.tensor([0.0, -0.4, 0.7])}
    cfg = LossConfig(objective="uniapl", alpha=0.3, lambda_adv=0.5, entropy_coef=0.01)
    denoms = step_denominators([mask.float()], [kinds], cfg.max_response_tokens)
    v_local = vocab // tp

    def run(x, group):
        lp, ent = vocab_parallel_logprobs_entropy(x, targets, mask, tp_group=group)
        batch = PolicyBatch(logp=lp, mask=mask.float(), row_kind=kinds, entropy=ent, **extra)
        out = objective_loss(batch, denoms, cfg)
        (g,) = torch.autograd.grad(out.loss, x)
        return out.loss, g

    loss_1, g_1 = run(logits.clone().requires_grad_(), "local")
    shard = logits[..., tp_rank * v_local:(tp_rank + 1) * v_local].clone().requires_grad_()
    loss_tp, g_tp = run(shard, None)
    return {"loss": abs(float(loss_tp.detach()) - float(loss_1.detach())),
            "grad": _max_err(g_tp, g_1[..., tp_rank * v_local:(tp_rank + 1) * v_local])}


def _data_parallel_case(rank: int, world: int) -> dict:
    """The global batch over 2 DP ranks × 2 micro-batches vs one process, one micro-batch."""
    from tests.losses.test_objective import FOUR, ONE, make_global_batch, micro_batch, run_step

    group = dist.group.WORLD
    out = {}
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        cfg = LossConfig(objective="uniapl", alpha=0.4, lambda_adv=0.3, loss_agg_mode=mode,
                         kl_coef=0.05, entropy_coef=0.02, max_response_tokens=12)
        batch, weights = make_global_batch(cfg, seed=7)
        ref_loss, ref_grad, ref_metrics = run_step(batch, weights, ONE, cfg)
        mine = FOUR[rank::world]  # 2 micro-batches per rank, uneven slices and lengths
        denoms = step_denominators([batch.mask[torch.tensor(r)] for r in mine],
                                   [batch.kind[torch.tensor(r)] for r in mine],
                                   cfg.max_response_tokens, dp_group=group)
        w = weights.clone().requires_grad_()
        outputs = []
        for rows in mine:
            term = objective_loss(micro_batch(batch, rows, w), denoms, cfg)
            term.loss.backward()
            outputs.append(term)
        grad = w.grad.clone()
        dist.all_reduce(grad, group=group)  # gradients are summed over DP ranks
        metrics = reduce_metrics([o.metrics for o in outputs], [o.maxima for o in outputs],
                                 group=group)
        loss = metrics["objective/loss"]
        out[mode] = {
            "loss_rel": abs(loss - ref_loss) / max(1.0, abs(ref_loss)),
            "grad_rel": _max_err(grad, ref_grad) / max(1.0, float(ref_grad.abs().max())),
            "metrics_rel": max(abs(metrics[k] - v) / max(1.0, abs(v))
                               for k, v in ref_metrics.items()),
            "same_keys": metrics.keys() == ref_metrics.keys(),
        }
    z0 = kto_reference_point(torch.tensor([float(rank + 1)] * (rank + 1)), torch.zeros(rank + 1),
                             dp_group=group)
    out["kto_z0"] = float(z0)  # ranks hold [1] and [2, 2]: global mean 5/3
    return out


def distributed_loss_checks(seed: int = 1234) -> dict:
    """Run every TP=2 / DP=2 check on this rank; return the errors."""
    layout = init_parallel(ParallelConfig(tensor_parallel_size=2), seed)
    try:
        results = {
            "logprob_fp32": _logprob_case(layout.tp_rank, layout.tp, 7, torch.float32),
            "logprob_one_chunk": _logprob_case(layout.tp_rank, layout.tp, 4096, torch.float32),
            "logprob_bf16": _logprob_case(layout.tp_rank, layout.tp, 5, torch.bfloat16),
            "objective_tp2": _objective_at_tp(layout.tp_rank, layout.tp),
        }
        results["dp2"] = _data_parallel_case(layout.rank, layout.world_size)
        return results
    finally:
        layout.destroy()
