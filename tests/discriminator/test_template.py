"""The POLAR input template (spec objective.md §4.2) against hand-built token sequences."""

from __future__ import annotations

import pytest

from uniapl_mcore.config import ConfigError
from uniapl_mcore.discriminator.polar_template import (
    PolarTemplate,
    PolarTriple,
    TemplateError,
    flatten_contents,
)
from uniapl_mcore.models.config import ModelConfig

from .tokenizers import BOS_ID, REWARD_ID, SEPARATOR_ID, build_char_tokenizer, char_ids

PROMPT = "0123456789ABCDEF"  # 16 characters = 16 tokens


def _reward_model(vocab_size: int, reward_token_id: int | None = None) -> ModelConfig:
    return ModelConfig(vocab_size=vocab_size, value_head=True, qk_norm=False,
                       reward_token_id=reward_token_id)


def test_bos_tokenizer_truncates_prompt_left_and_responses_right():
    template = PolarTemplate(build_char_tokenizer(), max_tokens=30, max_response_tokens=4)
    assert template.added_tokens == () and template.vocab_size == 96
    ids = template.encode(PolarTriple(PROMPT, "abcdefgh", "uvw"))
    # ref: [<s> a b c] (cut on the right to 4, BOS counted); out: [<s> u v w];
    # prompt budget (30 - 4 - 4 - 4) // 2 = 9 of [<s> 0 … F] kept from the right: "789ABCDEF".
    expected = ([BOS_ID] + char_ids("789ABCDEF\nabc") + [SEPARATOR_ID]
                + char_ids("789ABCDEF\nuvw") + [REWARD_ID])
    assert ids == expected


def test_tokenizer_without_bos_or_polar_tokens_gets_them_added():
    tokenizer = build_char_tokenizer(bos=False, polar_tokens=False)
    template = PolarTemplate(tokenizer, max_tokens=30, max_response_tokens=4)
    assert len(tokenizer) == 94  # the caller's tokenizer is not modified
    assert template.added_tokens == ("<|reward|>", "[UNUSED_TOKEN_130]")
    assert template.vocab_size == 96
    assert (template.separator_id, template.reward_token_id) == (SEPARATOR_ID, REWARD_ID)
    ids = template.encode(PolarTriple(PROMPT, "abcdefgh", "uvw"))
    # ref: [a b c d]; out: [u v w]; prompt budget (30 - 4 - 4 - 3) // 2 = 9 → "789ABCDEF".
    expected = (char_ids("789ABCDEF\nabcd") + [SEPARATOR_ID]
                + char_ids("789ABCDEF\nuvw") + [REWARD_ID])
    assert ids == expected


def test_nothing_is_cut_within_budget():
    template = PolarTemplate(build_char_tokenizer(bos=False), max_tokens=64,
                             max_response_tokens=4)
    ids = template.encode(PolarTriple("hi", "abcd", "stuv"))  # exactly 4 tokens each
    assert ids == (char_ids("hi\nabcd") + [SEPARATOR_ID] + char_ids("hi\nstuv") + [REWARD_ID])


def test_zero_prompt_budget_drops_the_prompt():
    # (13 - 4 - 4 - 4) // 2 = 0: the prompt disappears (POLAR's ``p[-0:]`` would keep it all).
    template = PolarTemplate(build_char_tokenizer(), max_tokens=13, max_response_tokens=4)
    ids = template.encode(PolarTriple(PROMPT, "abc", "uvw"))
    assert ids == ([BOS_ID] + char_ids("\nabc") + [SEPARATOR_ID] + char_ids("\nuvw")
                   + [REWARD_ID])


def test_think_blocks_are_stripped_from_reference_and_output():
    template = PolarTemplate(build_char_tokenizer(), max_tokens=200, max_response_tokens=50)
    triple = PolarTriple("Q", "<think>a</think>b</think> ref ", "<think>\n\n</think>\n\n out\n")
    assert template.build_text(triple) == "Q\nref<|reward|>Q\nout[UNUSED_TOKEN_130]"
    raw = PolarTemplate(build_char_tokenizer(), max_tokens=200, max_response_tokens=50,
                        strip_think=False)
    assert raw.build_text(PolarTriple("Q", "<think>a</think>r", "o")) == \
        "Q\n<think>a</think>r<|reward|>Q\no[UNUSED_TOKEN_130]"


def test_messages_are_flattened_with_newlines():
    triple = PolarTriple.from_messages(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        [{"role": "assistant", "content": "R1"}, {"role": "assistant", "content": "R2"}], "O")
    assert triple == PolarTriple("S\nU", "R1\nR2", "O")
    with pytest.raises(TemplateError, match=r"prompt\[1\]"):
        flatten_contents([{"content": "a"}, {"role": "user"}], "prompt")


def test_vocabulary_and_reward_id_are_checked_against_the_model():
    template = PolarTemplate(build_char_tokenizer(polar_tokens=False), max_tokens=30,
                             max_response_tokens=4)
    template.check_model(_reward_model(96, reward_token_id=REWARD_ID))
    with pytest.raises(ConfigError, match=r"model\.vocab_size: 95 .*96 tokens.*UNUSED_TOKEN_130"):
        template.check_model(_reward_model(95))
    with pytest.raises(ConfigError, match=r"reward_token_id: .* id 7, .* as 95"):
        template.check_model(_reward_model(128, reward_token_id=7))


def test_a_tokenizer_that_appends_eos_is_refused():
    template = PolarTemplate(build_char_tokenizer(append_eos=True), max_tokens=30,
                             max_response_tokens=4)
    with pytest.raises(TemplateError, match=r"row 0: .* ends in id 2, not the reward token"):
        template.encode_all([PolarTriple("a", "b", "c")] * 2)


def test_bad_rows_and_budgets_fail_with_one_line():
    template = PolarTemplate(build_char_tokenizer(), max_tokens=30, max_response_tokens=4)
    with pytest.raises(TemplateError, match=r"row 0: expected a PolarTriple, got tuple"):
        template.encode_all([("p", "r", "o")])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="max_tokens: must exceed"):
        PolarTemplate(build_char_tokenizer(), max_tokens=12, max_response_tokens=4)


def test_project_tiny_tokenizer_round_trips():
    from uniapl_mcore.data.tiny_tokenizer import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["the quick brown fox jumps over the lazy dog"] * 4, 300)
    template = PolarTemplate(tokenizer, max_tokens=256, max_response_tokens=64)
    assert template.vocab_size == len(tokenizer) + 2  # no BOS, both POLAR tokens added
    triple = PolarTriple("the fox", "<think>\n\n</think>\n\nlazy dog", "quick brown")
    ids = template.encode(triple)
    assert ids[-1] == template.reward_token_id
    assert ids.count(template.separator_id) == 1
    assert template.tokenizer.decode(ids) == \
        "the fox\nlazy dog<|reward|>the fox\nquick brown[UNUSED_TOKEN_130]"
