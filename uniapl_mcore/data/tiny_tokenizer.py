"""A tiny Qwen3-style tokenizer trained on a toy corpus, saved in Hugging Face format.

Nothing is downloaded: a byte-level BPE (the ``tokenizers`` library) is trained on the
given texts, wrapped in :class:`transformers.PreTrainedTokenizerFast` with the Qwen3 special
tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) and the ``<think>`` /
``</think>`` added tokens, and given a Qwen3-style chat template (ChatML turns; with
``enable_thinking=False`` the generation prompt ends in the empty think block
``<think>\\n\\n</think>\\n\\n``, exactly like Qwen3's own template).

Byte-level BPE round-trips any text exactly (``decode(encode(t)) == t``), so rollouts of a
tiny model decode to strings the instruction checkers can score.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
#: The response prefix Qwen3 emits with ``enable_thinking=False`` (masked out of SFT).
EMPTY_THINK = "<think>\n\n</think>\n\n"

#: Special tokens first (ids 0..2), then the think tags (ids 3, 4), as added tokens.
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
THINK_TOKENS = (THINK_START, THINK_END)

#: A Qwen3-style chat template (no tools). Assistant turns after the last user turn are
#: rendered with their think block (empty when there is no reasoning), as Qwen3 does; the
#: generation prompt ends in ``<think>\n\n</think>\n\n`` when ``enable_thinking`` is false.
QWEN3_STYLE_CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- set content = m['content'] if m['content'] is string else '' -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- set reasoning = m.get('reasoning_content', '') or '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_query -%}"
    "{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{{- content + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE on ``texts`` and wrap it as a HF fast tokenizer.

    ``vocab_size`` counts every token (256 byte symbols, merges, the 5 special/added
    tokens); it must be at least 262. Deterministic for identical inputs.
    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 262:
        raise ValueError(f"vocab_size must be >= 262 (256 bytes + specials), got {vocab_size}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *THINK_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(sorted(set(texts)), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    tok.chat_template = QWEN3_STYLE_CHAT_TEMPLATE
    logger.info("trained a byte-level BPE tokenizer with %d tokens", len(tok))
    return tok


def build_tiny_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512):
    """Train (see :func:`train_tiny_tokenizer`) and ``save_pretrained`` into ``out_dir``."""
    tok = train_tiny_tokenizer(texts, vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return tok


def load_tokenizer(path: str | Path):
    """Load a saved tokenizer from a local directory (never from the network, never code
    from the directory).

    A directory whose ``tokenizer_config.json`` names the InternLM2 tokenizer (POLAR) gets
    :class:`~uniapl_mcore.data.internlm2_tokenizer.InternLM2Tokenizer`, this project's
    reproduction of that remote code; any other remote-code tokenizer is refused with
    transformers' one-line error instead of an interactive prompt.
    """
    from transformers import AutoTokenizer

    from uniapl_mcore.data.internlm2_tokenizer import InternLM2Tokenizer, uses_internlm2_tokenizer

    if uses_internlm2_tokenizer(path):
        return InternLM2Tokenizer.from_pretrained(path)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                         trust_remote_code=False)
