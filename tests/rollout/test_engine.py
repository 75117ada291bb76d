"""The torch engine (no Ray): sampling contract, determinism, log-probs, weight updates."""

from __future__ import annotations

import pytest
import torch

from uniapl_mcore.config import ConfigError
from uniapl_mcore.rollout.engine import NO_WEIGHTS, update_weights
from uniapl_mcore.rollout.torch_engine import TorchEngine
from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams, StaleWeightsError

from .reference import teacher_forced


@pytest.fixture(scope="module")
def engine(tiny_hf):
    return TorchEngine(tiny_hf, max_batch_rows=5)


def _requests(n: int = 3, **kw) -> list[GenerationRequest]:
    params = {"max_tokens": 10, "seed": 3, **kw}
    return [GenerationRequest(tuple(range(1, 2 + 3 * i)), SamplingParams(n=n, **params),
                              f"r{i}") for i in range(4)]


def _reference_logprobs(model, request: GenerationRequest, tokens) -> torch.Tensor:
    return teacher_forced(model, request.prompt_ids, tokens, request.sampling)


def test_n_samples_per_request_in_order(engine):
    results = engine.generate(_requests(n=3))
    assert [r.request_id for r in results] == ["r0", "r1", "r2", "r3"]
    for result in results:
        assert len(result.samples) == 3 and result.weight_version == 0
        for sample in result.samples:
            assert len(sample.token_ids) == len(sample.logprobs) == 10
            assert sample.finish_reason == "length"
            assert all(lp <= 0 for lp in sample.logprobs)


def test_seeded_sampling_is_deterministic_and_batch_independent(engine):
    batched = engine.generate(_requests(top_p=0.9, top_k=30))
    again = engine.generate(_requests(top_p=0.9, top_k=30))
    alone = [engine.generate([r])[0] for r in _requests(top_p=0.9, top_k=30)]
    other_seed = engine.generate(_requests(seed=4, top_p=0.9, top_k=30))
    tokens = [[s.token_ids for s in r.samples] for r in batched]
    assert tokens == [[s.token_ids for s in r.samples] for r in again]
    assert tokens == [[s.token_ids for s in r.samples] for r in alone]
    assert tokens != [[s.token_ids for s in r.samples] for r in other_seed]
    assert len({s for r in tokens for s in r}) > 4  # samples of one prompt differ


@pytest.mark.parametrize("sampling", [{"temperature": 0.7}, {"temperature": 1.3, "top_p": 0.8},
                                      {"temperature": 0.9, "top_k": 20}, {"temperature": 0}])
def test_logprobs_equal_a_full_forward(engine, sampling):
    """The sampled token's log-prob under the distribution it was drawn from."""
    requests = _requests(n=2, **sampling)
    for request, result in zip(requests, engine.generate(requests), strict=True):
        for sample in result.samples:
            ref = _reference_logprobs(engine.model, request, sample.token_ids)
            assert torch.allclose(torch.tensor(sample.logprobs), ref, atol=1e-5)


def test_greedy_matches_transformers_generate(engine):
    request = GenerationRequest((5, 6, 7, 8), SamplingParams(temperature=0, max_tokens=8))
    ours = engine.generate([request])[0].samples[0].token_ids
    with torch.no_grad():
        ref = engine.model.generate(torch.tensor([request.prompt_ids]), do_sample=False,
                                    max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    assert list(ours) == ref[0, 4:].tolist()
    top1 = engine.generate([GenerationRequest((5, 6, 7, 8), SamplingParams(
        top_k=1, max_tokens=8, seed=9))])[0].samples[0].token_ids
    assert top1 == ours


def test_stop_token_ends_a_sample(engine):
    first = engine.generate([GenerationRequest((5, 6, 7), SamplingParams(
        temperature=0, max_tokens=6))])[0].samples[0].token_ids
    stopped = engine.generate([GenerationRequest((5, 6, 7), SamplingParams(
        temperature=0, max_tokens=6, stop_token_ids=(first[2],)))])[0].samples[0]
    assert stopped.token_ids == first[:first.index(first[2]) + 1]
    assert stopped.finish_reason == "stop"


def test_bad_sampling_names_the_field():
    with pytest.raises(ConfigError, match="sampling.top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ConfigError, match="sampling.n"):
        SamplingParams(n=0)
    with pytest.raises(ConfigError, match="request.prompt_ids"):
        GenerationRequest(())


def test_streamed_weights_replace_the_model_without_disk(tiny_hf, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.checkpoint.hf_models import save_tiny

    other = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "other", seed=5))
    empty = TorchEngine(tiny_hf, load_checkpoint=False)
    request = GenerationRequest((3, 4, 5), SamplingParams(n=2, max_tokens=6, seed=1))
    with pytest.raises(StaleWeightsError, match="no weights"):
        empty.generate([request])
    assert empty.weight_version == NO_WEIGHTS
    named = list(other.state_dict().items())
    empty.begin_weight_update(7)
    empty.load_weights(named[:3])
    with pytest.raises(RuntimeError, match="incomplete"):
        empty.finish_weight_update(7)
    with pytest.raises(KeyError, match="no parameter 'bogus'"):
        empty.load_weights([("bogus", torch.zeros(1))])
    update_weights(empty, named, version=7)
    result = empty.generate([request], weight_version=7)[0]
    assert result.weight_version == 7
    for sample in result.samples:
        ref = _reference_logprobs(other, request, sample.token_ids)
        assert torch.allclose(torch.tensor(sample.logprobs), ref, atol=1e-5)
    with pytest.raises(StaleWeightsError, match="holds weight version 7, request needs 8"):
        empty.generate([request], weight_version=8)
    empty.sleep(level=2)
    with pytest.raises(StaleWeightsError, match="asleep"):
        empty.generate([request])
    empty.wake_up()
    with pytest.raises(StaleWeightsError, match="no weights"):
        empty.generate([request])


@pytest.mark.parametrize("family,lean", [("qwen2", True), ("llama", True),
                                         ("qwen3_moe", False)])
def test_every_family_samples_with_exact_logprobs(family, lean, tmp_path):
    """The lean static-cache decoder (dense families) and the model's own forward (others)
    both give the sampled tokens' log-probs of a full forward, over ragged prompts."""
    from tests.checkpoint.hf_models import save_tiny

    engine = TorchEngine(save_tiny(tmp_path / family, family=family, tied=family == "llama"))
    assert (engine._decoder is not None) == lean
    requests = _requests(n=2, temperature=0.8, top_p=0.95)
    for request, result in zip(requests, engine.generate(requests), strict=True):
        for sample in result.samples:
            ref = _reference_logprobs(engine.model, request, sample.token_ids)
            assert torch.allclose(torch.tensor(sample.logprobs), ref, atol=1e-5)


def test_lean_decoder_follows_weight_updates(tiny_hf, tmp_path):
    """After a streamed update the fused weights are rebuilt: greedy tokens equal the new
    model's own greedy generation."""
    from transformers import AutoModelForCausalLM

    from tests.checkpoint.hf_models import save_tiny

    engine = TorchEngine(tiny_hf)
    other = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "other", seed=5))
    update_weights(engine, list(other.state_dict().items()), version=1)
    request = GenerationRequest((5, 6, 7, 8), SamplingParams(temperature=0, max_tokens=8))
    ours = engine.generate([request], weight_version=1)[0].samples[0].token_ids
    with torch.no_grad():
        ref = other.generate(torch.tensor([request.prompt_ids]), do_sample=False,
                             max_new_tokens=8, min_new_tokens=8, pad_token_id=0)
    assert list(ours) == ref[0, 4:].tolist()
