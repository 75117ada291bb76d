"""Loss aggregation with global denominators (``specs/objective.md`` §3.5).

Every term is ``Σ (m · ℓ · w) / D`` where ``D`` is fixed for the whole optimizer step
(all micro-batches, all data-parallel ranks) and computed *before* the micro-batch loop by
:func:`step_denominators`. Each micro-batch therefore contributes its share of the global
value, and summing losses (and gradients) over micro-batches and DP ranks gives exactly the
loss of the unsplit global batch — whatever the split or padding (verl#5072).

A *slice* is the set of rows one term averages over: SFT target rows (S), preference
rollouts (P) and student rollouts of SFT prompts (used only by L_ADV|SFT). Each row of a
micro-batch carries its :class:`RowKind`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from uniapl_mcore.losses.config import AGG_MODES

logger = logging.getLogger(__name__)


class RowKind(enum.IntEnum):
    """What a row of a micro-batch is (an int64 ``row_kind`` [b] tensor holds these)."""

    SFT = 0  # prompt + expert (teacher or GT) target: the SFT slice S
    PREF = 1  # prompt + policy rollout with a verifiable reward: the preference slice P
    SFT_ROLLOUT = 2  # student rollout of an SFT prompt: only for L_ADV|SFT
    IGNORE = 3  # padding rows: in no slice


@dataclass(frozen=True)
class SliceDenominators:
    """Global counts of one slice for one optimizer step (all micro-batches, all DP ranks).

    Attributes:
        tokens: Σ of the loss mask over the slice's rows (tokens).
        sequences: number of rows in the slice (B), including rows whose mask is all 0.
        max_response_tokens: T_max of ``seq-mean-token-sum-norm`` (tokens).
    """

    tokens: float
    sequences: float
    max_response_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.sequences < 0:
            raise ValueError(f"denominators: counts must be >= 0, got tokens={self.tokens}, "
                             f"sequences={self.sequences}")
        if self.max_response_tokens <= 0:
            raise ValueError("denominators.max_response_tokens: must be > 0")

    def for_mode(self, mode: str) -> float:
        """The denominator of aggregation ``mode`` (≥ 1 so an empty slice gives 0, not NaN)."""
        check_agg_mode(mode)
        if mode == "token-mean":
            value = self.tokens
        elif mode == "seq-mean-token-sum-norm":
            value = self.sequences * self.max_response_tokens
        else:
            value = self.sequences
        return max(float(value), 1.0)


@dataclass(frozen=True)
class StepDenominators:
    """The denominators of every slice for one optimizer step."""

    sft: SliceDenominators
    pref: SliceDenominators
    sft_rollout: SliceDenominators

    @staticmethod
    def from_counts(counts: torch.Tensor, max_response_tokens: int) -> StepDenominators:
        """From float64 ``counts`` [3, 2] = (tokens, rows) for (SFT, PREF, SFT_ROLLOUT)."""
        values = counts.tolist()
        sft, pref, sft_rollout = (SliceDenominators(t, r, max_response_tokens)
                                  for t, r in values)
        return StepDenominators(sft, pref, sft_rollout)


def check_agg_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode: must be one of {', '.join(AGG_MODES)}; got {mode!r}")


def slice_counts(mask: torch.Tensor, row_kind: torch.Tensor) -> torch.Tensor:
    """float64 [3, 2]: (Σ mask, rows) of this micro-batch for SFT, PREF and SFT_ROLLOUT.

    mask: [b, t] loss mask (0/1 or bool); row_kind: int [b] of :class:`RowKind` values.
    """
    check_row_shapes(mask, row_kind)
    check_binary_mask(mask)
    tokens_per_row = mask.double().sum(dim=-1)
    counts = torch.zeros(3, 2, dtype=torch.float64, device=mask.device)
    for kind in (RowKind.SFT, RowKind.PREF, RowKind.SFT_ROLLOUT):
        rows = row_kind == int(kind)
        counts[int(kind), 0] = tokens_per_row[rows].sum()
        counts[int(kind), 1] = rows.sum()
    return counts


def step_denominators(masks: Iterable[torch.Tensor], row_kinds: Iterable[torch.Tensor],
                      max_response_tokens: int,
                      dp_group: dist.ProcessGroup | None = None) -> StepDenominators:
    """Global denominators of one optimizer step, computed before the micro-batch loop.

    Args:
        masks: this rank's micro-batch loss masks, each [b, t].
        row_kinds: their int [b] :class:`RowKind` tensors.
        max_response_tokens: T_max (tokens).
        dp_group: data-parallel group to sum over (None: this rank only / no process group).

    Returns the same :class:`StepDenominators` on every rank of ``dp_group``.
    """
    total = torch.zeros(3, 2, dtype=torch.float64)
    for mask, row_kind in zip(masks, row_kinds, strict=True):
        total += slice_counts(mask, row_kind).cpu()
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        device = torch.device("cpu")
        if dist.get_backend(dp_group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        reduced = total.to(device)
        dist.all_reduce(reduced, group=dp_group)
        total = reduced.cpu()
    return StepDenominators.from_counts(total, max_response_tokens)


def check_row_shapes(mask: torch.Tensor, row_kind: torch.Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask: expected [b, t], got {tuple(mask.shape)}")
    if tuple(row_kind.shape) != (mask.shape[0],):
        raise ValueError(f"row_kind: expected [{mask.shape[0]}] (one per row of mask), got "
                         f"{tuple(row_kind.shape)}")


def check_binary_mask(mask: torch.Tensor) -> None:
    """Refuse a loss mask holding values other than 0 and 1 (bool masks pass unchecked).

    The sums count a token where ``mask`` is non-zero and the denominators add its value, so
    a fractional weight (0.5) would count fully in one and half in the other. One reduction
    (and, on a GPU, one host sync) per call.
    """
    if mask.dtype == torch.bool:
        return
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask: must hold only 0 and 1 (or be bool); weight tokens through "
                         "the per-token values, not the mask")


def at_least_fp32(values: torch.Tensor) -> torch.Tensor:
    """``values`` in fp32, or unchanged when already fp64 (loss math never runs below fp32)."""
    return values if values.dtype == torch.float64 else values.float()


def masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask`` is set, exactly 0 elsewhere (NaN/inf outside never leak)."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype,
                                                        device=values.device))


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str,
              denom: SliceDenominators) -> torch.Tensor:
    """One micro-batch's share of a globally aggregated per-token loss.

    Args:
        per_token: ℓ, float [b, t].
        mask: m, [b, t] (0/1 or bool); rows outside the slice must be all 0.
        mode: ``token-mean`` Σmℓ / N_tok; ``seq-mean-token-sum`` Σmℓ / B;
            ``seq-mean-token-mean`` Σ_i(Σ_t mℓ / Σ_t m) / B; ``seq-mean-token-sum-norm``
            Σmℓ / (B · T_max). N_tok, B, T_max come from ``denom`` (global).
        denom: the slice's global denominators.

    Returns a 0-dim fp32 tensor; summed over micro-batches and DP ranks it is the global value.
    An empty or fully masked row contributes 0 (never NaN).
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match the per-token loss "
                         f"{tuple(per_token.shape)}")
    check_agg_mode(mode)
    check_binary_mask(mask)
    values = masked(at_least_fp32(per_token), mask)
    if mode == "seq-mean-token-mean":
        row_tokens = mask.float().sum(dim=-1).clamp(min=1.0)
        total = (values.sum(dim=-1) / row_tokens).sum()
    else:
        total = values.sum()
    return total / denom.for_mode(mode)


def row_mean(values: torch.Tensor, rows: torch.Tensor, denom: SliceDenominators) -> torch.Tensor:
    """Σ over selected rows of ``values`` [b] / B (global row count): a summable row mean."""
    return masked(at_least_fp32(values), rows).sum() / max(denom.sequences, 1.0)


def token_mean(values: torch.Tensor, mask: torch.Tensor,
               denom: SliceDenominators) -> torch.Tensor:
    """Σ m·v / N_tok (global): a summable token mean, used for metrics."""
    return masked(at_least_fp32(values), mask).sum() / max(denom.tokens, 1.0)
