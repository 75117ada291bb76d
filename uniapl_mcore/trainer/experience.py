"""One step's experience: the sequences the loss sees, and their micro-batches.

Rank 0 assembles a list of :class:`Sequence` (SFT targets, PREF rollouts with rewards and
advantages, student rollouts of SFT prompts with adversarial advantages) and broadcasts
it; every rank then takes its data-parallel share and cuts it into
:class:`~uniapl_mcore.trainer.policy_step.PolicyMicroBatch` es (:func:`step_micro_batches`):

* **token budget** (pipeline parallel size 1): the share's rows are sorted (PREF rows first,
  then longest first) and grouped greedily so that rows × width ≤ ``micro_batch_tokens``,
  each micro-batch right-padded only to its own longest row — little padding waste;
* **common width** (PP > 1: Megatron's P2P sends need one shape): ``rows_per_micro_batch``
  rows per micro-batch, all right-padded to the step's longest row.

Every DP rank plans every rank's share (the list is the same everywhere), so all ranks run
the same number of micro-batches without a collective: shorter plans are topped up with
one-token micro-batches of an ``RowKind.IGNORE`` row (mask 0), like the IGNORE rows of the
common-width layout. IGNORE rows are in no slice and the loss uses global denominators
(``losses.step_denominators``), so the objective does not depend on the split.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
import torch.distributed as dist

from uniapl_mcore.losses import RowKind
from uniapl_mcore.megatron.schedule import causal_mask
from uniapl_mcore.trainer.policy_step import PolicyMicroBatch


@dataclass
class Sequence:
    """One row of the step: prompt + response token ids and its per-row scalars.

    ``kind``: a :class:`RowKind`; ``group``: the prompt group (rollouts of one prompt share
    it; SFT rows get their own); ``advantage``: GRPO advantage (PREF rows);
    ``adv_advantage``: c − b for the adversarial term; ``reward``, ``coef``, ``score``: for
    metrics (NaN-free floats; 0 where not applicable); ``rollout_logprobs``: the engine's
    log-prob of each response token (nats, at the sampling temperature; one per
    ``response_ids`` entry) for rollout rows, None for SFT targets.
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
    rollout_logprobs: list[float] | None = None

    def __post_init__(self) -> None:
        if self.rollout_logprobs is not None and \
                len(self.rollout_logprobs) != len(self.response_ids):
            raise ValueError(f"rollout_logprobs: {len(self.rollout_logprobs)} values for "
                             f"{len(self.response_ids)} response tokens")

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
    """tokens, targets (int64 [width]), loss mask and rollout log-probs (fp32 [width])."""
    ids = seq.prompt_ids + seq.response_ids
    tokens = torch.zeros(width, dtype=torch.long)
    targets = torch.zeros(width, dtype=torch.long)
    mask = torch.zeros(width)
    rollout = torch.zeros(width)
    n = len(ids) - 1
    tokens[:n] = torch.tensor(ids[:-1])
    targets[:n] = torch.tensor(ids[1:])
    first = len(seq.prompt_ids) - 1  # the position that predicts the first response token
    if seq.kind != RowKind.IGNORE:
        mask[first:n] = 1.0
    if seq.rollout_logprobs:
        rollout[first:n] = torch.tensor(seq.rollout_logprobs, dtype=torch.float32)
    return tokens, targets, mask, rollout


@dataclass(frozen=True)
class MicroBatchPlan:
    """One micro-batch before it is built: ``rows`` (indices into the rank's sequence list,
    in batch order) right-padded to ``width`` positions."""

    rows: tuple[int, ...]
    width: int

    @property
    def slots(self) -> int:
        """Positions the model processes: rows × width."""
        return len(self.rows) * self.width


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (≥ 1)."""
    return -(-value // multiple) * multiple


def _batch_order(seqs: Seq[Sequence]) -> list[int]:
    """Indices of ``seqs``: PREF rows first (only their micro-batches need reference
    log-probs), then longest first; ties keep list order (deterministic)."""
    return sorted(range(len(seqs)), key=lambda i: (seqs[i].kind != RowKind.PREF,
                                                   -seqs[i].length))


def token_budget_plan(seqs: Seq[Sequence], budget_tokens: int,
                      pad_multiple: int = 1) -> list[MicroBatchPlan]:
    """Group ``seqs`` into micro-batches of at most ``budget_tokens`` padded positions.

    Rows are taken in :func:`_batch_order`; a micro-batch takes the next row while
    rows × width ≤ ``budget_tokens``, where width is its longest row (model input length,
    :attr:`Sequence.length`) rounded up to ``pad_multiple``. A row longer than the budget
    gets a micro-batch of its own. Returns [] for no rows.
    """
    plans: list[MicroBatchPlan] = []
    rows: list[int] = []
    width = 0
    for index in _batch_order(seqs):
        grown = round_up(max(width, seqs[index].length), pad_multiple)
        if rows and (len(rows) + 1) * grown > budget_tokens:
            plans.append(MicroBatchPlan(tuple(rows), width))
            rows, grown = [], round_up(seqs[index].length, pad_multiple)
        rows.append(index)
        width = grown
    if rows:
        plans.append(MicroBatchPlan(tuple(rows), width))
    return plans


def common_width_plan(seqs: Seq[Sequence], rows_per_micro_batch: int,
                      width: int) -> list[MicroBatchPlan]:
    """``rows_per_micro_batch`` rows per micro-batch, PREF rows first (otherwise list
    order), every micro-batch ``width`` wide (the one shape PP needs)."""
    order = sorted(range(len(seqs)), key=lambda i: seqs[i].kind != RowKind.PREF)
    return [MicroBatchPlan(tuple(order[lo:lo + rows_per_micro_batch]), width)
            for lo in range(0, len(order), rows_per_micro_batch)]


def build_micro_batch(rows: Seq[Sequence], width: int, explicit_mask: bool,
                      rollout_logp: bool = False) -> PolicyMicroBatch:
    """``rows`` as one micro-batch [len(rows), width] (right-padded; position ids 0..width-1
    on every row). ``explicit_mask``: attach the causal mask [1, 1, width, width] (CPU);
    ``rollout_logp``: attach the engines' log-probs [len(rows), width] (0 where a row has
    none)."""
    if any(s.length > width for s in rows):
        raise ValueError(f"a sequence of {max(s.length for s in rows)} tokens exceeds the "
                         f"micro-batch width {width}")
    tokens, targets, loss_mask, rollout = (
        torch.stack(t) for t in zip(*(_row_tensors(s, width) for s in rows), strict=True))

    def vec(name: str) -> torch.Tensor:
        return torch.tensor([float(getattr(s, name)) for s in rows])

    positions = torch.arange(width, dtype=torch.long)
    return PolicyMicroBatch(
        tokens=tokens, position_ids=positions.expand(len(rows), width).contiguous(),
        targets=targets, loss_mask=loss_mask,
        row_kind=torch.tensor([s.kind for s in rows], dtype=torch.long),
        attention_mask=causal_mask(width) if explicit_mask else None,
        rollout_logp=rollout if rollout_logp else None, advantages=vec("advantage"),
        adv_advantages=vec("adv_advantage"), rewards=vec("reward"), coef=vec("coef"),
        scores=vec("score"))


def micro_batches(seqs: Seq[Sequence], rows_per_micro_batch: int, width: int,
                  explicit_mask: bool) -> list[PolicyMicroBatch]:
    """Cut ``seqs`` in list order into micro-batches of ``rows_per_micro_batch`` rows, each
    [rows, width] (right-padded). ``explicit_mask``: attach the causal mask (CPU)."""
    return [build_micro_batch(seqs[lo:lo + rows_per_micro_batch], width, explicit_mask)
            for lo in range(0, len(seqs), rows_per_micro_batch)]


#: Row index of a filler micro-batch's one IGNORE row (it is in no rank's share).
FILLER_ROW = -1


def _ignore_row() -> Sequence:
    """A one-token row outside every loss slice (mask 0)."""
    return Sequence([0], [0], int(RowKind.IGNORE), group=-1)


@dataclass
class StepBatches:
    """This rank's micro-batches of one step and the step's padding, over all DP ranks.

    ``real_tokens``: model input positions of real rows (Σ :attr:`Sequence.length` over
    non-IGNORE rows); ``slot_tokens``: positions processed (Σ rows × width over every
    micro-batch of every DP rank, fillers included).
    """

    batches: list[PolicyMicroBatch]
    real_tokens: int = 0
    slot_tokens: int = 0

    @property
    def padding_frac(self) -> float:
        """Share of processed positions that are padding (0 = none)."""
        return 1.0 - self.real_tokens / self.slot_tokens if self.slot_tokens else 0.0

    def metrics(self) -> dict[str, float]:
        """``train/tokens`` and ``train/padded_tokens`` (positions, all DP ranks) and
        ``train/padding_frac``."""
        return {"train/tokens": float(self.real_tokens),
                "train/padded_tokens": float(self.slot_tokens),
                "train/padding_frac": self.padding_frac}


def _shares(seqs: list[Sequence], dp: int, rows_per_micro_batch: int | None
            ) -> list[list[Sequence]]:
    """Every DP rank's rows. Common width (``rows_per_micro_batch`` set): the list padded with
    IGNORE rows to a multiple of rows × DP, then round-robin. Token budget: round-robin over
    :func:`_batch_order` (each rank gets a mix of kinds and of lengths)."""
    if rows_per_micro_batch is not None:
        padded = pad_to_multiple(seqs, rows_per_micro_batch * dp)
        return [shard_for_rank(padded, rank, dp) for rank in range(dp)]
    order = _batch_order(seqs)
    return [[seqs[i] for i in order[rank::dp]] for rank in range(dp)]


def step_micro_batches(seqs: list[Sequence], dp: int, dp_rank: int, explicit_mask: bool, *,
                       budget_tokens: int | None = None, rows_per_micro_batch: int = 1,
                       pad_multiple: int = 1, rollout_logp: bool | None = None) -> StepBatches:
    """This DP rank's micro-batches of the step's (broadcast) ``seqs``.

    ``budget_tokens`` set: :func:`token_budget_plan` (widths rounded up to ``pad_multiple``);
    None: the common-width layout (``rows_per_micro_batch`` rows of :func:`step_width`),
    which pipeline parallelism needs. Every rank gets the same number of micro-batches.
    ``rollout_logp``: attach the engines' log-probs to every micro-batch (None: when any row
    of ``seqs`` has them; pass the step's answer when ``seqs`` is one PPO mini-batch, so that
    every mini-batch reports the same metrics).
    """
    common = budget_tokens is None
    shares = _shares(seqs, dp, rows_per_micro_batch if common else None)
    if common:
        width = step_width([s for share in shares for s in share])
        plans = [common_width_plan(share, rows_per_micro_batch, width) for share in shares]
    else:
        plans = [token_budget_plan(share, budget_tokens, pad_multiple) for share in shares]
    count = max(1, *(len(p) for p in plans))
    filler = MicroBatchPlan((FILLER_ROW,), 1)
    plans = [p + [filler] * (count - len(p)) for p in plans]
    real = sum(s.length for s in seqs if s.kind != RowKind.IGNORE)
    slots = sum(plan.slots for rank_plans in plans for plan in rank_plans)
    mine, share = plans[dp_rank], shares[dp_rank]
    with_rollout = has_rollout_logprobs(seqs) if rollout_logp is None else rollout_logp
    batches = [build_micro_batch([_ignore_row() if i == FILLER_ROW else share[i]
                                  for i in plan.rows], plan.width, explicit_mask, with_rollout)
               for plan in mine]
    return StepBatches(batches, real, slots)


def has_rollout_logprobs(seqs: Seq[Sequence]) -> bool:
    """Whether any row carries the engine's log-probs (the step has rollouts)."""
    return any(s.rollout_logprobs is not None for s in seqs)


def shard_for_rank(seqs: list[Sequence], dp_rank: int, dp: int) -> list[Sequence]:
    """This data-parallel rank's rows (round-robin, so each rank gets a mix of kinds).

    ``seqs`` must already be padded to a multiple of ``dp`` × rows per micro-batch.
    """
    return seqs[dp_rank::dp]


def step_width(seqs: Seq[Sequence], multiple: int = 8) -> int:
    """The common micro-batch width of the step: the longest row, rounded up."""
    return round_up(max((s.length for s in seqs), default=1), multiple)
