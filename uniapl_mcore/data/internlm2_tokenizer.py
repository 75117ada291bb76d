"""The InternLM2 tokenizer (POLAR reward models), without the checkpoint's remote code.

InternLM2 and POLAR checkpoints ship ``tokenization_internlm2.py`` and point
``tokenizer_config.json``'s ``auto_map`` at it; ``AutoTokenizer`` would run that file (after an
interactive ``trust_remote_code`` prompt). This module reproduces its behaviour instead, read
from the published class (a ``transformers`` 4.x slow tokenizer over SentencePiece) and the
4.x base-class code it relies on, reading only ``tokenizer.model`` (a protobuf, parsed by
``sentencepiece``) and JSON files:

Encoding (``tokenize`` / ``encode`` / ``__call__``)
    1. the text is split on every added token (``added_tokens_decoder`` of
       ``tokenizer_config.json`` plus the named special tokens): leftmost match first, the
       longest one where several start at the same character; a token's ``lstrip`` /
       ``rstrip`` strip the whitespace of its left / right neighbour, ``single_word`` keeps it
       whole only between spaces (``split_special_tokens: true`` disables the split);
    2. every other piece is encoded on its own by SentencePiece (``encode(out_type=str)``),
       so the model's own normaliser decides the leading-space (dummy prefix) handling —
       applied again to each piece after an added token;
    3. pieces map to ids through the added tokens first, then the SentencePiece vocabulary;
    4. with special tokens, ``[bos] + ids`` (``add_bos_token``, default true) ``+ [eos]``
       (``add_eos_token``, default false); BOS / EOS are SentencePiece's own ``bos_id()`` /
       ``eos_id()`` (1 and 2 in InternLM2), not the ids of the ``bos_token`` string.

Decoding (``decode``)
    ids → tokens (added tokens by content; special ids dropped with
    ``skip_special_tokens``); runs of ordinary tokens are turned into text by SentencePiece's
    ``decode`` with transformers' punctuation clean-up (" ." → ".", " ," → ",", " 's" → "'s"
    ...) applied **always** — the published ``convert_tokens_to_string`` calls it
    unconditionally; its prefix-space step compares a token string with a set of ids, so it
    always adds one space that its final ``[1:]`` removes again. A special token inside such
    a run gets one space before it unless the previous token was special too. Added tokens
    that are not special tokens are separate pieces, joined to the rest with " "
    (``spaces_between_special_tokens``). ``clean_up_tokenization_spaces`` (false in
    InternLM2) applies the clean-up once more to the joined text.

``len(tokenizer)`` is the number of ids (one more than the largest), so it is the embedding
rows a model needs; transformers 4.x counted added tokens that rename a SentencePiece piece
(e.g. ``<|reward|>`` over ``[UNUSED_TOKEN_0]``) twice.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: ``tokenizer_class`` values (and ``auto_map`` class names) this module stands in for.
INTERNLM2_TOKENIZER_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")
VOCAB_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
#: Named special tokens, in transformers' ``all_special_tokens`` order.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                      "cls_token", "mask_token")
_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be loaded; one line naming the file and field."""


@dataclass(frozen=True)
class AddedToken:
    """One ``added_tokens_decoder`` entry (``normalized`` has no effect on this tokenizer,
    which never lower-cases)."""

    content: str
    special: bool = False
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def clean_up_tokenization(text: str) -> str:
    """transformers' punctuation clean-up (removes the space before . ? ! , and English
    contractions)."""
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text


def uses_internlm2_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory``'s ``tokenizer_config.json`` names the InternLM2 tokenizer (as
    ``tokenizer_class`` or in ``auto_map``)."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    names = [config.get("tokenizer_class")]
    auto = config.get("auto_map")
    if isinstance(auto, dict):
        entry = auto.get("AutoTokenizer")
        names += entry if isinstance(entry, list) else [entry]
    return any(isinstance(n, str) and n.rsplit(".", 1)[-1] in INTERNLM2_TOKENIZER_CLASSES
               for n in names)


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise TokenizerError(f"{path}: missing")
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: top level must be an object")
    return data


def _token_text(value: Any, where: str) -> str | None:
    """A special-token value: a string, an AddedToken-style dict or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{where}: expected a string or a token object, got {value!r}")


def _parse_added_tokens(config: dict[str, Any], directory: Path) -> dict[int, AddedToken]:
    """``added_tokens_decoder`` of ``tokenizer_config.json`` (else ``added_tokens.json``)."""
    where = f"{directory / CONFIG_FILE}: added_tokens_decoder"
    entries = config.get("added_tokens_decoder")
    if entries is None:
        legacy = _read_json(directory / ADDED_TOKENS_FILE, required=False)
        entries = {}
        for content, index in legacy.items():
            if not isinstance(index, int):
                raise TokenizerError(f"{directory / ADDED_TOKENS_FILE}: {content!r}: id must "
                                     f"be an integer, got {index!r}")
            entries[str(index)] = {"content": content}
    if not isinstance(entries, dict):
        raise TokenizerError(f"{where}: must be an object of id → token")
    added: dict[int, AddedToken] = {}
    for key, entry in entries.items():
        try:
            index = int(key)
        except ValueError:
            raise TokenizerError(f"{where}: key {key!r} is not a token id") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) \
                or not entry["content"]:
            raise TokenizerError(f"{where}.{key}: needs a non-empty string 'content'")
        flags = {}
        for flag in ("special", "lstrip", "rstrip", "single_word"):
            value = entry.get(flag, False)
            if not isinstance(value, bool):
                raise TokenizerError(f"{where}.{key}.{flag}: expected true/false, got {value!r}")
            flags[flag] = value
        added[index] = AddedToken(entry["content"], **flags)
    return added


def _warn_if_fast_class(config: dict[str, Any], directory: Path) -> None:
    """``AutoTokenizer`` (``use_fast`` by default) would load a fast class when ``auto_map``
    names one; its decoding differs from the slow class reproduced here (no punctuation
    clean-up, other spacing around special tokens), so POLAR's own client would decode
    differently. Said once, loudly: the encodings of plain text agree."""
    auto = config.get("auto_map")
    entry = auto.get("AutoTokenizer") if isinstance(auto, dict) else None
    if isinstance(entry, list) and len(entry) > 1 and entry[1]:
        logger.warning("%s names a fast tokenizer class (%s) in auto_map; this project "
                       "reproduces the slow InternLM2Tokenizer, whose decoding differs",
                       directory / CONFIG_FILE, entry[1])


class InternLM2Tokenizer:
    """InternLM2's SentencePiece tokenizer (see the module docstring for the exact rules).

    Offers the part of the Hugging Face tokenizer interface this project uses: ``__call__``
    / ``encode`` / ``tokenize`` / ``decode``, ``convert_tokens_to_ids`` /
    ``convert_ids_to_tokens``, ``get_vocab`` / ``get_added_vocab``, ``add_tokens``, the
    special-token ids, ``len()``.

    Args:
        sp_model_proto: the serialized SentencePiece model (``tokenizer.model`` bytes).
        added_tokens: id → :class:`AddedToken` (``added_tokens_decoder``).
        special_tokens: ``bos_token`` / ``eos_token`` / ... → token text (None: unset).
        additional_special_tokens: further special tokens (by text).
        add_bos_token, add_eos_token: what ``add_special_tokens=True`` adds.
        clean_up_tokenization_spaces: clean up the joined text once more when decoding.
        split_special_tokens: encode added tokens' text as ordinary text.
        source: where the files came from (for messages).
    """

    def __init__(self, sp_model_proto: bytes, added_tokens: dict[int, AddedToken] | None = None,
                 special_tokens: dict[str, str | None] | None = None,
                 additional_special_tokens: Sequence[str] = (), add_bos_token: bool = True,
                 add_eos_token: bool = False, clean_up_tokenization_spaces: bool = False,
                 split_special_tokens: bool = False, source: str = "tokenizer") -> None:
        import sentencepiece as spm

        self._proto = sp_model_proto
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(sp_model_proto)
        except (RuntimeError, OSError) as err:
            raise TokenizerError(f"{source}: not a SentencePiece model ({err})") from None
        self.source = source
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.split_special_tokens = split_special_tokens
        self.special_tokens = {key: None for key in SPECIAL_TOKEN_KEYS}
        self.special_tokens.update(_DEFAULTS if special_tokens is None else special_tokens)
        self.additional_special_tokens = list(additional_special_tokens)
        self._added: dict[int, AddedToken] = {}
        self._added_ids: dict[str, int] = {}
        for index, token in sorted((added_tokens or {}).items()):
            self._register(index, token)
        # transformers adds every special token that is not an added token yet (by its id
        # in the vocabulary), so special tokens are split out of text too
        for text in self.all_special_tokens:
            if text not in self._added_ids:
                self._register(self._piece_id_or_new(text), AddedToken(text, special=True))
        for name, token_id in (("add_bos_token", self.bos_token_id),
                               ("add_eos_token", self.eos_token_id)):
            if getattr(self, name) and token_id is None:
                raise TokenizerError(f"{source}: {name} is true but the SentencePiece model "
                                     f"has no {name[4:7].upper()} piece")
        self._compile()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> InternLM2Tokenizer:
        """Load ``tokenizer.model`` + ``tokenizer_config.json`` (+ ``special_tokens_map.json``,
        which overrides the config's special tokens as in transformers) from a local
        directory. Reads files only; runs nothing from them."""
        directory = Path(directory)
        config = _read_json(directory / CONFIG_FILE, required=True)
        config.update(_read_json(directory / SPECIAL_TOKENS_MAP_FILE, required=False))
        vocab = directory / VOCAB_FILE
        if not vocab.is_file():
            raise TokenizerError(f"{vocab}: missing (the InternLM2 tokenizer is a SentencePiece "
                                 "model)")
        if config.get("sp_model_kwargs"):
            raise TokenizerError(f"{directory / CONFIG_FILE}: sp_model_kwargs "
                                 f"{config['sp_model_kwargs']!r} is not supported")
        special = {key: _token_text(config.get(key, _DEFAULTS.get(key)),
                                    f"{directory / CONFIG_FILE}: {key}")
                   for key in SPECIAL_TOKEN_KEYS}
        extra = config.get("additional_special_tokens") or []
        if not isinstance(extra, list):
            raise TokenizerError(f"{directory / CONFIG_FILE}: additional_special_tokens must "
                                 "be a list")
        flags = {}
        for key, default in (("add_bos_token", True), ("add_eos_token", False),
                             ("clean_up_tokenization_spaces", False),
                             ("split_special_tokens", False)):
            flags[key] = config.get(key, default)
            if not isinstance(flags[key], bool):
                raise TokenizerError(f"{directory / CONFIG_FILE}: {key}: expected true/false, "
                                     f"got {flags[key]!r}")
        _warn_if_fast_class(config, directory)
        tokenizer = cls(vocab.read_bytes(), _parse_added_tokens(config, directory), special,
                        [_token_text(t, f"{directory / CONFIG_FILE}: additional_special_tokens")
                         for t in extra], source=str(vocab), **flags)
        logger.info("InternLM2 tokenizer from %s: %d pieces, %d added tokens, %d ids",
                    directory, tokenizer.sp.get_piece_size(), len(tokenizer._added),
                    len(tokenizer))
        return tokenizer

    def _piece_id_or_new(self, text: str) -> int:
        index = self.sp.piece_to_id(text)
        if index == self.sp.unk_id() and text != self.sp.id_to_piece(index):
            return len(self)
        return index

    def _register(self, index: int, token: AddedToken) -> None:
        if index < 0:
            raise TokenizerError(f"{self.source}: added token {token.content!r} has a negative "
                                 f"id {index}")
        previous = self._added_ids.get(token.content)
        if previous is not None and previous != index:
            raise TokenizerError(f"{self.source}: added token {token.content!r} has two ids, "
                                 f"{previous} and {index}")
        self._added[index] = token
        self._added_ids[token.content] = index

    def _compile(self) -> None:
        tokens = sorted(self._added_ids, key=len, reverse=True)  # longest first at a position
        self._splitter = re.compile("|".join(map(re.escape, tokens))) if tokens else None

    def __deepcopy__(self, memo: dict[int, Any]) -> InternLM2Tokenizer:
        clone = InternLM2Tokenizer(self._proto, dict(self._added), dict(self.special_tokens),
                                   list(self.additional_special_tokens), self.add_bos_token,
                                   self.add_eos_token, self.clean_up_tokenization_spaces,
                                   self.split_special_tokens, self.source)
        memo[id(self)] = clone
        return clone

    # ------------------------------------------------------------------ vocabulary
    def __len__(self) -> int:
        """Ids in use: one more than the largest (SentencePiece pieces and added tokens)."""
        return max([self.sp.get_piece_size() - 1, *self._added]) + 1

    @property
    def vocab_size(self) -> int:
        """SentencePiece pieces (what the published class reports)."""
        return self.sp.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        vocab.update(self._added_ids)
        return vocab

    def get_added_vocab(self) -> dict[str, int]:
        return {token.content: index for index, token in sorted(self._added.items())}

    @property
    def all_special_tokens(self) -> list[str]:
        named = [t for key in SPECIAL_TOKEN_KEYS if (t := self.special_tokens.get(key))]
        return list(dict.fromkeys([*named, *self.additional_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    def _special_id(self, key: str) -> int | None:
        text = self.special_tokens.get(key)
        return None if text is None else self.convert_tokens_to_ids(text)

    @property
    def bos_token_id(self) -> int | None:
        """SentencePiece's BOS id (as the published class), None when the model has none."""
        index = self.sp.bos_id()
        return index if index >= 0 else None

    @property
    def eos_token_id(self) -> int | None:
        index = self.sp.eos_id()
        return index if index >= 0 else None

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> Any:
        """Added tokens by content, else the SentencePiece id (unknown pieces → ``<unk>``)."""
        if isinstance(tokens, str):
            index = self._added_ids.get(tokens)
            return index if index is not None else self.sp.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int],
                              skip_special_tokens: bool = False) -> Any:
        if isinstance(ids, int):
            return self._id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special]

    def _id_to_token(self, index: int) -> str:
        if index in self._added:
            return self._added[index].content
        if not 0 <= index < self.sp.get_piece_size():
            raise ValueError(f"token id {index} is outside the vocabulary [0, {len(self)})")
        return self.sp.id_to_piece(index)

    def add_tokens(self, tokens: Sequence[str], special_tokens: bool = False) -> int:
        """Add tokens as transformers does: a piece already in the vocabulary keeps its id,
        a new one gets the next free id. Returns how many were new to the added tokens."""
        count = 0
        for text in tokens:
            if text in self._added_ids:
                continue
            self._register(self._piece_id_or_new(text), AddedToken(text, special=special_tokens))
            if special_tokens and text not in self.all_special_tokens:
                self.additional_special_tokens.append(text)
            count += 1
        self._compile()
        return count

    # ------------------------------------------------------------------ encoding
    def _split(self, text: str) -> list[str]:
        """Text pieces and added tokens, with the added tokens' strip rules applied."""
        if self._splitter is None or self.split_special_tokens:
            return [text]
        parts: list[str] = []
        last = 0
        for match in self._splitter.finditer(text):
            parts += [text[last:match.start()], match.group()]
            last = match.end()
        parts.append(text[last:])
        for i in range(1, len(parts), 2):  # odd positions hold added tokens
            token = self._added[self._added_ids[parts[i]]]
            left, right = parts[i - 1], parts[i + 1]
            if token.rstrip and right:
                parts[i + 1] = right.lstrip()
            if token.lstrip and left:
                parts[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                parts[i - 1] += parts[i]
                parts[i] = ""
            elif token.single_word and right and right[0] != " ":
                parts[i] += right
                parts[i + 1] = ""
        return parts

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (no BOS / EOS)."""
        tokens: list[str] = []
        for i, part in enumerate(self._split(text)):
            if not part:
                continue
            if i % 2 and part in self._added_ids:
                tokens.append(part)
            else:
                tokens.extend(self.sp.encode(part, out_type=str))
        return tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids [n] of ``text``; with ``add_special_tokens`` BOS / EOS per the config."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens:
            ids = ([self.bos_token_id] if self.add_bos_token else []) + ids + \
                ([self.eos_token_id] if self.add_eos_token else [])
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = self.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    # ------------------------------------------------------------------ decoding
    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """One run of tokens → text (SentencePiece decode, special tokens kept verbatim)."""
        special = set(self.all_special_tokens)
        out, run, prev_special = "", [], False
        for token in tokens:
            if token in special:
                out += ("" if prev_special else " ") + self.sp.decode(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        return clean_up_tokenization(out + self.sp.decode(run))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False,
               spaces_between_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of ``ids`` (see the module docstring)."""
        tokens = self.convert_ids_to_tokens([int(i) for i in ids], skip_special_tokens)
        special = set(self.all_special_tokens)
        separate = {t for t in self._added_ids if t not in special} | \
            {t for t in self.additional_special_tokens
             if self.convert_tokens_to_ids(t) >= self.vocab_size}
        texts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in separate:
                if run and (text := self.convert_tokens_to_string(run)):
                    texts.append(text)
                run = []
                texts.append(token)
            else:
                run.append(token)
        if run:
            texts.append(self.convert_tokens_to_string(run))
        text = (" " if spaces_between_special_tokens else "").join(texts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text
