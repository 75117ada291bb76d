"""End to end: toy task → build_data → mixed sampler → DP shard → pack → trainer batches."""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.data.config import DataConfig, DataSourceConfig
from uniapl_mcore.data.packing import PackItem, pack
from uniapl_mcore.data.pipeline import build_data
from uniapl_mcore.data.templating import ChatTemplater
from uniapl_mcore.rewards.config import RewardConfig

from . import fixtures as fx


@pytest.fixture
def toy_bundle(toy_config, cache_dir):
    cfg = DataConfig(toy=toy_config, cache_dir=cache_dir, max_prompt_tokens=256,
                     max_response_tokens=256, micro_batch_tokens=1024)
    return build_data(cfg)


def test_toy_bundle_pools_and_eval(toy_bundle):
    summary = toy_bundle.summary()
    assert summary["train_rows"] == 120 and summary["eval_rows"] == 20
    assert len(toy_bundle.sft_pool) == len(toy_bundle.pref_pool) == 120  # use=both
    assert summary["truncation"]["sft_truncated"] == 0
    evals = toy_bundle.eval_rows()
    assert len(evals) == 20 and all(r.split == "test" and r.constraints for r in evals)


def test_one_step_from_sampler_to_micro_batches(toy_bundle):
    sampler = toy_bundle.sampler(prompts_per_step=10, seed=3)
    batch = sampler.next_batch()
    assert (len(batch.sft), len(batch.pref)) == (2, 8)
    shard = batch.shard(rank=1, world_size=2)
    items = toy_bundle.sft_items(shard.sft)
    assert [it.key for it in items] == [("sft", i) for i in shard.sft]
    # SFT text = the teacher response, ending with the end-of-turn token, prefix masked
    tpl = toy_bundle.templater
    row = toy_bundle.pref_rows([int(i) for i in shard.sft])[0]  # same row index: use=both
    ex = toy_bundle.sft_examples(shard.sft)[0]
    target = tpl.decode([t for t, m in zip(ex.input_ids, ex.loss_mask, strict=True) if m])
    assert target == row.teacher_responses[0].text + "<|im_end|>"
    # PREF rows carry verifiers and the teacher reference; prompt ids are the rollout prompt
    pref_rows = toy_bundle.pref_rows(shard.pref)
    assert all(r.constraints and r.teacher_responses for r in pref_rows)
    prompts = toy_bundle.prompt_ids("pref", shard.pref)
    assert prompts[0] == tpl.encode_prompt(pref_rows[0].messages)
    # a rollout (here: the teacher text) appended to the prompt, loss on the response only
    rollout = tpl.encode_target(pref_rows[0].teacher_responses[0].text)
    items.append(PackItem(prompts[0] + rollout, [0] * len(prompts[0]) + [1] * len(rollout),
                          key=("pref", shard.pref[0])))
    batches, stats = pack(items, micro_batch_tokens=1024, pad_id=tokenizer_pad(toy_bundle))
    assert stats.sequences == len(items) and 0 <= stats.padding_share < 1
    tb = batches[0]
    assert tb.tokens.shape == tb.labels.shape == tb.loss_mask.shape == (1, 1024)
    assert tb.attention_mask().shape == (1, 1, 1024, 1024)
    assert int(tb.loss_mask.sum()) == sum(sum(it.loss_mask[1:]) for it in items)
    assert tb.tokens.dtype == torch.long


def tokenizer_pad(bundle) -> int:
    return bundle.templater.tokenizer.pad_token_id


def test_tokenisation_is_cached(toy_config, cache_dir, toy_bundle, monkeypatch):
    def boom(self, messages):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(ChatTemplater, "encode_prompt", boom)
    cfg = DataConfig(toy=toy_config, cache_dir=cache_dir, max_prompt_tokens=256,
                     max_response_tokens=256, micro_batch_tokens=1024)
    again = build_data(cfg)  # all maps served from the datasets cache
    assert list(again.train["prompt_ids"]) == list(toy_bundle.train["prompt_ids"])
    with pytest.raises(AssertionError, match="tokenised again"):  # other settings → re-run
        build_data(DataConfig(**{**cfg.__dict__, "max_prompt_tokens": 255}))


def test_separate_sft_and_preference_sources(tmp_path, tokenizer, cache_dir):
    sources = [
        DataSourceConfig(path=str(fx.write_autoif(tmp_path)), format="autoif", use="sft"),
        DataSourceConfig(path=str(fx.write_ifeval(tmp_path)), format="ifeval", use="pref"),
        DataSourceConfig(path=str(fx.write_argilla(tmp_path)), format="argilla", use="both"),
    ]
    eval_src = [DataSourceConfig(path=str(fx.write_ifbench(tmp_path)), format="ifbench",
                                 split="test")]
    cfg = DataConfig(sources=sources, eval_sources=eval_src, cache_dir=cache_dir,
                     sft_target="reference", expert_fraction=0.5, max_prompt_tokens=256,
                     max_response_tokens=256, micro_batch_tokens=1024)
    bundle = build_data(cfg, RewardConfig(code_verifiers_enabled=True), tokenizer=tokenizer)
    # rows: autoif 0-1, ifeval 2-4, argilla 5-6
    assert bundle.sft_pool.tolist() == [0, 1, 5, 6]
    assert bundle.pref_pool.tolist() == [2, 3, 4, 5, 6]
    assert [r.id for r in bundle.eval_rows()] == ["ifbench:0", "ifbench:1"]
    sampler = bundle.sampler(prompts_per_step=4, seed=0)
    seen_sft = set()
    for _ in range(4):
        batch = sampler.next_batch()
        assert len(batch.sft) == 2
        seen_sft |= set(bundle.sft_pool[list(batch.sft)].tolist())
        assert all(r.constraints for r in bundle.pref_rows(batch.pref))
    assert seen_sft == {0, 1, 5, 6}


def test_sft_source_without_targets_is_a_bad_row(tmp_path, tokenizer, cache_dir):
    src = [DataSourceConfig(path=str(fx.write_ifeval(tmp_path)), format="ifeval", use="sft")]
    cfg = DataConfig(sources=src, cache_dir=cache_dir, max_prompt_tokens=256,
                     max_response_tokens=256, micro_batch_tokens=1024)
    with pytest.raises(Exception, match=r"ifeval_input_data\.jsonl row 0: no reference or "
                                        r"teacher response"):
        build_data(cfg, tokenizer=tokenizer)
