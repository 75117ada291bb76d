"""One step's experience: the sequences the loss sees, and their micro-batches.

Rank 0 assembles a list of :class:`Sequence` (SFT targets, PREF rollouts with rewards and
advantages, student rollouts of SFT prompts with adversarial advantages) and broadcasts
it; every rank then takes its data-parallel share and cuts it into
:class:`~uniapl_mcore.trainer.policy_step.PolicyMicroBatch` es of one common shape (PP
needs that). Padding rows (``RowKind.IGNORE``, mask 0) keep every DP rank's micro-batch
count equal; they are in no slice, so the objective is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
import torch.distributed as dist

from uniapl_mcore.losses import RowKind
from uniapl_mcore.trainer.lm_step import causal_mask
from uniapl_mcore.trainer.policy_step import PolicyMicroBatch


@dataclass
class Sequence:
    """One row of the step: prompt + response token ids and its per-row scalars.

    ``kind``: a :class:`RowKind`; ``group``: the prompt group (rollouts of one prompt share
    it; SFT rows get their own); ``advantage``: GRPO advantage (PREF rows);
    ``adv_advantage``: c − b for the adversarial term; ``reward``, ``coef``, ``score``: for
    metrics (NaN-free floats; 0 where not applicable).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    kind: int
    group: int = 0
    advantage: float = 0.0
    adv_advantage: float = 0.0
    reward: float = 0.0
    coef: float = 0.0
    score: float = 0.0

    @property
    def length(self) -> int:
        """Model input length: prompt + response − 1 (the last token is only a target)."""
        return len(self.prompt_ids) + len(self.response_ids) - 1


def broadcast_sequences(seqs: list[Sequence] | None, src: int = 0) -> list[Sequence]:
    """Rank ``src``'s list on every rank (one pickled object broadcast)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(seqs or [])
    payload = [seqs]
    dist.broadcast_object_list(payload, src=src)
    return payload[0]


def pad_to_multiple(seqs: list[Sequence], multiple: int) -> list[Sequence]:
    """Append IGNORE rows (one token, no loss) until ``len`` is a multiple of ``multiple``."""
    out = list(seqs)
    while len(out) % multiple:
        out.append(Sequence([0], [0], int(RowKind.IGNORE), group=-1))
    return out


def _row_tensors(seq: Sequence, width: int) -> tuple[torch.Tensor, ...]:
    ids = seq.prompt_ids + seq.response_ids
    tokens = torch.zeros(width, dtype=torch.long)
    targets = torch.zeros(width, dtype=torch.long)
    mask = torch.zeros(width)
    n = len(ids) - 1
    tokens[:n] = torch.tensor(ids[:-1])
    targets[:n] = torch.tensor(ids[1:])
    if seq.kind != RowKind.IGNORE:
        mask[len(seq.prompt_ids) - 1:n] = 1.0  # positions that predict response tokens
    return tokens, targets, mask


def micro_batches(seqs: Seq[Sequence], rows_per_micro_batch: int, width: int,
                  explicit_mask: bool) -> list[PolicyMicroBatch]:
    """Cut ``seqs`` (this rank's share) into micro-batches of ``rows_per_micro_batch`` rows,
    each [rows, width] (right-padded). ``explicit_mask``: attach the causal mask (CPU)."""
    if any(s.length > width for s in seqs):
        raise ValueError(f"a sequence of {max(s.length for s in seqs)} tokens exceeds the "
                         f"micro-batch width {width}")
    out = []
    positions = torch.arange(width, dtype=torch.long)
    mask = causal_mask(width) if explicit_mask else None
    for lo in range(0, len(seqs), rows_per_micro_batch):
        rows = list(seqs[lo:lo + rows_per_micro_batch])
        tokens, targets, loss_mask = (torch.stack(t) for t in
                                      zip(*(_row_tensors(s, width) for s in rows), strict=True))

        def vec(name: str, rows: list[Sequence] = rows) -> torch.Tensor:
            return torch.tensor([float(getattr(s, name)) for s in rows])

        out.append(PolicyMicroBatch(
            tokens=tokens, position_ids=positions.expand(len(rows), width).contiguous(),
            targets=targets, loss_mask=loss_mask,
            row_kind=torch.tensor([s.kind for s in rows], dtype=torch.long),
            attention_mask=mask, advantages=vec("advantage"),
            adv_advantages=vec("adv_advantage"), rewards=vec("reward"), coef=vec("coef"),
            scores=vec("score")))
    return out


def shard_for_rank(seqs: list[Sequence], dp_rank: int, dp: int) -> list[Sequence]:
    """This data-parallel rank's rows (round-robin, so each rank gets a mix of kinds).

    ``seqs`` must already be padded to a multiple of ``dp`` × rows per micro-batch.
    """
    return seqs[dp_rank::dp]


def step_width(seqs: Seq[Sequence], multiple: int = 8) -> int:
    """The common micro-batch width of the step: the longest row, rounded up."""
    longest = max((s.length for s in seqs), default=1)
    return -(-longest // multiple) * multiple
