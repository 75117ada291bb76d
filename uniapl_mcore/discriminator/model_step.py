"""Megatron steps of the discriminator: batched scoring and one Bradley–Terry update.

Runs inside an initialised Megatron world (one discriminator actor per rank). Sequences are
right-padded into micro-batches with an explicit causal mask on CPU (Megatron's default mask
is built on CUDA); right padding never reaches a real token through a causal mask, so a
row's score — the value head at its last real token, the reward token — does not depend on
what it is batched with beyond float round-off. Megatron's forward-backward schedule runs
the micro-batches, pipelined when PP > 1; results exist on the last pipeline stage only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from uniapl_mcore.megatron.model import TrainableModel
from uniapl_mcore.megatron.schedule import causal_mask, run_schedule, train_on_batches
from uniapl_mcore.runtime.parallel import ParallelLayout


@dataclass
class ScoreBatch:
    """``b`` right-padded rows of ``s`` positions.

    tokens, position_ids: int64 [b, s]; last_index: int64 [b], the position of each row's last
    real token; valid: bool [b], False on filler rows (added so every micro-batch of a
    pipelined call has one shape); attention_mask: bool [1, 1, s, s] (True = blocked) or None
    (CUDA: Megatron's causal mask).
    """

    tokens: torch.Tensor
    position_ids: torch.Tensor
    last_index: torch.Tensor
    valid: torch.Tensor
    attention_mask: torch.Tensor | None

    def to(self, device: torch.device) -> ScoreBatch:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return ScoreBatch(self.tokens.to(device), self.position_ids.to(device),
                          self.last_index.to(device), self.valid.to(device), mask)


def pad_rows(rows: Sequence[Sequence[int] | None], width: int, pad_id: int,
             explicit_mask: bool) -> ScoreBatch:
    """One micro-batch from ``rows`` (None = a filler row) right-padded to ``width`` tokens."""
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    last = torch.zeros(len(rows), dtype=torch.long)
    valid = torch.zeros(len(rows), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            last[i], valid[i] = len(row) - 1, True
    positions = torch.arange(width, dtype=torch.long).unsqueeze(0).expand_as(tokens).contiguous()
    return ScoreBatch(tokens, positions, last, valid, causal_mask(width) if explicit_mask else None)


def make_batches(groups: Sequence[Sequence[Sequence[int] | None]], pad_id: int,
                 uniform: bool, explicit_mask: bool) -> list[ScoreBatch]:
    """Micro-batches from row groups; ``uniform`` pads all to one width (needed for PP > 1)."""
    widths = [max((len(r) for r in group if r), default=1) for group in groups]
    if uniform:
        widths = [max(widths)] * len(groups)
    return [pad_rows(group, width, pad_id, explicit_mask)
            for group, width in zip(groups, widths, strict=True)]


def score_batches(sequences: Sequence[Sequence[int]], rows_per_batch: int, pad_id: int,
                  uniform: bool, explicit_mask: bool) -> list[ScoreBatch]:
    """``sequences`` cut into micro-batches of ``rows_per_batch`` rows, in order; with
    ``uniform`` the last one is filled up with filler rows."""
    groups: list[list[Sequence[int] | None]] = [
        list(sequences[i: i + rows_per_batch]) for i in range(0, len(sequences), rows_per_batch)]
    if uniform:
        for group in groups:
            group.extend([None] * (rows_per_batch - len(group)))
    return make_batches(groups, pad_id, uniform, explicit_mask)


def pair_batches(chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
                 pairs_per_batch: int, pad_id: int, uniform: bool,
                 explicit_mask: bool) -> list[ScoreBatch]:
    """Micro-batches of ``2 p`` rows: the chosen rows of ``p`` pairs, then their rejected rows
    (row i and row p + i form pair i). The last micro-batch is filled with filler pairs so
    that every micro-batch has ``p`` pair slots."""
    groups: list[list[Sequence[int] | None]] = []
    for start in range(0, len(chosen), pairs_per_batch):
        c = list(chosen[start: start + pairs_per_batch])
        r = list(rejected[start: start + pairs_per_batch])
        fill: list[Sequence[int] | None] = [None] * (pairs_per_batch - len(c))
        groups.append([*c, *fill, *r, *fill])
    return make_batches(groups, pad_id, uniform, explicit_mask)


def last_token_scores(output: torch.Tensor, batch: ScoreBatch) -> torch.Tensor:
    """fp32 [b]: the value head's output [b, s, 1] at each row's last real token."""
    rows = torch.arange(output.shape[0], device=output.device)
    return output[rows, batch.last_index, 0].float()


def _collect_scores(batch: ScoreBatch, output: torch.Tensor):
    scores = last_token_scores(output, batch).detach()
    return torch.zeros((), device=output.device), {"scores": scores, "valid": batch.valid}


def _score_forward_step(batch: ScoreBatch, model):
    output = model(batch.tokens, batch.position_ids, batch.attention_mask)
    return output, partial(_collect_scores, batch)


def forward_scores(chunks: list[Any], batches: list[ScoreBatch],
                   layout: ParallelLayout) -> torch.Tensor | None:
    """Scores fp32 [n real rows], in batch order, on the last pipeline stage; None elsewhere."""
    outputs = run_schedule(chunks, batches, _score_forward_step, layout, forward_only=True)
    if not layout.is_last_stage:
        return None
    return torch.cat([o["scores"][o["valid"]] for o in outputs]).cpu()


def _pair_loss(batch: ScoreBatch, output: torch.Tensor):
    """Bradley–Terry loss sum over this micro-batch's pairs; Megatron divides by the pair
    count of the whole step (``calculate_per_token_loss``: one pair = one "token").

    Returns (Σ −log σ(r_c − r_r), pairs, {"bt": [loss_sum, correct, margin_sum, pairs]}).
    """
    scores = last_token_scores(output, batch)
    p = scores.shape[0] // 2
    margin = scores[:p] - scores[p:]
    mask = batch.valid[:p].float()
    loss_sum = (-torch.nn.functional.logsigmoid(margin) * mask).sum()
    pairs = mask.sum()
    stats = torch.stack([loss_sum.detach(), ((margin > 0).float() * mask).sum(),
                         (margin.detach() * mask).sum(), pairs])
    return loss_sum, pairs.to(torch.int), {"bt": stats}


def _pair_forward_step(batch: ScoreBatch, model):
    output = model(batch.tokens, batch.position_ids, batch.attention_mask)
    return output, partial(_pair_loss, batch)


def bradley_terry_step(trainable: TrainableModel, batches: list[ScoreBatch],
                       layout: ParallelLayout) -> dict[str, float]:
    """One optimizer + LR step on the mean over pairs of −log σ(r(chosen) − r(rejected)).

    ``batches`` come from :func:`pair_batches`. Returns ``disc/*`` metrics on the last
    pipeline stage (loss, accuracy and margin from this step's forward, i.e. before the
    update; the learning rate used; the global gradient norm before clipping); the last two
    only on other stages.
    """
    outputs, optim = train_on_batches(trainable, batches, _pair_forward_step, layout)
    metrics = {"disc/lr": optim.lr, "disc/grad_norm": optim.grad_norm}
    if layout.is_last_stage:
        total = torch.stack([o["bt"].double().cpu() for o in outputs]).sum(0)
        pairs = float(total[3].clamp(min=1))
        metrics.update({"disc/loss": float(total[0]) / pairs,
                        "disc/accuracy": float(total[1]) / pairs,
                        "disc/margin_mean": float(total[2]) / pairs})
    return metrics
