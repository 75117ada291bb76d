"""The POLAR reward-model input: (prompt, reference, output) → one token sequence.

Exactly the ``sft`` wrapper of InternLM/POLAR's ``RewardModelClient._encode`` (spec
``objective.md`` §4.2):

1. the prompt is the message contents joined with "\\n" (roles dropped); responses likewise;
2. each piece is tokenised *with* special tokens (a BOS, when the tokenizer has one, counts);
   reference and output are cut to ``max_response_tokens`` keeping their left part; the
   prompt is cut from the left to ⌊(max_tokens − 4 − len(ref) − len(out)) / 2⌋ tokens (it
   appears twice; the 4 reserve the two "\\n", ``<|reward|>`` and the reward token);
3. the pieces are decoded back to text without special tokens and assembled as
   ``P + "\\n" + R_ref + "<|reward|>" + P + "\\n" + R_out + "[UNUSED_TOKEN_130]"``;
4. that text is tokenised with special tokens; its last id must be the reward token.

``strip_think`` drops everything up to the last ``</think>`` (then surrounding whitespace)
from the reference and the output first (spec §8.1). A tokenizer that lacks the two POLAR
tokens (the project's tiny toy tokenizer) gets them added as special tokens to a private
copy; :attr:`PolarTemplate.vocab_size` then reports the grown vocabulary, which the
discriminator model's ``vocab_size`` must hold (:meth:`PolarTemplate.check_model`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniapl_mcore.config import ConfigError
from uniapl_mcore.data.templating import answer_text
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.internlm2 import REWARD_SEPARATOR, REWARD_TOKEN

logger = logging.getLogger(__name__)

POLAR_TOKENS = (REWARD_SEPARATOR, REWARD_TOKEN)
#: Tokens reserved by the budget: two "\n", the separator and the reward token.
RESERVED_TOKENS = 4


class TemplateError(ValueError):
    """A triple that cannot be encoded; the message is one line naming the row / field."""


Messages = str | Sequence[Mapping[str, Any]]


def flatten_contents(messages: Messages, field_name: str = "messages") -> str:
    """A string as is, or the ``content`` of every message joined with "\\n" (roles dropped)."""
    if isinstance(messages, str):
        return messages
    contents = []
    for index, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, str):
            raise TemplateError(f"{field_name}[{index}]: a message needs a string 'content'")
        contents.append(content)
    return "\n".join(contents)


@dataclass(frozen=True)
class PolarTriple:
    """One discriminator input: the prompt, the reference (teacher) and the candidate.

    ``prompt`` is the prompt text (message contents joined with "\\n", see
    :meth:`from_messages`); ``reference`` and ``output`` are response texts.
    """

    prompt: str
    reference: str
    output: str

    @classmethod
    def from_messages(cls, prompt: Messages, reference: Messages,
                      output: Messages) -> PolarTriple:
        """Flatten chat messages (or pass strings through) as POLAR does."""
        return cls(flatten_contents(prompt, "prompt"), flatten_contents(reference, "reference"),
                   flatten_contents(output, "output"))


def _with_polar_tokens(tokenizer: Any) -> tuple[Any, tuple[str, ...]]:
    """``tokenizer`` itself when both POLAR tokens are already special (split out of text),
    else a private copy with the missing ones added as special tokens; and what was added."""
    added_vocab = tokenizer.get_added_vocab()
    missing = [t for t in POLAR_TOKENS if t not in added_vocab]
    if not missing:
        return tokenizer, ()
    vocab = tokenizer.get_vocab()
    grown = tuple(t for t in missing if t not in vocab)
    private = copy.deepcopy(tokenizer)
    private.add_tokens(missing, special_tokens=True)
    if grown:
        logger.info("POLAR template: added %s to a copy of the tokenizer (vocabulary %d → %d)",
                    ", ".join(grown), len(tokenizer), len(private))
    return private, grown


class PolarTemplate:
    """Builds POLAR input ids for one tokenizer.

    Args:
        tokenizer: any Hugging Face tokenizer (BOS optional). It is not modified: missing
            POLAR tokens are added to a private copy.
        max_tokens: POLAR's ``max_length`` (tokens).
        max_response_tokens: POLAR's ``max_response_length`` (tokens), per response.
        strip_think: drop ``<think>…</think>`` (all up to the last ``</think>``, then
            surrounding whitespace) from reference and output.
    """

    def __init__(self, tokenizer: Any, max_tokens: int = 16384, max_response_tokens: int = 4096,
                 strip_think: bool = True) -> None:
        if max_response_tokens <= 0:
            raise ConfigError("max_response_tokens", f"must be > 0, got {max_response_tokens}")
        if max_tokens <= 2 * max_response_tokens + RESERVED_TOKENS:
            raise ConfigError("max_tokens", f"must exceed 2 × max_response_tokens + "
                                            f"{RESERVED_TOKENS} = {2 * max_response_tokens + 4}")
        self.tokenizer, self.added_tokens = _with_polar_tokens(tokenizer)
        self.max_tokens = max_tokens
        self.max_response_tokens = max_response_tokens
        self.strip_think = strip_think
        self.reward_token_id = int(self.tokenizer.convert_tokens_to_ids(REWARD_TOKEN))
        self.separator_id = int(self.tokenizer.convert_tokens_to_ids(REWARD_SEPARATOR))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> PolarTemplate:
        """Load the tokenizer from a local directory (never from the network, never code
        from the directory: a POLAR directory gets the InternLM2 tokenizer reproduction)."""
        from uniapl_mcore.data.tiny_tokenizer import load_tokenizer

        if not Path(path).is_dir():
            raise ConfigError("discriminator.tokenizer", f"{path} is not a directory")
        try:
            tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as err:
            raise ConfigError("discriminator.tokenizer",
                              f"cannot load a tokenizer from {path}: "
                              f"{str(err).strip().splitlines()[0] if str(err) else err}") from None
        return cls(tokenizer, **kwargs)

    @property
    def vocab_size(self) -> int:
        """Token ids this template can produce: ``len(tokenizer)`` after any added tokens."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """An id to right-pad batches with (never read: scores come from the last real token)."""
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def check_model(self, model: ModelConfig, prefix: str = "discriminator.model") -> None:
        """Fail with one line unless ``model`` can embed every id and expects our reward token."""
        if self.vocab_size > model.vocab_size:
            grown = f" (including the added {', '.join(self.added_tokens)})" \
                if self.added_tokens else ""
            raise ConfigError(f"{prefix}.vocab_size",
                              f"{model.vocab_size} cannot hold the tokenizer's {self.vocab_size} "
                              f"tokens{grown}; set it to at least {self.vocab_size}")
        if model.reward_token_id is not None and model.reward_token_id != self.reward_token_id:
            raise ConfigError(f"{prefix}.reward_token_id",
                              f"the model reads its score at id {model.reward_token_id}, but the "
                              f"tokenizer encodes {REWARD_TOKEN} as {self.reward_token_id}")

    # ------------------------------------------------------------------ encoding
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def build_text(self, triple: PolarTriple) -> str:
        """The assembled POLAR text (steps 1–3 of the module docstring)."""
        reference, output = triple.reference, triple.output
        if self.strip_think:
            reference, output = answer_text(reference), answer_text(output)
        ref_ids = self._ids(reference)[: self.max_response_tokens]
        out_ids = self._ids(output)[: self.max_response_tokens]
        prompt_budget = (self.max_tokens - RESERVED_TOKENS - len(ref_ids) - len(out_ids)) // 2
        prompt_ids = self._ids(triple.prompt)
        prompt_ids = prompt_ids[len(prompt_ids) - prompt_budget:] if prompt_budget > 0 else []
        prompt = self._decode(prompt_ids)
        return (prompt + "\n" + self._decode(ref_ids) + REWARD_SEPARATOR
                + prompt + "\n" + self._decode(out_ids) + REWARD_TOKEN)

    def encode(self, triple: PolarTriple, row: int | None = None) -> list[int]:
        """POLAR input ids [n] for ``triple``; the last id is :attr:`reward_token_id`."""
        ids = self._ids(self.build_text(triple))
        if not ids or ids[-1] != self.reward_token_id:
            where = f"row {row}: " if row is not None else ""
            last = ids[-1] if ids else None
            raise TemplateError(f"{where}the encoded POLAR input ends in id {last}, not the "
                                f"reward token {REWARD_TOKEN} ({self.reward_token_id}); does the "
                                "tokenizer append an end-of-sequence token?")
        return ids

    def encode_all(self, triples: Sequence[PolarTriple]) -> list[list[int]]:
        """:meth:`encode` for every triple, in order; errors name the row."""
        out = []
        for row, triple in enumerate(triples):
            if not isinstance(triple, PolarTriple):
                raise TemplateError(f"row {row}: expected a PolarTriple, got "
                                    f"{type(triple).__name__}")
            out.append(self.encode(triple, row))
        return out
