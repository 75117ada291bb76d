"""Per-rank bodies for the distributed tests (module-level so the harness can pickle them).

Training here is the production policy update (:func:`uniapl_mcore.trainer.update.
update_policy`: the trainer's micro-batching, π_ref log-probs, global denominators, the
unified loss, Megatron's schedule and optimizer) on a deterministic mixed batch per step, so
every layout and every resumed run sees exactly the same global batch at a given step.
"""

from __future__ import annotations

import torch

from tests._megatron_config import load_run
from uniapl_mcore.config import load_config
from uniapl_mcore.losses import RowKind
from uniapl_mcore.megatron.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from uniapl_mcore.runtime.parallel import init_parallel
from uniapl_mcore.trainer.config import UniaplConfig
from uniapl_mcore.trainer.experience import Sequence
from uniapl_mcore.trainer.update import Reference, build_policy, update_policy

#: A tiny policy (2 layers, width 64, 128-token vocabulary) and a KL term, so every step
#: also runs the reference model's forward.
TINY = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128",
        "model.head_dim=16", "model.vocab_size=128", "model.max_position_embeddings=512",
        "loss.kl_coef=0.01", "loss.entropy_coef=0.01", "train.micro_batch_size=2",
        "optimizer.warmup_steps=0"]


def tiny_config(overrides: list[str]) -> UniaplConfig:
    return load_config(None, TINY + list(overrides), cls=UniaplConfig)


def synthetic_sequences(seed: int, step: int, vocab: int) -> list[Sequence]:
    """A mixed global batch, a deterministic function of (seed, step): four SFT rows and two
    PREF groups of three rollouts (GRPO advantages, adversarial advantages, rewards), every
    row with its own prompt and response lengths."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    def length(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    seqs = [Sequence(ids(length(3, 8)), ids(length(4, 16)), int(RowKind.SFT), group=i)
            for i in range(4)]
    for group in range(2):
        prompt = ids(length(3, 8))
        rewards = torch.rand(3, generator=gen)
        advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
        for j in range(3):
            seqs.append(Sequence(prompt, ids(length(4, 16)), int(RowKind.PREF),
                                 group=10 + group, advantage=float(advantages[j]),
                                 adv_advantage=float(torch.randn(1, generator=gen)),
                                 reward=float(rewards[j])))
    return seqs


def save_initial_weights(overrides: list[str], ckpt_root: str) -> str:
    """Build the policy at this layout and save its freshly initialised weights (step 0)."""
    cfg = tiny_config(overrides)
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        policy = build_policy(cfg, cfg.resolved_stages()[0], layout)
        return str(save_checkpoint(ckpt_root, 0, policy, include_optimizer=False))
    finally:
        layout.destroy()


def train_losses(overrides: list[str], run_dir: str | None = None,
                 init_from: str | None = None) -> list[tuple[int, float, float]]:
    """(step, objective loss, grad norm) for each step this run trained.

    ``init_from``: initial weights (also π_ref's); ``run_dir``: resume from its latest
    checkpoint when there is one, save one at the end.
    """
    cfg = tiny_config(overrides)
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        stage = cfg.resolved_stages()[0]
        policy = build_policy(cfg, stage, layout)
        if init_from is not None:
            load_checkpoint(init_from, policy, include_optimizer=False)
        reference = Reference(cfg, layout) if stage.needs_reference else None
        if reference is not None:
            reference.reset_from(policy)
        root = f"{run_dir}/checkpoints" if run_dir else None
        resume = latest_checkpoint(root) if root else None
        step = int(load_checkpoint(resume, policy)["step"]) if resume else 0
        records = []
        while step < stage.steps:
            seqs = synthetic_sequences(cfg.train.seed, step, cfg.model.vocab_size)
            metrics, _ = update_policy(policy, reference, seqs, stage, step, cfg, layout)
            step += 1
            records.append((step, float(metrics["objective/loss"]),
                            float(metrics["optim/grad_norm"])))
        if root is not None and cfg.checkpoint.save_at_end:
            save_checkpoint(root, step, policy, keep_last=cfg.checkpoint.keep_last)
        return records
    finally:
        layout.destroy()


def describe_model(overrides: list[str]) -> dict:
    """Build the policy at one process and report its structure and a causality probe."""
    from uniapl_mcore.megatron.model import build_trainable_model
    from uniapl_mcore.megatron.schedule import causal_mask

    cfg = load_run(None, overrides)
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
