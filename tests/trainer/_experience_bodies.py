"""Per-rank bodies for the micro-batching tests (module-level for the harness)."""

from __future__ import annotations

import random

from tests._megatron_config import load_run
from uniapl_mcore.losses import RowKind

KINDS = (RowKind.SFT, RowKind.PREF, RowKind.PREF, RowKind.SFT_ROLLOUT, RowKind.PREF)


def mixed_sequences(count: int = 11, seed: int = 3, vocab: int = 128):
    """``count`` rows of mixed kinds, prompt lengths 2..9 and response lengths 1..24."""
    from uniapl_mcore.trainer.experience import Sequence

    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(2, 9))]
        response = [rng.randrange(vocab) for _ in range(rng.randint(1, 24))]
        out.append(Sequence(prompt, response, int(KINDS[i % len(KINDS)]), group=i // 2,
                            advantage=rng.gauss(0, 1), adv_advantage=rng.gauss(0, 1)))
    return out


def split_gradient(init: str, budget_tokens: int | None,
                   rows_per_micro_batch: int = 64) -> dict:
    """Gradient and metrics of the unified loss over :func:`mixed_sequences` from the
    weights at ``init``, cut into micro-batches by ``experience.step_micro_batches`` at this
    rank's DP layout (``budget_tokens`` None: the common-width layout)."""
    from uniapl_mcore.losses import LossConfig, step_denominators
    from uniapl_mcore.megatron.checkpointing import load_checkpoint, unwrap_model
    from uniapl_mcore.megatron.model import build_trainable_model
    from uniapl_mcore.runtime.parallel import init_parallel
    from uniapl_mcore.trainer.experience import step_micro_batches
    from uniapl_mcore.trainer.policy_step import policy_forward_backward

    cfg = load_run(None, ["optimizer.use_distributed_optimizer=false"])
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout, 1)
        load_checkpoint(init, trainable, include_optimizer=False)
        step = step_micro_batches(mixed_sequences(), layout.dp, layout.dp_rank,
                                  explicit_mask=True, budget_tokens=budget_tokens,
                                  rows_per_micro_batch=rows_per_micro_batch)
        loss_cfg = LossConfig(objective="uniapl", alpha=0.4, lambda_adv=0.5, kl_coef=0.0,
                              entropy_coef=0.01)
        denoms = step_denominators([b.loss_mask for b in step.batches],
                                   [b.row_kind for b in step.batches],
                                   loss_cfg.max_response_tokens, layout.dp_group())
        metrics = policy_forward_backward(trainable, step.batches, denoms, loss_cfg, layout)
        gpt = unwrap_model(trainable.chunks[0])
        grads = {name: p.main_grad.detach().clone() for name, p in gpt.named_parameters()}
        return {"grads": grads, "metrics": metrics, "micro_batches": len(step.batches),
                "widths": [b.tokens.shape[1] for b in step.batches]}
    finally:
        layout.destroy()
