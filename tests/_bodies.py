"""Per-rank bodies for the distributed tests (module-level so the harness can pickle them)."""

from __future__ import annotations

from uniapl_mcore.config import load_config
from uniapl_mcore.megatron.checkpointing import save_checkpoint
from uniapl_mcore.megatron.model import build_trainable_model
from uniapl_mcore.runtime.parallel import init_parallel
from uniapl_mcore.trainer.smoke import run_smoke_training


def save_initial_weights(overrides: list[str], ckpt_root: str) -> str:
    """Build the model at this layout and save its freshly initialised weights (step 0)."""
    cfg = load_config(None, overrides)
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout,
                                          cfg.train.max_steps)
        return str(save_checkpoint(ckpt_root, 0, trainable, include_optimizer=False))
    finally:
        layout.destroy()


def train_losses(overrides: list[str], run_dir: str | None = None,
                 init_from: str | None = None) -> list[tuple[int, float, float]]:
    """(step, loss, grad_norm) for each step this run trained."""
    cfg = load_config(None, overrides)
    records = run_smoke_training(cfg, run_dir, init_from)
    return [(r["step"], r["train/loss"], r["train/grad_norm"]) for r in records]


def describe_model(overrides: list[str]) -> dict:
    """Build the policy at one process and report its structure and a causality probe."""
    import torch

    from uniapl_mcore.megatron.schedule import causal_mask

    cfg = load_config(None, overrides)
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        trainable = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout, 1)
        gpt = trainable.chunks[0].module
        params = {name: tuple(p.shape) for name, p in gpt.named_parameters()}
        layer = gpt.decoder.layers[0]
        gpt.eval()
        tokens = torch.randint(0, cfg.model.vocab_size, (2, 8))
        positions = torch.arange(8).expand(2, 8)
        with torch.no_grad():
            logits = gpt(tokens, positions, causal_mask(8))
            changed = tokens.clone()
            changed[:, -1] = (changed[:, -1] + 1) % cfg.model.vocab_size
            logits_changed = gpt(changed, positions, causal_mask(8))
        return {
            "params": params,
            "norm_types": {type(layer.input_layernorm).__name__,
                           type(layer.self_attention.q_layernorm).__name__},
            "logits_shape": tuple(logits.shape),
            "prefix_unchanged": bool(torch.equal(logits[:, :-1], logits_changed[:, :-1])),
            "last_changed": not torch.equal(logits[:, -1], logits_changed[:, -1]),
            "shares_embedding": gpt.share_embeddings_and_output_weights,
        }
    finally:
        layout.destroy()
