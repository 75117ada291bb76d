"""Fixes for megatron-core 0.16.1 defects that break documented paths (applied idempotently).

- ``megatron.core.transformer.moe.moe_utils`` reads ``te_general_gemm`` in the router's
  gating function but defines it only when Transformer Engine imports, so every MoE forward
  without Transformer Engine raises ``NameError``. Defining it as ``None`` selects the
  plain ``torch.mm`` branch the code already has.

(The distributed optimizer's torch-Adam checkpoint issues are handled where checkpoints load:
``uniapl_mcore.megatron.checkpointing``.)
"""

from __future__ import annotations


def apply() -> None:
    """Install the fixes (safe to call many times; no-ops when not needed)."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
