"""Hand-built character-level tokenizers whose ids are known in advance (nothing trained).

Every character of :data:`CHARS` is one token: ``id(c) = FIRST_CHAR_ID + CHARS.index(c)``.
Ids 0, 1, 2 are ``<unk>``, ``<s>`` (BOS) and ``</s>``. With ``polar_tokens`` the two POLAR
tokens follow the characters (``<|reward|>`` = 94, ``[UNUSED_TOKEN_130]`` = 95), which makes
a 96-token vocabulary like the tiny InternLM2 reward model's (reward token id 95).
"""

from __future__ import annotations

from pathlib import Path

#: "\n" and the printable ASCII range from " " to "y" (91 characters → ids 3..93).
CHARS = "\n" + "".join(chr(c) for c in range(32, 122))
FIRST_CHAR_ID = 3
BOS_ID = 1
SEPARATOR_ID, REWARD_ID = 94, 95


def char_ids(text: str) -> list[int]:
    """The ids of ``text`` without special tokens (what the tokenizer must produce)."""
    return [FIRST_CHAR_ID + CHARS.index(c) for c in text]


def build_char_tokenizer(bos: bool = True, polar_tokens: bool = True,
                         append_eos: bool = False):
    """A ``PreTrainedTokenizerFast``; ``bos`` prepends ``<s>`` with special tokens,
    ``append_eos`` appends ``</s>`` (a tokenizer POLAR inputs cannot use)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({c: FIRST_CHAR_ID + i for i, c in enumerate(CHARS)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    single = " ".join((["<s>"] if bos else []) + ["$A"] + (["</s>"] if append_eos else []))
    if bos or append_eos:
        core.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>",
                                  pad_token="</s>", bos_token="<s>" if bos else None,
                                  clean_up_tokenization_spaces=False)
    if polar_tokens:
        tok.add_tokens(["<|reward|>", "[UNUSED_TOKEN_130]"], special_tokens=True)
        assert tok.convert_tokens_to_ids("[UNUSED_TOKEN_130]") == REWARD_ID
    return tok


def save_char_tokenizer(directory: Path, **kwargs) -> Path:
    """:func:`build_char_tokenizer` saved with ``save_pretrained``; returns ``directory``."""
    build_char_tokenizer(**kwargs).save_pretrained(str(directory))
    return directory
