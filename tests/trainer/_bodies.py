"""Per-rank bodies for the trainer tests (module-level for the harness)."""

from __future__ import annotations

import re

import torch

from tests._megatron_config import load_run
from uniapl_mcore.losses import LossConfig, RowKind, step_denominators
from uniapl_mcore.megatron.checkpointing import load_checkpoint
from uniapl_mcore.megatron.model import build_trainable_model
from uniapl_mcore.megatron.schedule import causal_mask
from uniapl_mcore.runtime.layout import stage_layer_range
from uniapl_mcore.runtime.parallel import init_parallel
from uniapl_mcore.trainer.policy_step import PolicyMicroBatch, policy_forward_backward

ROWS, SEQ, VOCAB = 8, 20, 128
KINDS = [RowKind.SFT, RowKind.PREF, RowKind.PREF, RowKind.SFT_ROLLOUT, RowKind.SFT,
         RowKind.PREF, RowKind.PREF, RowKind.SFT]


def global_rows(seed: int = 7) -> list[PolicyMicroBatch]:
    """Eight one-row batches of a mixed global batch with different prompt/response lengths."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i, kind in enumerate(KINDS):
        prompt, response = 3 + i % 4, 4 + (5 * i) % 13  # lengths differ row to row
        tokens = torch.randint(0, VOCAB, (1, SEQ + 1), generator=gen)
        mask = torch.zeros(1, SEQ)
        mask[0, prompt - 1:prompt - 1 + response] = 1.0
        noise = 0.1 * torch.randn(1, SEQ, generator=gen)
        rows.append(PolicyMicroBatch(
            tokens=tokens[:, :-1], targets=tokens[:, 1:],
            position_ids=torch.arange(SEQ).unsqueeze(0), loss_mask=mask,
            row_kind=torch.tensor([int(kind)]), attention_mask=causal_mask(SEQ),
            old_logp=-4.85 + noise, ref_logp=-4.85 - noise,
            advantages=torch.randn(1, generator=gen), adv_advantages=torch.randn(1, generator=gen)))
    return rows


def _stack(rows: list[PolicyMicroBatch]) -> PolicyMicroBatch:
    def cat(name):
        values = [getattr(r, name) for r in rows]
        return None if values[0] is None else torch.cat(values)

    return PolicyMicroBatch(
        tokens=cat("tokens"), position_ids=cat("position_ids"), targets=cat("targets"),
        loss_mask=cat("loss_mask"), row_kind=cat("row_kind"),
        attention_mask=rows[0].attention_mask, old_logp=cat("old_logp"),
        ref_logp=cat("ref_logp"), advantages=cat("advantages"),
        adv_advantages=cat("adv_advantages"))


def unified_gradient(init: str, micro_batches_per_rank: int,
                     overrides: tuple[str, ...] = ()) -> dict:
    """Gradient of the unified loss for the global batch split over DP ranks × micro-batches
    (``overrides``: the layout, e.g. pipeline stages). ``grads`` are this rank's, under
    global layer indices (``decoder.layers.<global>.…``); ``metrics`` are empty off the last
    pipeline stage."""
    cfg = load_run(None, ["optimizer.use_distributed_optimizer=false", *overrides])
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout, 1)
        load_checkpoint(init, trainable, include_optimizer=False)
        rows = global_rows()[layout.dp_rank::layout.dp]
        per = len(rows) // micro_batches_per_rank
        micro = [_stack(rows[i:i + per]) for i in range(0, len(rows), per)]
        loss_cfg = LossConfig(objective="uniapl", alpha=0.4, lambda_adv=0.5, kl_coef=0.01,
                              entropy_coef=0.01)
        denoms = step_denominators([m.loss_mask for m in micro], [m.row_kind for m in micro],
                                   loss_cfg.max_response_tokens, layout.dp_group())
        metrics = policy_forward_backward(trainable, micro, denoms, loss_cfg, layout)
        gpt = trainable.chunks[0].module
        layers = stage_layer_range(cfg.model.num_layers, cfg.parallel, layout.pp_rank)
        grads = {_global_name(name, layers): p.main_grad.detach().clone()
                 for name, p in gpt.named_parameters()}
        return {"grads": grads, "metrics": metrics}
    finally:
        layout.destroy()


def _global_name(name: str, layers: range) -> str:
    """``decoder.layers.<local>.…`` of a stage holding ``layers`` → the global index."""
    match = re.match(r"decoder\.layers\.(\d+)\.", name)
    if match is None:
        return name
    return f"decoder.layers.{layers[int(match.group(1))]}.{name[match.end():]}"
