"""Configuration of the discriminator (section ``discriminator`` of the training config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from uniapl_mcore.config import check
from uniapl_mcore.megatron.config import OptimizerConfig
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig


def _tiny_reward_model() -> ModelConfig:
    """The embedded default: a tiny InternLM2-style reward model (value head).

    ``vocab_size`` 528 holds the toy task's 512-token tokenizer plus the two POLAR tokens
    the template adds to it (``<|reward|>``, ``[UNUSED_TOKEN_130]``), rounded up to a
    multiple of 16. RoPE has no parameters, so ``max_position_embeddings`` can cover
    POLAR's default 16384-token budget at no cost.
    """
    return ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                       num_query_groups=2, head_dim=16, vocab_size=528,
                       max_position_embeddings=16384, qk_norm=False, value_head=True)


@dataclass
class DiscriminatorConfig:
    """The discriminator D(x, y_ref, y) that scores student samples against a reference.

    Attributes:
        role: ``frozen`` (the paper: a converted POLAR checkpoint, never updated),
            ``trainable`` (updated online with its own optimizer: reference vs student
            samples, Bradley–Terry loss), or ``none`` (no discriminator; objectives with an
            adversarial term then fail at start-up).
        checkpoint: ``torch_dist`` directory of a converted POLAR model (``tools/
            convert_checkpoint.py``); required for ``frozen``; optional initial weights for
            ``trainable`` (None: random init from ``model``).
        model: architecture when no checkpoint gives it (the tiny default); a converted
            checkpoint's ``hf/config.json`` takes precedence. Its ``vocab_size`` must hold
            the tokenizer plus the POLAR tokens the template may add (checked at start).
        parallel: the discriminator's own TP / PP layout (its own processes).
        optimizer: the trainable discriminator's optimizer.
        tokenizer: tokenizer directory (None: the checkpoint's ``hf/`` tokenizer when it
            has one, else the policy's tokenizer). A POLAR / InternLM2 tokenizer directory
            loads without its remote code (``uniapl_mcore.data.internlm2_tokenizer``).
        max_tokens, max_response_tokens: POLAR's input budget (tokens); ``max_tokens`` must
            not exceed the model's ``max_position_embeddings`` (checked at start).
        strip_think: drop everything up to the last ``</think>`` before scoring.
        offload: keep weights in host memory between uses (GPU runs).
        update_every_steps: trainable role: one discriminator update every N policy steps.
        batch_size: (prompt, reference, output) triples per scoring micro-batch; an update
            micro-batch holds ``max(1, batch_size // 2)`` (chosen, rejected) pairs.
    """

    role: Literal["frozen", "trainable", "none"] = "trainable"
    checkpoint: str | None = None
    model: ModelConfig = field(default_factory=_tiny_reward_model)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=1e-4, warmup_steps=0,
                                                lr_decay_style="constant"))
    tokenizer: str | None = None
    max_tokens: int = 16384
    max_response_tokens: int = 4096
    strip_think: bool = True
    offload: bool = False
    update_every_steps: int = 1
    batch_size: int = 16

    def __post_init__(self) -> None:
        check(self.role in ("frozen", "trainable", "none"), "role",
              f"must be frozen, trainable or none, got {self.role!r}")
        check(self.role != "frozen" or self.checkpoint is not None, "checkpoint",
              "the frozen role needs a converted POLAR checkpoint (torch_dist directory)")
        check(self.model.value_head, "model.value_head",
              "the discriminator is a reward model: set value_head: true")
        for name in ("max_tokens", "max_response_tokens", "update_every_steps", "batch_size"):
            check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        check(self.max_tokens > 2 * self.max_response_tokens + 4, "max_tokens",
              f"must exceed 2 × max_response_tokens + 4 = {2 * self.max_response_tokens + 4}")

    @property
    def enabled(self) -> bool:
        return self.role != "none"
