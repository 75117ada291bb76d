"""Per-rank bodies for the PPO mini-batch tests (module-level for the harness).

The library's :func:`~uniapl_mcore.trainer.update.update_policy` runs unchanged; the
optimizer step is wrapped to record every update's gradient (DDP ``main_grad``, before the
optimizer touches it) and the weights it was computed at. A plain twin of the policy (the
same ``GPTModel`` without DDP) gives the float64 reference.
"""

from __future__ import annotations

import torch

from uniapl_mcore.losses import RowKind
from uniapl_mcore.megatron import schedule
from uniapl_mcore.megatron.checkpointing import load_checkpoint, unwrap_model
from uniapl_mcore.megatron.schedule import causal_mask
from uniapl_mcore.runtime.parallel import init_parallel
from uniapl_mcore.trainer.experience import Sequence
from uniapl_mcore.trainer.update import (
    Reference,
    build_policy,
    plan_micro_batches,
    split_mini_batches,
    update_policy,
)

from .._bodies import tiny_config

#: GRPO only (no KL, no entropy): the loss of a mini-batch is the clipped surrogate alone.
PPO = ["loss.objective=grpo", "loss.kl_coef=0.0", "loss.entropy_coef=0.0",
       "optimizer.lr=0.02", "optimizer.use_distributed_optimizer=false",
       "rollout.samples_per_prompt=3", "prompts_per_step=4", "loss.clip_eps_high=0.28"]


def pref_sequences(vocab: int, seed: int = 3) -> list[Sequence]:
    """Four PREF groups of three rollouts with advantages and (perturbed) engine log-probs."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for group in range(4):
        prompt = torch.randint(0, vocab, (int(torch.randint(3, 8, (1,), generator=gen)),),
                               generator=gen).tolist()
        adv = torch.randn(3, generator=gen)
        for j in range(3):
            n = int(torch.randint(4, 14, (1,), generator=gen))
            response = torch.randint(0, vocab, (n,), generator=gen).tolist()
            logps = (-4.8 + 0.3 * torch.randn(n, generator=gen)).tolist()
            seqs.append(Sequence(prompt, response, int(RowKind.PREF), group=1_000_000 + group,
                                 advantage=float(adv[j]), rollout_logprobs=logps))
    return seqs


def _record_updates(policy) -> list[dict]:
    """Wrap the optimizer step: each update appends {grads, weights} before stepping."""
    records: list[dict] = []
    real = schedule.optimizer_step

    def recording(trainable):
        gpt = unwrap_model(trainable.chunks[0])
        records.append({
            "grads": {n: p.main_grad.detach().clone() for n, p in gpt.named_parameters()},
            "weights": {n: p.detach().clone() for n, p in gpt.state_dict().items()
                        if isinstance(p, torch.Tensor)}})
        return real(trainable)

    schedule.optimizer_step = recording
    return records


def _response_logp(module, seq: Sequence, vocab: int, temperature: float) -> torch.Tensor:
    """log π(response token) float64 [n] from a plain forward of ``module``."""
    ids = seq.prompt_ids + seq.response_ids
    tokens = torch.tensor([ids[:-1]])
    width = tokens.shape[1]
    logits = module(tokens, torch.arange(width)[None], causal_mask(width))
    logp = (logits[0, :, :vocab].double() / temperature).log_softmax(-1)
    first = len(seq.prompt_ids) - 1
    targets = torch.tensor(ids[1:])
    return logp[torch.arange(width), targets][first:]


def _reference_grad(twin, weights: dict, part: list[Sequence], old: dict[int, torch.Tensor],
                    cfg) -> dict[str, torch.Tensor]:
    """∇ of the token-mean clipped surrogate over ``part`` at ``weights``, π_old = ``old``."""
    twin.load_state_dict(weights, strict=False)
    for p in twin.parameters():
        p.requires_grad_(True)
        p.grad = None
    loss_cfg = cfg.loss
    total, tokens = torch.zeros((), dtype=torch.float64), 0
    for seq in part:
        logp = _response_logp(twin, seq, cfg.model.vocab_size, cfg.rollout.sampling.temperature)
        ratio = (logp - old[id(seq)]).clamp(-20, 20).exp()
        a = torch.tensor(seq.advantage, dtype=torch.float64)
        l1 = -a * ratio
        l2 = -a * ratio.clamp(1 - loss_cfg.clip_eps_low, 1 + loss_cfg.clip_eps_high)
        loss = torch.maximum(l1, l2)
        if a < 0:
            loss = torch.minimum(loss, -a * loss_cfg.dual_clip_c)
        total = total + loss.sum()
        tokens += len(seq.response_ids)
    (total / tokens).backward()
    return {n: p.grad.detach().clone() for n, p in twin.named_parameters()}


def second_update_vs_reference(init: str, overrides: list[str]) -> dict:
    """Train one step with the PPO settings; return the step's metrics and, for every update
    after the first, max |library gradient − reference gradient| (π_old from the step's
    start)."""
    cfg = tiny_config(PPO + list(overrides))
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        stage = cfg.resolved_stages()[0]
        policy = build_policy(cfg, stage, layout)
        load_checkpoint(init, policy, include_optimizer=False)
        seqs = pref_sequences(cfg.model.vocab_size)
        twin = Reference(cfg, layout).modules[0]
        twin.load_state_dict(unwrap_model(policy.chunks[0]).state_dict(), strict=False)
        with torch.no_grad():
            old = {id(s): _response_logp(twin, s, cfg.model.vocab_size,
                                         cfg.rollout.sampling.temperature) for s in seqs}
        records = _record_updates(policy)
        metrics, _ = update_policy(policy, None, seqs, stage, 0, cfg, layout)
        parts = split_mini_batches(seqs, cfg.train.mini_batches) * cfg.train.epochs
        errors, scales = [], []
        for record, part in list(zip(records, parts, strict=True))[1:]:
            ref = _reference_grad(twin, record["weights"], part, old, cfg)
            errors.append(max(float((record["grads"][n].double() - g).abs().max())
                              for n, g in ref.items()))
            scales.append(max(float(g.abs().max()) for g in ref.values()))
        return {"metrics": metrics, "errors": errors, "scales": scales,
                "updates": len(records)}
    finally:
        schedule.optimizer_step = _real_optimizer_step
        layout.destroy()


_real_optimizer_step = schedule.optimizer_step


def one_update_matches_direct_step(init: str) -> dict:
    """M = E = 1 with the engine's log-probs attached and rollout IS off vs. the plain policy
    step on the same micro-batches without them: max |Δ| of the loss and of every weight."""
    from uniapl_mcore.losses import step_denominators
    from uniapl_mcore.trainer.policy_step import policy_train_step

    cfg = tiny_config(PPO[:-2] + ["prompts_per_step=4", "loss.kl_coef=0.01"])
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        stage = cfg.resolved_stages()[0]
        results = []
        for attach in (True, False):
            policy = build_policy(cfg, stage, layout)
            load_checkpoint(init, policy, include_optimizer=False)
            reference = Reference(cfg, layout)
            reference.reset_from(policy)
            seqs = pref_sequences(cfg.model.vocab_size)
            if attach:
                metrics, _ = update_policy(policy, reference, seqs, stage, 0, cfg, layout)
            else:
                for s in seqs:
                    s.rollout_logprobs = None
                batches = plan_micro_batches(seqs, cfg, layout).batches
                reference.attach_logprobs(batches)
                denoms = step_denominators([b.loss_mask for b in batches],
                                           [b.row_kind for b in batches],
                                           stage.loss.max_response_tokens, layout.dp_group())
                metrics = policy_train_step(policy, batches, denoms, stage.loss, layout,
                                            temperature=cfg.rollout.sampling.temperature,
                                            vocab_size=cfg.model.vocab_size)
            weights = {n: p.detach().clone()
                       for n, p in unwrap_model(policy.chunks[0]).named_parameters()}
            results.append((metrics, weights))
        (m1, w1), (m0, w0) = results
        return {"loss": (m1["objective/loss"], m0["objective/loss"]),
                "weights_equal": all(torch.equal(w1[n], w0[n]) for n in w0),
                "mismatch": m1.get("mismatch/abs_diff_mean")}
    finally:
        layout.destroy()
