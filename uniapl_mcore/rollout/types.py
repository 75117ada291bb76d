"""Engine-neutral request/response types for rollout generation.

Token ids are ints in the model's vocabulary; log-probs are natural-log probabilities (nats)
of each generated token under the distribution it was drawn from: the logits divided by the
sampling temperature, after any top-k / top-p truncation (the raw logits for greedy requests)
— vLLM's ``processed_logprobs``. With top-k and top-p off this is exactly what the trainer
computes (log-softmax of logits / temperature), so the two can be compared token for token
(``specs/objective.md`` §3.9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from uniapl_mcore.config import check

FinishReason = Literal["stop", "length"]


class StaleWeightsError(RuntimeError):
    """An engine was asked to serve a weight version it does not hold."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one prompt.

    ``n``: samples per prompt. ``temperature`` 0 means greedy. ``top_k`` 0 or -1 disables
    top-k; ``top_p`` 1.0 disables nucleus sampling. ``max_tokens``: new tokens per sample.
    ``stop``: strings that end a sample (needs the engine's tokenizer; the stop string is
    kept in the text and its tokens in ``token_ids``). ``stop_token_ids``: extra ids that end
    a sample besides the model's EOS ids (the stop token is kept). ``seed``: per-request seed;
    sample ``i`` draws from its own generator seeded with ``(seed, i)``, so results do not
    depend on batching or on which engine serves the request.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.n, int) and self.n >= 1, "sampling.n", f"must be >= 1, got {self.n}")
        check(self.temperature >= 0, "sampling.temperature",
              f"must be >= 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        check(isinstance(self.top_k, int) and self.top_k >= -1, "sampling.top_k",
              f"must be -1, 0 (off) or a positive int, got {self.top_k}")
        check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "sampling.max_tokens",
              f"must be >= 1, got {self.max_tokens}")
        check(all(isinstance(s, str) and s for s in self.stop), "sampling.stop",
              "must be non-empty strings")
        check(self.seed is None or isinstance(self.seed, int), "sampling.seed",
              f"must be an int or None, got {self.seed!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: ``prompt_ids`` (non-empty token ids) and how to sample it."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""

    def __post_init__(self) -> None:
        ids = tuple(int(t) for t in self.prompt_ids)
        check(len(ids) > 0, "request.prompt_ids", f"request {self.request_id!r} has no tokens")
        check(min(ids) >= 0, "request.prompt_ids",
              f"request {self.request_id!r} has a negative token id")
        object.__setattr__(self, "prompt_ids", ids)


@dataclass(frozen=True)
class Sample:
    """One generated continuation.

    ``token_ids`` [t] and ``logprobs`` [t] (nats, the sampling distribution) have equal length;
    ``text`` is the decoded continuation ('' when the engine has no tokenizer).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"sample has {len(self.token_ids)} tokens but "
                             f"{len(self.logprobs)} log-probs")


@dataclass(frozen=True)
class GenerationResult:
    """The ``n`` samples of one request, and the weight version that produced them."""

    request_id: str
    samples: tuple[Sample, ...]
    weight_version: int
