#!/usr/bin/env python3
"""Peer comparison with Hugging Face TRL's ``GRPOTrainer`` on the same GRPO work, on CPU.

One tiny Qwen3 model is built with ``transformers`` (``Qwen3ForCausalLM``, the shape of the
trainer's policy bundle), saved with the toy task's tokenizer, and converted to Megatron with
``uniapl_mcore.checkpoint.convert.hf_to_mcore``, so both trainers start from identical
weights. Both sides then do the same work, each in a fresh subprocess of its own:

* **GRPO step** (``trl.grpo_step_tokens_per_s``): optimizer steps of plain GRPO on the toy
  task's prompts, in the same order (``data.shuffle=false`` here, ``shuffle_dataset=False``
  there), the same prompts per step, samples per prompt G, max new tokens, temperature
  (top-p 1, top-k off), learning rate (constant, no warm-up, no weight decay, AdamW betas
  (0.9, 0.95), eps 1e-8, gradient clipping at 1.0), no KL term (``loss.kl_coef=0`` /
  ``beta=0``), PPO clip 0.2 (our dual clip off, as TRL has none), token-mean aggregation over
  the whole batch (``loss_agg_mode=token-mean`` / ``loss_type="dapo"``), group-std
  advantages, one optimizer step per generation (no old-log-prob pass on either side), and
  the same reward: the toy task's IFEval-style strict verifiers
  (``uniapl_mcore.rewards.api.score_item``), as a TRL reward function. Ours is ``uniapl
  train`` (``loss.objective=grpo``, ``discriminator.role=none``): a Ray torch engine rolls
  out, a one-process Megatron-Core policy trains, weights sync back. TRL generates with
  ``model.generate`` in its own process. Both use fp32 weights, no gradient checkpointing
  (TRL's default is on; off here, as ours has none) and no mixed precision. The first step
  of each side is warm-up and not timed; a step is ``Trainer.train_step`` on ours
  (``perf/step_s``) and ``on_step_begin`` → ``on_step_end`` on TRL (generation, reward,
  loss, backward, clipping, optimizer).
* **Training phase** (``trl.train_phase_tokens_per_s``): one FIXED batch of prompt +
  completion sequences (toy prompts; completions of random tokens ending in the end-of-turn
  token, lengths uniform in [max_new_tokens / 8, max_new_tokens], seeded; random
  group-normalised advantages) fed to both: ours builds its token-budget micro-batches
  (``experience.step_micro_batches``) and runs ``policy_train_step`` (log-probs, loss,
  backward, optimizer); TRL pads the batch with its own ``pad`` (prompts left, completions
  right, to the batch's longest, as ``_generate_and_score_completions`` does), splits it with
  ``split_tensor_dict`` into ``per_device_train_batch_size`` micro-batches and runs its own
  ``training_step`` (``compute_loss`` + backward) on each, then gradient clipping,
  ``optimizer.step()`` and the LR schedule, as ``Trainer`` does. Building the tensors from
  token lists is inside the timed region on both sides. One warm-up step, then the mean of
  ``--repeats`` optimizer steps.

Micro-batches: ours packs rows under ``--micro-batch-tokens`` (``data.micro_batch_tokens``,
1024 here: on CPU, micro-batches of about a thousand positions beat both many tiny ones and
one big one); TRL trains the whole step in one micro-batch (``--trl-micro-batch-rows 0``),
its fastest setting here, since it pads the whole generation batch to one width before
splitting it anyway. TRL's loss also computes per-token entropies (its own choice, always
on) and runs its fused LM head on completion positions only; ours takes log-probs at every
position of a row and no entropy (``loss.entropy_coef=0``).

Tokens are counted the same way on both sides: real (non-pad) prompt + completion tokens of
every sequence the step trains on, i.e. Σ (len(prompt ids) + len(completion ids)), the
completion including its end-of-turn token (TRL: ``prompt_mask.sum() +
completion_mask.sum()``; ours: ``train/tokens + train/rows``, since a row's model input is
prompt + completion − 1 positions). Throughput = those tokens / seconds. Padding fraction =
padded positions / positions the model processes in the training forward (ours:
``train/padding_frac``; TRL: 1 − attention-mask sum / [rows × (longest prompt + longest
completion)]).

Threads: every subprocess runs with ``--threads`` torch threads (``torch.set_num_threads``
and ``OMP_NUM_THREADS``; default 1); our rollout engine gets the same number
(``rollout.cpus_per_engine``). Our trainer process and its engine never compute at the same
time (rollout, then training), so each phase of each side uses ``--threads`` threads. Ray
starts its workers at niceness 15; the comparison runs them at 0 (``RAY_worker_niceness``),
the priority of every other process here, which matters only on a busy machine.

Noise: each side runs ``--rounds`` times, alternating (ours, TRL, ours, TRL, ...), and its
fastest run counts (the others are kept in ``results.json`` under ``rounds_tokens_per_s``).
The default is a 4-layer, 256-wide model (compute-bound on CPU); ``--quick`` shrinks model,
batch and lengths for CI (there Python overhead weighs more, on both sides).

    python tools/bench/trl_grpo.py [--quick] [--json FILE] [--threads N] [--workdir DIR]

Needs the ``bench`` extra (``pip install -e ".[bench]"``: trl, accelerate); the library
never imports TRL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402

logger = logging.getLogger("trl_grpo")

ROLES = ("ours-step", "trl-step", "ours-train", "trl-train")


@dataclass
class Settings:
    """Everything both sides share. Model shape: a Qwen3 decoder; lengths in tokens."""

    num_layers: int = 4
    hidden_size: int = 256
    ffn_hidden_size: int = 768
    num_attention_heads: int = 4
    num_query_groups: int = 2
    head_dim: int = 64
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    lr: float = 1e-4
    #: timed optimizer steps of the GRPO-step comparison (after one warm-up step)
    steps: int = 3
    #: prompts of the fixed training-phase batch (each with ``samples_per_prompt`` rows)
    train_prompts: int = 8
    #: timed optimizer steps on the fixed batch (after one warm-up step)
    repeats: int = 3
    #: our token budget per micro-batch (``data.micro_batch_tokens``, as the toy default:
    #: on CPU, little padding and few micro-batches)
    micro_batch_tokens: int = 1024
    #: TRL's ``per_device_train_batch_size`` (0: the whole step in one micro-batch, TRL's
    #: fastest here: it pads the whole generation batch to one width before splitting)
    trl_micro_batch_rows: int = 0
    #: each side runs this many times, alternating; the faster run counts (shared machines)
    rounds: int = 2
    threads: int = 1
    seed: int = 1234

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.samples_per_prompt


QUICK = dict(num_layers=2, hidden_size=128, ffn_hidden_size=384, head_dim=32,
             prompts_per_step=4, max_new_tokens=64, steps=2, train_prompts=4, repeats=2,
             micro_batch_tokens=512)


# --------------------------------------------------------------------------- shared setup


def our_overrides(s: Settings, work: Path) -> list[str]:
    """``uniapl train`` overrides for the comparison (see the module doc)."""
    return [
        "loss.objective=grpo", "discriminator.role=none", "loss.kl_coef=0",
        "loss.dual_clip_c=null", "loss.entropy_coef=0", "loss.loss_agg_mode=token-mean",
        "loss.clip_eps_low=0.2", "loss.clip_eps_high=0.2", "loss.norm_adv_by_std=true",
        f"model.num_layers={s.num_layers}", f"model.hidden_size={s.hidden_size}",
        f"model.ffn_hidden_size={s.ffn_hidden_size}",
        f"model.num_attention_heads={s.num_attention_heads}",
        f"model.num_query_groups={s.num_query_groups}", f"model.head_dim={s.head_dim}",
        f"init_checkpoint={work / 'mcore'}",
        f"prompts_per_step={s.prompts_per_step}",
        f"rollout.samples_per_prompt={s.samples_per_prompt}",
        f"rollout.sampling.max_new_tokens={s.max_new_tokens}",
        f"rollout.sampling.temperature={s.temperature}", "rollout.sampling.top_p=1.0",
        "rollout.sampling.top_k=0", "rollout.num_engines=1", "rollout.dtype=float32",
        f"rollout.cpus_per_engine={s.threads}",
        f"rollout.requests_per_call={s.prompts_per_step}",
        f"rollout.max_batch_rows={s.rows_per_step}",
        f"train.max_steps={s.steps + 1}", f"train.seed={s.seed}",
        f"optimizer.lr={s.lr}", f"optimizer.min_lr={s.lr}", "optimizer.warmup_steps=0",
        "optimizer.lr_decay_style=constant", "optimizer.weight_decay=0.0",
        "optimizer.adam_beta1=0.9", "optimizer.adam_beta2=0.95", "optimizer.adam_eps=1e-8",
        "optimizer.clip_grad=1.0",
        "data.shuffle=false", f"data.micro_batch_tokens={s.micro_batch_tokens}",
        "reward.num_workers=0", "reward.mode=strict",
        "eval.at_start=false", "eval.interval_steps=0", "eval.max_prompts=1",
        "eval.max_new_tokens=1", "eval.save_generations=false",
        "checkpoint.save_at_end=false", "logging.tensorboard=false",
        "logging.progress_bar='off'",
    ]


def our_config(s: Settings, work: Path):
    """Our resolved :class:`UniaplConfig` for ``s``."""
    from uniapl_mcore.config import load_config
    from uniapl_mcore.trainer.config import UniaplConfig

    return load_config(None, our_overrides(s, work), cls=UniaplConfig)


def step_pref_indices(cfg, step: int) -> list[int]:
    """PREF-pool indices our trainer draws at ``step`` (its sampler, GRPO's stage 0)."""
    from uniapl_mcore.data.sampler import MixedBatchSampler

    stage = cfg.resolved_stages()[0]
    data = _data(cfg)
    sampler = MixedBatchSampler(len(data.sft_pool), len(data.pref_pool), cfg.prompts_per_step,
                                stage.expert_fraction(cfg.data.expert_fraction),
                                cfg.train.seed + 7919 * stage.index, cfg.data.shuffle)
    return list(sampler.batch(step).pref)


_DATA: dict[int, Any] = {}


def _data(cfg):
    """The toy task's data bundle (built once per process)."""
    if id(cfg) not in _DATA:
        from uniapl_mcore.data.pipeline import build_data

        _DATA[id(cfg)] = build_data(cfg.data, cfg.reward)
    return _DATA[id(cfg)]


def build_hf_model(s: Settings, cfg, out: Path) -> None:
    """A seeded ``Qwen3ForCausalLM`` of our policy's shape, with the toy tokenizer."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from uniapl_mcore.trainer.rollouts import hf_config_dict

    data = _data(cfg)
    tokenizer = data.templater.tokenizer
    eos = data.templater.eot_id
    config = hf_config_dict(cfg.model, eos, tokenizer.pad_token_id)
    config.pop("architectures"), config.pop("model_type"), config.pop("torch_dtype")
    torch.manual_seed(s.seed)
    model = Qwen3ForCausalLM(Qwen3Config(**config)).float()
    model.generation_config = GenerationConfig(eos_token_id=eos,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prompt_records(cfg, pool_indices: list[int]) -> list[dict[str, Any]]:
    """The PREF rows at ``pool_indices``: messages, our prompt ids and their verifiers."""
    data = _data(cfg)
    rows = data.pref_rows(pool_indices)
    ids = data.prompt_ids("pref", pool_indices)
    return [{"messages": [dict(m) for m in row.messages], "prompt_ids": list(p),
             "constraints": [[c.id, dict(c.kwargs)] for c in row.constraints]}
            for row, p in zip(rows, ids, strict=True)]


def fixed_batch(s: Settings, cfg, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training-phase batch: ``samples_per_prompt`` random completions per prompt
    (lengths uniform in [max_new_tokens/8, max_new_tokens], ending in the end-of-turn
    token) with group-normalised random advantages. Seeded."""
    rng = random.Random(s.seed)
    eos = _data(cfg).templater.eot_id
    rows = []
    for group, rec in enumerate(records):
        rewards = [rng.gauss(0.0, 1.0) for _ in range(s.samples_per_prompt)]
        mean = sum(rewards) / len(rewards)
        std = (sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5
        for reward in rewards:
            n = rng.randint(max(1, s.max_new_tokens // 8), s.max_new_tokens)
            completion = [rng.randrange(5, cfg.model.vocab_size) for _ in range(n - 1)] + [eos]
            rows.append({"prompt_ids": rec["prompt_ids"], "completion_ids": completion,
                         "group": group, "advantage": (reward - mean) / (std + 1e-4)})
    return rows


def check_trl_prompts(hf_dir: Path, records: list[dict[str, Any]]) -> None:
    """TRL renders conversational prompts with the tokenizer's chat template; check that it
    gives exactly our prompt ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for rec in records:
        ids = tokenizer.apply_chat_template(rec["messages"], add_generation_prompt=True,
                                            tokenize=True, return_dict=True,
                                            enable_thinking=False)["input_ids"]
        if list(ids) != rec["prompt_ids"]:
            raise RuntimeError(f"TRL's prompt rendering differs from ours: {ids} vs "
                               f"{rec['prompt_ids']}")


def prepare(s: Settings, work: Path) -> None:
    """Model (HF + Megatron), the step prompts and the fixed batch, under ``work``."""
    from uniapl_mcore.checkpoint.convert import hf_to_mcore

    cfg = our_config(s, work)
    for stale in ("hf", "mcore"):  # a reused --workdir
        shutil.rmtree(work / stale, ignore_errors=True)
    build_hf_model(s, cfg, work / "hf")
    hf_to_mcore(work / "hf", work / "mcore")
    step_prompts = [i for step in range(s.steps + 1) for i in step_pref_indices(cfg, step)]
    records = prompt_records(cfg, step_prompts)
    check_trl_prompts(work / "hf", records)
    train_records = prompt_records(cfg, list(range(s.train_prompts)))
    (work / "prompts.json").write_text(json.dumps(records))
    (work / "fixed_batch.json").write_text(json.dumps(fixed_batch(s, cfg, train_records)))
    (work / "settings.json").write_text(json.dumps(asdict(s)))


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def timed_mean(times: list[float]) -> float:
    return sum(times) / len(times)


# --------------------------------------------------------------------------- ours


def run_ours_step(s: Settings, work: Path) -> dict[str, Any]:
    """``uniapl train`` on the comparison config; tokens and seconds of the timed steps.

    ``generate_s``: rollout + reward + advantages (what precedes the loss); ``train_s``:
    micro-batches, loss, backward, optimizer (``time/train_s``)."""
    run_dir = work / "ours_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "uniapl_mcore.cli", "train", "--run-dir", str(run_dir),
           *our_overrides(s, work)]
    log = work / "ours-step.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(s),
                              check=False)
    if proc.returncode:
        raise RuntimeError(f"uniapl train failed (exit {proc.returncode}); see {log}:\n"
                           + log.read_text()[-3000:])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text()
               .splitlines()]
    timed = [r for r in records if r.get("step", 0) >= 2 and "perf/step_s" in r]
    real = sum(r["train/tokens"] for r in timed)
    return {"tokens": sum(r["train/tokens"] + r["train/rows"] for r in timed),
            "seconds": sum(r["perf/step_s"] for r in timed), "steps": len(timed),
            "padding_frac": 1.0 - real / sum(r["train/padded_tokens"] for r in timed),
            "generate_s": sum(r["time/rollout_s"] + r["time/reward_s"]
                              + r["time/advantages_s"] for r in timed),
            "train_s": sum(r["time/train_s"] for r in timed),
            "weight_sync_s": sum(r["time/weight_sync_s"] for r in timed),
            "reward_mean": sum(r.get("rollout/reward_mean", 0.0) for r in timed) / len(timed)}


def run_ours_train(s: Settings, work: Path) -> dict[str, Any]:
    """Our training phase on the fixed batch: micro-batches + ``policy_train_step``."""
    from uniapl_mcore.losses import RowKind, step_denominators
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import build_trainable_model
    from uniapl_mcore.runtime.parallel import init_parallel
    from uniapl_mcore.trainer.experience import Sequence, step_micro_batches
    from uniapl_mcore.trainer.policy_step import policy_train_step

    cfg = our_config(s, work)
    stage = cfg.resolved_stages()[0]
    batch = json.loads((work / "fixed_batch.json").read_text())
    seqs = [Sequence(r["prompt_ids"], r["completion_ids"], int(RowKind.PREF),
                     group=r["group"], advantage=r["advantage"]) for r in batch]
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        policy = build_trainable_model(cfg.model, cfg.parallel, stage.optimizer, layout,
                                       s.repeats + 1)
        load_checkpoint(cfg.init_checkpoint, policy, include_optimizer=False)
        times, padding = [], 0.0
        for _ in range(s.repeats + 1):
            start = time.perf_counter()
            step = step_micro_batches(seqs, layout.dp, layout.dp_rank, explicit_mask=True,
                                      budget_tokens=cfg.data.micro_batch_tokens,
                                      pad_multiple=cfg.data.pad_to_multiple_of)
            denoms = step_denominators([b.loss_mask for b in step.batches],
                                       [b.row_kind for b in step.batches],
                                       stage.loss.max_response_tokens, layout.dp_group())
            policy_train_step(policy, step.batches, denoms, stage.loss, layout,
                              temperature=s.temperature, vocab_size=cfg.model.vocab_size)
            times.append(time.perf_counter() - start)
            padding = step.padding_frac
            micro = len(step.batches)
    finally:
        layout.destroy()
    tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in batch)
    return {"tokens": tokens * s.repeats, "seconds": sum(times[1:]), "steps": s.repeats,
            "padding_frac": padding, "micro_batches": micro}


# --------------------------------------------------------------------------- TRL


def trl_args(s: Settings, work: Path, rows: int):
    """``GRPOConfig`` matching ours (see the module doc); ``rows``: sequences per step."""
    from trl import GRPOConfig

    per_device = s.trl_micro_batch_rows or rows
    if rows % per_device:
        raise ValueError(f"trl_micro_batch_rows={per_device} must divide the {rows} rows")
    return GRPOConfig(
        output_dir=str(work / "trl_out"), per_device_train_batch_size=per_device,
        gradient_accumulation_steps=rows // per_device, num_generations=s.samples_per_prompt,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0,
        top_k=0, learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        max_grad_norm=1.0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        num_iterations=1, max_steps=s.steps + 1, logging_steps=10**6, save_strategy="no",
        report_to="none", bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        shuffle_dataset=False, seed=s.seed, data_seed=s.seed, dataloader_num_workers=0,
        disable_dropout=True, log_completions=False, mask_truncated_completions=False,
        remove_unused_columns=False, chat_template_kwargs={"enable_thinking": False})


def strict_reward(completions: list[Any], constraints: list[Any], **_: Any) -> list[float]:
    """TRL reward function: our strict IFEval-style verdict of each completion."""
    from uniapl_mcore.rewards.api import RewardItem, score_item
    from uniapl_mcore.rewards.config import RewardConfig

    config = RewardConfig(mode="strict", num_workers=0)
    out = []
    for completion, spec in zip(completions, constraints, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        out.append(score_item(RewardItem.make(text, [tuple(c) for c in spec]), config).reward)
    return out


def _trl_model(work: Path):
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(work / "hf", dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(work / "hf")


def run_trl_step(s: Settings, work: Path) -> dict[str, Any]:
    """TRL's ``GRPOTrainer.train()`` on the same prompts; tokens and seconds of the timed
    steps. ``generate_s``: ``_generate_and_score_completions`` (generation, reward,
    advantages); ``train_s``: the rest of the step (loss, backward, optimizer)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    records = json.loads((work / "prompts.json").read_text())
    dataset = Dataset.from_list([{"prompt": r["messages"],
                                  "constraints": json.dumps(r["constraints"])}
                                 for r in records])
    # per generation: (real tokens, positions the loss forward processes, seconds, reward)
    counts: list[tuple[int, int, float]] = []
    rewards: list[float] = []

    class CountingTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            real = int(out["prompt_mask"].sum() + out["completion_mask"].sum())
            width = out["prompt_ids"].shape[1] + out["completion_ids"].shape[1]
            counts.append((real, out["prompt_ids"].shape[0] * width,
                           time.perf_counter() - start))
            return out

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin, self.times = 0.0, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.begin)

    def ifeval_strict(completions, constraints, **kwargs):
        out = strict_reward(completions, [json.loads(c) for c in constraints])
        rewards.append(sum(out) / len(out))
        return out

    model, tokenizer = _trl_model(work)
    timer = StepTimer()
    trainer = CountingTrainer(model=model, reward_funcs=[ifeval_strict],
                              args=trl_args(s, work, s.rows_per_step),
                              train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[timer])
    trainer.train()
    if len(counts) != len(timer.times):
        raise RuntimeError(f"{len(counts)} generations for {len(timer.times)} steps")
    timed, gens = timer.times[1:], counts[1:]
    real = sum(g[0] for g in gens)
    return {"tokens": real, "seconds": sum(timed), "steps": len(timed),
            "padding_frac": 1.0 - real / sum(g[1] for g in gens),
            "generate_s": sum(g[2] for g in gens),
            "train_s": sum(timed) - sum(g[2] for g in gens),
            "reward_mean": sum(rewards[1:]) / max(1, len(rewards) - 1)}


def run_trl_train(s: Settings, work: Path) -> dict[str, Any]:
    """TRL's loss + backward (``training_step``) + clipping + optimizer on the fixed batch."""
    import torch
    from datasets import Dataset
    from trl import GRPOTrainer
    from trl.trainer.utils import pad, split_tensor_dict

    batch = json.loads((work / "fixed_batch.json").read_text())

    class FixedBatchTrainer(GRPOTrainer):
        def _prepare_inputs(self, generation_batch):
            return generation_batch  # an already-built micro-batch (no generation)

    model, tokenizer = _trl_model(work)
    dataset = Dataset.from_list([{"prompt": "unused"}])
    trainer = FixedBatchTrainer(model=model, reward_funcs=[lambda completions, **k: [0.0]],
                                args=trl_args(s, work, len(batch)), train_dataset=dataset,
                                processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=s.repeats + 1)
    accumulation = trainer.args.gradient_accumulation_steps
    trainer.current_gradient_accumulation_steps = accumulation
    model = trainer.model
    pad_id = tokenizer.pad_token_id

    def build() -> list[dict[str, Any]]:
        prompts = [torch.tensor(r["prompt_ids"]) for r in batch]
        completions = [torch.tensor(r["completion_ids"]) for r in batch]
        inputs = {
            "prompt_ids": pad(prompts, padding_value=pad_id, padding_side="left"),
            "prompt_mask": pad([torch.ones_like(p) for p in prompts], 0, "left"),
            "completion_ids": pad(completions, padding_value=pad_id, padding_side="right"),
            "completion_mask": pad([torch.ones_like(c) for c in completions], 0, "right"),
            "advantages": torch.tensor([r["advantage"] for r in batch]),
        }
        inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
        return split_tensor_dict(inputs, accumulation)

    times, padding = [], 0.0
    for _ in range(s.repeats + 1):
        start = time.perf_counter()
        micro = build()
        trainer.accelerator.gradient_state._set_sync_gradients(True)
        for inputs in micro:
            trainer.training_step(model, inputs, inputs["num_items_in_batch"])
        trainer._clip_grad_norm(model)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        times.append(time.perf_counter() - start)
        slots = sum(m["prompt_ids"].numel() + m["completion_ids"].numel() for m in micro)
        real = sum(int(m["prompt_mask"].sum() + m["completion_mask"].sum()) for m in micro)
        padding = 1.0 - real / slots
    tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in batch)
    return {"tokens": tokens * s.repeats, "seconds": sum(times[1:]), "steps": s.repeats,
            "padding_frac": padding, "micro_batches": accumulation}


RUNNERS = {"ours-step": run_ours_step, "trl-step": run_trl_step,
           "ours-train": run_ours_train, "trl-train": run_trl_train}


# --------------------------------------------------------------------------- driver


def _env(s: Settings) -> dict[str, str]:
    """Subprocess environment: ``s.threads`` threads everywhere; Ray workers (our rollout
    engine) at the same scheduling priority as every other process of the comparison (Ray
    starts them at niceness 15 by default, which only matters on a busy machine)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(s.threads), MKL_NUM_THREADS=str(s.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               RAY_worker_niceness="0")
    return env


def run_role(role: str, s: Settings, work: Path) -> dict[str, Any]:
    """``role`` in a fresh interpreter (``ours-step`` starts ``uniapl train`` itself)."""
    start = time.perf_counter()
    if role == "ours-step":
        result = run_ours_step(s, work)
        result["wall_s"] = time.perf_counter() - start
        return result
    out = work / f"{role}.json"
    log = work / f"{role}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--workdir",
           str(work)]
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=_env(s),
                              check=False)
    if proc.returncode:
        raise RuntimeError(f"{role} failed (exit {proc.returncode}); see {log}:\n"
                           + log.read_text()[-3000:])
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - start
    return result


def _worker(role: str, work: Path) -> int:
    """Subprocess entry: run ``role`` with the saved settings, write ``<role>.json``."""
    s = Settings(**json.loads((work / "settings.json").read_text()))
    set_threads(s.threads)
    result = RUNNERS[role](s, work)
    (work / f"{role}.json").write_text(json.dumps(result))
    return 0


def rate(result: dict[str, Any]) -> float:
    """Tokens per second of one run."""
    return result["tokens"] / result["seconds"]


def measure(s: Settings, work: Path) -> dict[str, dict[str, Any]]:
    """Every role ``s.rounds`` times, alternating sides; each role's fastest run, with the
    runs' throughputs under ``rounds_tokens_per_s``."""
    runs: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    for index in range(s.rounds):
        for role in ROLES:
            result = run_role(role, s, work)
            runs[role].append(result)
            logger.info("round %d %s: %.1f tokens/s %s", index + 1, role, rate(result),
                        json.dumps(result))
    best = {}
    for role, results in runs.items():
        best[role] = dict(max(results, key=rate),
                          rounds_tokens_per_s=[round(rate(r), 1) for r in results])
    return best


def figures_from(results: dict[str, dict[str, Any]]) -> list[Figure]:
    """Throughput figures (ours vs TRL) and the padding fractions of each side."""
    out = [higher_is_better("trl.grpo_step_tokens_per_s", rate(results["ours-step"]),
                            "tokens/s", rate(results["trl-step"])),
           higher_is_better("trl.train_phase_tokens_per_s", rate(results["ours-train"]),
                            "tokens/s", rate(results["trl-train"]))]
    for role in ROLES:
        name = role.replace("-", "_")
        out.append(Figure(f"trl.{name}_padding_frac", results[role]["padding_frac"],
                          "fraction"))
    return out


def breakdown(results: dict[str, dict[str, Any]]) -> list[str]:
    """Per-step seconds of each side's GRPO step: generation+reward vs training."""
    lines = []
    for side in ("ours-step", "trl-step"):
        r = results[side]
        n = r["steps"]
        lines.append(f"{side}: {r['seconds'] / n:.3f} s/step = generate+reward "
                     f"{r['generate_s'] / n:.3f} + train {r['train_s'] / n:.3f} s "
                     f"(+ rest); {r['tokens'] / n:.0f} tokens/step, mean reward "
                     f"{r['reward_mean']:.3f}")
    for side in ("ours-train", "trl-train"):
        r = results[side]
        lines.append(f"{side}: {r['seconds'] / r['steps']:.3f} s/step, "
                     f"{r['micro_batches']} micro-batches")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized settings")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--workdir", help="keep models, logs and results here")
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    for f in fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                            default=None, help=f"(default {f.default}; --quick may change it)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    values = dict(QUICK) if args.quick else {}
    values.update({f.name: getattr(args, f.name) for f in fields(Settings)
                   if getattr(args, f.name) is not None})
    return Settings(**values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.role:
        return _worker(args.role, Path(args.workdir))
    s = settings_from(args)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="trl_grpo."))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    set_threads(s.threads)
    prepare(s, work)
    results = measure(s, work)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    emit(figures_from(results), args.json)
    for line in breakdown(results):
        print(line)
    print("wall s per run: " + ", ".join(f"{role} {results[role]['wall_s']:.1f}"
                                         for role in ROLES))
    print(f"settings: {json.dumps(asdict(s))}")
    print(f"wall: {time.perf_counter() - start:.1f} s; work directory {work}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
