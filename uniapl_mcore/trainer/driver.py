"""Rank 0's part of a step: sample the mixed batch, roll out, reward, score with the
discriminator, compute advantages — producing the step's :class:`Sequence` list.

Everything here is deterministic given (seed, step) and the policy weights: the sampler is a
pure function of the step, each request's sampling seed is derived from (seed, step, row),
rewards and discriminator scores are deterministic. That is what lets a resumed run
reproduce an uninterrupted one exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.config import ConfigError
from uniapl_mcore.data.sampler import MixedBatchSampler
from uniapl_mcore.data.schema import Row
from uniapl_mcore.losses import RowKind, compute_step_advantages, step_statistics
from uniapl_mcore.rewards.api import RewardScorer
from uniapl_mcore.trainer.config import ResolvedStage, UniaplConfig
from uniapl_mcore.trainer.experience import Sequence
from uniapl_mcore.trainer.rollouts import RolloutService, write_policy_hf_dir

logger = logging.getLogger(__name__)

_SEED_MOD = 2**31 - 1


def request_seed(seed: int, step: int, stream: int, index: int) -> int:
    """The sampling seed of request ``index`` of ``stream`` (0 PREF, 1 SFT, 2 eval) at ``step``."""
    return (seed * 1_000_003 + step * 65_537 + stream * 8_191 + index) % _SEED_MOD


def prompt_text(row: Row) -> str:
    """POLAR's prompt: every message's content joined with newlines (roles dropped)."""
    return "\n".join(m["content"] for m in row.messages)


def teacher_text(row: Row) -> str:
    """The teacher response (first one), or the reference when there is none."""
    if row.teacher_responses:
        return row.teacher_responses[0].text
    return row.reference_response or ""


@dataclass
class Rollouts:
    """Student samples of one slice: rows, per-sample prompt index, token ids, the engine's
    log-prob of each token (nats, at the sampling temperature), texts."""

    rows: list[Row]
    prompt_ids: list[list[int]]
    group: list[int]
    tokens: list[list[int]]
    logprobs: list[list[float]]
    texts: list[str]
    truncated: list[bool]


class Driver:
    """Data, engines, rewards and discriminator; lives on global rank 0 only."""

    def __init__(self, cfg: UniaplConfig, run_dir: Path) -> None:
        from uniapl_mcore.data.pipeline import build_data

        self.cfg = cfg
        self.data = build_data(cfg.data, cfg.reward)
        tokenizer = self.data.templater.tokenizer
        if len(tokenizer) > cfg.model.vocab_size:
            raise ConfigError("model.vocab_size", f"{cfg.model.vocab_size} is smaller than the "
                                                  f"tokenizer's {len(tokenizer)} tokens")
        self.eos_id = self.data.templater.eot_id
        hf_dir = write_policy_hf_dir(cfg.model, tokenizer, self.eos_id, run_dir / "policy_hf")
        #: the policy's HF config.json + tokenizer (no weights)
        self.policy_hf_dir = hf_dir
        self.tokenizer_dir = str(hf_dir)
        self.rollout = RolloutService(cfg.rollout, hf_dir, cfg.ray_address)
        self.scorer = RewardScorer(cfg.reward)
        self.samplers: dict[int, MixedBatchSampler] = {}
        self.disc = None
        stages = cfg.resolved_stages()
        if cfg.discriminator.enabled and any(s.needs_discriminator for s in stages):
            from uniapl_mcore.discriminator.client import DiscriminatorClient

            updates = -(-cfg.total_steps // cfg.discriminator.update_every_steps)
            self.disc = DiscriminatorClient.start(
                cfg.discriminator, cfg.discriminator.tokenizer or self.tokenizer_dir,
                seed=cfg.train.seed, max_steps=max(updates, 1))
        self._reference_scores: dict[str, float] = {}

    # ------------------------------------------------------------------ engines

    @property
    def engine_pool(self) -> Any:
        """The rollout engines' pool (the weight sync's destination)."""
        return self.rollout.pool

    def wake_engines(self) -> None:
        """Engines that sleep between rollouts (colocated vLLM) take their GPU memory back."""
        self.rollout.wake()

    def sleep_engines(self) -> None:
        """Colocated engines free the GPU for training (no-op for engines that never sleep)."""
        self.rollout.sleep()

    # ------------------------------------------------------------------ sampling

    def sampler(self, stage: ResolvedStage) -> MixedBatchSampler:
        if stage.index not in self.samplers:
            self.samplers[stage.index] = MixedBatchSampler(
                len(self.data.sft_pool), len(self.data.pref_pool), self.cfg.prompts_per_step,
                stage.expert_fraction(self.cfg.data.expert_fraction),
                self.cfg.train.seed + 7919 * stage.index, self.cfg.data.shuffle)
        return self.samplers[stage.index]

    def check_resumable(self, states: dict[str, dict[str, Any]], checkpoint: Path) -> None:
        """Refuse to resume when the data mix changed since ``checkpoint`` (pool sizes,
        prompts per step, expert fraction, seed, shuffling): its batches would differ."""
        for stage in self.cfg.resolved_stages():
            state = states.get(str(stage.index))
            if state is None:
                continue
            try:
                self.sampler(stage).load_state_dict(state)
            except ValueError as err:
                raise ConfigError("", f"{checkpoint}: cannot resume stage {stage.name}: "
                                      f"{err}") from None

    # ------------------------------------------------------------------ one step

    def collect(self, step: int, stage: ResolvedStage, timer) -> tuple[list[Sequence],
                                                                         dict[str, Any]]:
        """The step's sequences (SFT targets, PREF rollouts, SFT rollouts) and metrics."""
        cfg, metrics = self.cfg, {}
        with timer("sample"):
            batch = self.sampler(stage).batch(step - stage.start_step)
            sft_pairs = self.data.sft_token_pairs(batch.sft)
            sft_rows = self.data.sft_rows(batch.sft)
            pref_rows = self.data.pref_rows(batch.pref)
        seqs = [Sequence(p, t, int(RowKind.SFT), group=-1) for p, t in sft_pairs]
        with timer("rollout"):
            pref = self._roll(pref_rows, self.data.prompt_ids("pref", batch.pref),
                              cfg.rollout.samples_per_prompt, step, stream=0)
            g_s = cfg.sft_samples_per_prompt or cfg.rollout.samples_per_prompt
            sft_roll = self._roll(sft_rows, [p for p, _ in sft_pairs], g_s, step, stream=1) \
                if stage.needs_sft_rollouts else None
            metrics["rollout/weight_version"] = float(self.rollout.weight_version)
        with timer("reward"):
            rewards = torch.tensor([r.reward for r in self.scorer.score(
                [pref.rows[g].reward_item(text) for g, text in zip(pref.group, pref.texts,
                                                                   strict=True)])])
        scores = sft_scores = ref_scores = None
        with timer("discriminator"):
            if self.disc is not None and stage.needs_discriminator:
                scores, ref_scores = self._scores(pref, stage)
                if sft_roll is not None:
                    sft_scores, _ = self._scores(sft_roll, stage)
                if self.disc.trainable and step % cfg.discriminator.update_every_steps == 0:
                    metrics.update(self._update_discriminator(pref, sft_roll))
        with timer("advantages"):
            seqs += self._slice(pref, RowKind.PREF, stage, rewards, scores, ref_scores,
                                metrics, "rollout/")
            if sft_roll is not None:
                seqs += self._slice(sft_roll, RowKind.SFT_ROLLOUT, stage, None, sft_scores,
                                    None, metrics, "rollout_sft/")
        metrics.update({f"data/epoch_{k}": v for k, v in
                        self.sampler(stage).epochs(step - stage.start_step + 1).items()})
        metrics["data/sft_rows"] = float(len(sft_pairs))
        metrics["data/pref_prompts"] = float(len(pref_rows))
        return seqs, metrics

    def _roll(self, rows: list[Row], prompt_ids: list[list[int]], n: int, step: int,
              stream: int) -> Rollouts:
        seeds = [request_seed(self.cfg.train.seed, step, stream, i) for i in range(len(rows))]
        results = self.rollout.generate(prompt_ids, n, seeds)
        out = Rollouts(rows, [], [], [], [], [], [])
        for g, result in enumerate(results):
            for sample in result.samples:
                out.prompt_ids.append(prompt_ids[g])
                out.group.append(g)
                out.tokens.append(list(sample.token_ids))
                out.logprobs.append(list(sample.logprobs))
                out.texts.append(sample.text)
                out.truncated.append(sample.finish_reason == "length")
        return out

    def _triples(self, roll: Rollouts, stage: ResolvedStage, outputs: list[str]):
        from uniapl_mcore.discriminator.polar_template import PolarTriple

        use_gt = stage.loss.adv_reference in ("gt", "gt_delta")
        refs = [(r.reference_response or teacher_text(r)) if use_gt else teacher_text(r)
                for r in roll.rows]
        return [PolarTriple(prompt_text(roll.rows[g]), refs[g], out)
                for g, out in zip(roll.group, outputs, strict=True)]

    def _scores(self, roll: Rollouts, stage: ResolvedStage
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """POLAR scores r of the student samples (and r_T per sample for ``gt_delta``)."""
        scores = torch.tensor(self.disc.score(self._triples(roll, stage, roll.texts)))
        if stage.loss.adv_reference != "gt_delta":
            return scores, None
        from uniapl_mcore.discriminator.polar_template import PolarTriple

        missing = [r for r in roll.rows if r.id not in self._reference_scores]
        if missing:
            got = self.disc.score([PolarTriple(prompt_text(r), r.reference_response or "",
                                               teacher_text(r)) for r in missing])
            self._reference_scores.update({r.id: s for r, s in zip(missing, got, strict=True)})
        return scores, torch.tensor([self._reference_scores[roll.rows[g].id]
                                     for g in roll.group])

    def _update_discriminator(self, pref: Rollouts, sft_roll: Rollouts | None
                              ) -> dict[str, float]:
        """One trainable-discriminator step: (prompt, teacher, expert answer) is preferred
        over (prompt, teacher, student sample) for every student sample of the step."""
        from uniapl_mcore.discriminator.polar_template import PolarTriple

        chosen, rejected = [], []
        for roll in (pref, sft_roll):
            if roll is None:
                continue
            for g, text in zip(roll.group, roll.texts, strict=True):
                row = roll.rows[g]
                expert = row.reference_response or teacher_text(row)
                chosen.append(PolarTriple(prompt_text(row), teacher_text(row), expert))
                rejected.append(PolarTriple(prompt_text(row), teacher_text(row), text))
        return self.disc.update(chosen, rejected) if chosen else {}

    def _slice(self, roll: Rollouts, kind: RowKind, stage: ResolvedStage,
               rewards: torch.Tensor | None, scores: torch.Tensor | None,
               ref_scores: torch.Tensor | None, metrics: dict[str, Any],
               prefix: str) -> list[Sequence]:
        if not roll.tokens:
            return []
        group = torch.tensor(roll.group, dtype=torch.long)
        adv = compute_step_advantages(stage.loss, group, rewards, scores=scores,
                                      reference_scores=ref_scores)
        metrics.update(step_statistics(group, rewards, adv.advantages if rewards is not None
                                       else None, adv.coef, scores, prefix=prefix))
        lengths = torch.tensor([len(t) for t in roll.tokens], dtype=torch.float64)
        metrics[prefix + "response_tokens_mean"] = float(lengths.mean())
        metrics[prefix + "truncated_frac"] = float(sum(roll.truncated) / len(roll.truncated))
        coef = adv.coef if adv.coef is not None else torch.zeros(len(group))
        score = scores if scores is not None else torch.zeros(len(group))
        reward = rewards if rewards is not None else torch.zeros(len(group))
        base = 1_000_000 * (1 + int(kind))
        return [Sequence(roll.prompt_ids[i], roll.tokens[i], int(kind), group=base + g,
                         advantage=float(adv.advantages[i]),
                         adv_advantage=float(adv.adversarial[i]), reward=float(reward[i]),
                         coef=float(coef[i]), score=float(score[i]),
                         rollout_logprobs=roll.logprobs[i])
                for i, g in enumerate(roll.group)]

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, step: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Greedy responses to the held-out prompts, verified; (records, metrics)."""
        ev = self.cfg.eval
        rows = self.data.eval_rows()[:ev.max_prompts or None]
        prompts = self.data.eval_prompt_ids(len(rows))
        results = self.rollout.generate(prompts, 1, [0] * len(prompts), temperature=0.0,
                                        max_tokens=ev.max_new_tokens)
        samples = [r.samples[0] for r in results]
        verdicts = self.scorer.score([row.reward_item(s.text) for row, s in
                                      zip(rows, samples, strict=True)])
        records = []
        for row, prompt, sample, verdict in zip(rows, prompts, samples, verdicts, strict=True):
            passed = verdict.passed
            teacher = teacher_text(row)
            teacher_ids = self.data.templater.encode_target(teacher)
            records.append({
                "id": row.id, "prompt": row.prompt, "response": sample.text,
                "response_tokens": len(sample.token_ids), "teacher_response": teacher,
                "teacher_tokens": len(teacher_ids),
                "reward_strict": float(bool(passed) and all(passed)),
                "reward_partial": float(sum(passed) / len(passed)) if passed else 0.0,
                "_prompt_ids": prompt, "_response_ids": list(sample.token_ids),
                "_teacher_ids": teacher_ids})
        n = max(len(records), 1)
        metrics = {"eval/reward_strict": sum(r["reward_strict"] for r in records) / n,
                   "eval/reward_partial": sum(r["reward_partial"] for r in records) / n,
                   "eval/response_tokens_mean": sum(r["response_tokens"] for r in records) / n,
                   "eval/prompts": float(len(records))}
        return records, metrics

    def shutdown(self) -> None:
        self.scorer.close()
        self.rollout.shutdown()
        if self.disc is not None:
            self.disc.shutdown()
