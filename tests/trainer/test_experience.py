"""Micro-batching of a step's rows: token-budget plans (PP = 1) and the common-width layout
(PP > 1) — every row exactly once, budgets held, DP ranks with equal micro-batch counts,
padding reported — and the gradient does not depend on the split (real Megatron model)."""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.losses import RowKind
from uniapl_mcore.testing import run_distributed
from uniapl_mcore.trainer.experience import (
    Sequence,
    build_micro_batch,
    step_micro_batches,
    step_width,
    token_budget_plan,
)

from .._bodies import save_initial_weights
from ._experience_bodies import mixed_sequences, split_gradient

KINDS = (RowKind.PREF, RowKind.SFT, RowKind.SFT_ROLLOUT)


def _seq(prompt: int, response: int, kind: RowKind = RowKind.PREF, tag: int = 0) -> Sequence:
    return Sequence([tag] * prompt, [tag + 1] * response, int(kind), group=tag)


def _row_ids(batch) -> list[tuple[int, int]]:
    """(first token, length) of every non-IGNORE row: identifies a row of :func:`_seq`."""
    out = []
    for row in range(batch.tokens.shape[0]):
        if int(batch.row_kind[row]) != int(RowKind.IGNORE):
            length = int((batch.loss_mask[row] > 0).sum())
            out.append((int(batch.tokens[row, 0]), length))
    return out


def test_budget_plan_sorts_and_holds_the_budget():
    lengths = [30, 5, 12, 29, 7, 18, 3, 25]
    seqs = [_seq(2, n - 1, tag=i) for i, n in enumerate(lengths)]  # model length = n
    plans = token_budget_plan(seqs, budget_tokens=64)
    assert sorted(i for p in plans for i in p.rows) == list(range(len(seqs)))
    order = [seqs[i].length for p in plans for i in p.rows]
    assert order == sorted(lengths, reverse=True)
    for plan in plans:
        assert plan.width == max(seqs[i].length for i in plan.rows)
        assert plan.slots <= 64
    padded = sum(p.slots for p in plans)
    assert padded - sum(lengths) < 0.25 * sum(lengths)
    assert padded < len(seqs) * max(lengths)  # the common width would waste more


def test_budget_plan_pref_first_pad_multiple_and_long_rows():
    seqs = [_seq(3, 10, RowKind.SFT, 0), _seq(3, 4, RowKind.PREF, 1),
            _seq(3, 40, RowKind.SFT, 2), _seq(3, 6, RowKind.PREF, 3)]
    plans = token_budget_plan(seqs, budget_tokens=32, pad_multiple=8)
    kinds = [seqs[i].kind for p in plans for i in p.rows]
    assert kinds[:2] == [int(RowKind.PREF)] * 2
    assert all(p.width % 8 == 0 for p in plans)
    longest = [p for p in plans if 2 in p.rows]
    assert longest[0].rows == (2,) and longest[0].width == 48  # alone, over the budget
    assert token_budget_plan([], 32) == []


def test_micro_batch_tensors():
    seq = Sequence([5, 6, 7], [8, 9], int(RowKind.PREF), advantage=0.5)
    batch = build_micro_batch([seq, _seq(1, 1, RowKind.IGNORE)], width=6, explicit_mask=True)
    assert batch.tokens[0].tolist() == [5, 6, 7, 8, 0, 0]
    assert batch.targets[0].tolist() == [6, 7, 8, 9, 0, 0]
    assert batch.loss_mask[0].tolist() == [0, 0, 1, 1, 0, 0]
    assert batch.loss_mask[1].sum() == 0
    assert batch.attention_mask.shape == (1, 1, 6, 6)
    assert batch.advantages.tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="exceeds"):
        build_micro_batch([seq], width=3, explicit_mask=False)


@pytest.mark.parametrize("dp", [1, 2, 3])
def test_step_micro_batches_cover_every_row_once_with_equal_counts(dp):
    seqs = [_seq(2 + i % 3, 3 + (7 * i) % 20, KINDS[i % 3], tag=10 * i) for i in range(13)]
    steps = [step_micro_batches(seqs, dp, rank, explicit_mask=False, budget_tokens=48)
             for rank in range(dp)]
    assert len({len(s.batches) for s in steps}) == 1
    seen = sorted(r for s in steps for b in s.batches for r in _row_ids(b))
    assert seen == sorted((s.prompt_ids[0], len(s.response_ids)) for s in seqs)
    for step in steps:
        assert all(b.tokens.numel() <= 48 for b in step.batches)
        assert step.real_tokens == sum(s.length for s in seqs)
        assert step.slot_tokens == sum(b.tokens.numel() for s in steps for b in s.batches)
        assert 0.0 <= step.padding_frac < 0.5
        metrics = step.metrics()
        assert metrics["train/tokens"] == step.real_tokens
        assert metrics["train/padding_frac"] == pytest.approx(step.padding_frac)


def test_common_width_layout_for_pipeline_parallel():
    seqs = [_seq(2, 3 + i, KINDS[i % 3], tag=10 * i) for i in range(7)]
    width = step_width(seqs)
    for rank in range(2):
        step = step_micro_batches(seqs, 2, rank, explicit_mask=True, budget_tokens=None,
                                  rows_per_micro_batch=2)
        assert len(step.batches) == 2  # 7 rows padded to 8 = 2 ranks × 2 × 2
        assert {tuple(b.tokens.shape) for b in step.batches} == {(2, width)}
        kinds = torch.cat([b.row_kind for b in step.batches]).tolist()
        pref = [k == int(RowKind.PREF) for k in kinds]
        assert pref == sorted(pref, reverse=True)  # PREF rows first


def test_empty_step_still_has_one_micro_batch():
    step = step_micro_batches([], 2, 1, explicit_mask=False, budget_tokens=64)
    assert len(step.batches) == 1 and step.batches[0].loss_mask.sum() == 0
    assert step.padding_frac == 1.0


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([grads[k].flatten().double() for k in sorted(grads)])


@pytest.mark.slow
def test_gradient_does_not_depend_on_the_split(tmp_path):
    """Common width in one micro-batch vs token-budget micro-batches (one process and
    DP = 2): same gradient and metrics (the loss uses global denominators)."""
    init = run_distributed(save_initial_weights, 1, args=([], str(tmp_path)))[0]
    ref = run_distributed(split_gradient, 1, args=(init, None))[0]
    assert ref["micro_batches"] == 1
    ref_grad = _flat(ref["grads"])
    assert ref_grad.norm() > 0
    runs = [run_distributed(split_gradient, 1, args=(init, 64))[0],
            *run_distributed(split_gradient, 2, args=(init, 40), timeout_s=300)]
    assert runs[0]["micro_batches"] > 2 and len(set(runs[0]["widths"])) > 1
    assert runs[1]["micro_batches"] == runs[2]["micro_batches"]
    for result in runs:
        grad = _flat(result["grads"])
        assert float((grad - ref_grad).norm() / ref_grad.norm()) <= 1e-5
        for key, value in ref["metrics"].items():
            assert result["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-9), key


def test_mixed_sequences_fixture():
    seqs = mixed_sequences()
    assert {s.kind for s in seqs} == {int(RowKind.SFT), int(RowKind.PREF),
                                      int(RowKind.SFT_ROLLOUT)}
