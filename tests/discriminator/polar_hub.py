"""A tiny POLAR model directory laid out as ``internlm/POLAR-7B`` is on the Hub, built offline.

The tokenizer is a real SentencePiece BPE model trained here on a small corpus (byte
fallback, identity normalisation, no whitespace squeezing, BOS 1 / EOS 2 / UNK 0), grown to
InternLM2's 92544 ids so the POLAR ids are the published ones: ``[UNUSED_TOKEN_0]`` ..
``[UNUSED_TOKEN_146]`` are user-defined pieces at 92397 .. 92543 (ids between the trained
pieces and 92397 are unused fillers that never occur in encodings), and
``tokenizer_config.json`` renames 92397 to ``<|reward|>`` and 92538 .. 92543 to the chat
tokens, as the published configs do. ``config.json`` / ``tokenizer_config.json`` carry the
published ``auto_map`` entries pointing at remote code that is not there (nothing may run it).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

from tests.checkpoint.hf_models import save_tiny_internlm2_reward

VOCAB_SIZE = 92544
SEPARATOR_ID = 92397  # <|reward|>
REWARD_ID = 92527  # [UNUSED_TOKEN_130]
FIRST_UNUSED_ID = 92397
CHAT_TOKENS = {92538: "<|plugin|>", 92539: "<|interpreter|>", 92540: "<|action_end|>",
               92541: "<|action_start|>", 92542: "<|im_end|>", 92543: "<|im_start|>"}

_WORDS = ("the quick brown fox jumps over lazy dog answer question write poem about sea "
          "sky river mountain please explain why how what when numbers list three items "
          "short story reply politely thank you very much it is not that I'm we've they're "
          "don't can't won't hello world data model reward reference output prompt").split()


def corpus(lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic English-like lines with punctuation, digits and contractions."""
    gen = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [gen.choice(_WORDS) for _ in range(gen.randint(3, 12))]
        if gen.random() < 0.3:
            words.insert(gen.randrange(len(words)), str(gen.randint(0, 999)))
        out.append(" ".join(words) + gen.choice([".", "?", "!", ",", ""]))
    return out


def train_sentencepiece(add_dummy_prefix: bool = False, vocab_size: int = 600) -> bytes:
    """A trained SentencePiece BPE model, grown to 92544 pieces (serialized proto bytes)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=buffer, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix,
        split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", num_threads=1,
        minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    piece_type = pb.ModelProto.SentencePiece
    while len(proto.pieces) < FIRST_UNUSED_ID:
        proto.pieces.add(piece=f"<filler_{len(proto.pieces)}>", score=0.0,
                         type=piece_type.UNUSED)
    for i in range(VOCAB_SIZE - FIRST_UNUSED_ID):
        proto.pieces.add(piece=f"[UNUSED_TOKEN_{i}]", score=0.0, type=piece_type.USER_DEFINED)
    return proto.SerializeToString()


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def tokenizer_files(add_dummy_prefix: bool = False) -> dict[str, bytes]:
    """File name → bytes of the published tokenizer files (no remote code)."""
    added = {0: "<unk>", 1: "<s>", 2: "</s>", SEPARATOR_ID: "<|reward|>",
             REWARD_ID: "[UNUSED_TOKEN_130]", **CHAT_TOKENS}
    chat = [CHAT_TOKENS[i] for i in sorted(CHAT_TOKENS, reverse=True)]
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added(t) for i, t in sorted(added.items())},
        "additional_special_tokens": chat,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "decode_with_prefix_space": False, "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "</s>",
        "sp_model_kwargs": None, "tokenizer_class": "InternLM2Tokenizer", "unk_token": "<unk>"}
    special = {"additional_special_tokens": chat, "bos_token": _added("<s>"),
               "eos_token": _added("</s>"), "pad_token": _added("</s>"),
               "unk_token": _added("<unk>")}
    return {"tokenizer.model": train_sentencepiece(add_dummy_prefix),
            "tokenizer_config.json": json.dumps(config, indent=2).encode(),
            "special_tokens_map.json": json.dumps(special, indent=2).encode()}


def save_tokenizer(directory: Path, add_dummy_prefix: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in tokenizer_files(add_dummy_prefix).items():
        (directory / name).write_bytes(data)
    return directory


def save_polar_hub_dir(directory: Path, weights: str = "safetensors", seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> Path:
    """The full directory: config.json, weights (see ``save_tiny_internlm2_reward``),
    tokenizer.model, tokenizer_config.json, special_tokens_map.json."""
    save_tiny_internlm2_reward(directory, dtype=dtype, seed=seed, vocab_size=VOCAB_SIZE,
                               reward_token_id=REWARD_ID, max_position_embeddings=32768,
                               weights=weights)
    return save_tokenizer(directory)
