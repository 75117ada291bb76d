"""The discriminator service: Ray actors forming their own Megatron world (gloo on CPU).

- a converted tiny POLAR-format reward model scores like the plain-PyTorch reference at
  TP=2 and at PP=2 (< 1e-5, fp32), and PP=2 equals PP=1;
- a tiny trainable discriminator learns a pattern with the Bradley–Terry loss, two identical
  runs give bitwise-identical metrics, and save → load into another client restores weights,
  optimizer and schedule exactly.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from uniapl_mcore.discriminator.client import DiscriminatorClient, DiscriminatorError
from uniapl_mcore.discriminator.config import DiscriminatorConfig
from uniapl_mcore.discriminator.polar_template import PolarTriple
from uniapl_mcore.megatron.config import OptimizerConfig
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig

from .tokenizers import REWARD_ID, save_char_tokenizer

pytestmark = pytest.mark.slow

UPDATES = 15


def _start_all(starters: dict) -> dict:
    """Start several clients concurrently; shut down the started ones if any start fails."""
    with ThreadPoolExecutor(len(starters)) as pool:
        futures = {key: pool.submit(fn) for key, fn in starters.items()}
        clients, errors = {}, []
        for key, future in futures.items():
            try:
                clients[key] = future.result()
            except Exception as err:  # noqa: BLE001 - re-raised below
                errors.append(err)
    if errors:
        for client in clients.values():
            client.shutdown()
        raise errors[0]
    return clients


# --------------------------------------------------------------------------- frozen POLAR


@pytest.fixture(scope="module")
def polar(tmp_path_factory):
    """A converted tiny InternLM2 reward model, its HF weights and a matching tokenizer."""
    from tests.checkpoint.hf_models import save_tiny_internlm2_reward
    from uniapl_mcore.checkpoint.convert import hf_to_mcore, load_hf_architecture
    from uniapl_mcore.checkpoint.hf_io import SafetensorsReader

    root = tmp_path_factory.mktemp("polar")
    hf = save_tiny_internlm2_reward(root / "hf")
    mcore = hf_to_mcore(hf, root / "mcore")
    _, _, model = load_hf_architecture(hf)
    reader = SafetensorsReader(hf)
    weights = {name: reader.get(name) for name in reader.names()}
    tokenizer = save_char_tokenizer(root / "tokenizer")  # 96 tokens, reward id 95 like the model
    return SimpleNamespace(mcore=str(mcore), model=model, weights=weights,
                           tokenizer=str(tokenizer))


@pytest.fixture(scope="module")
def frozen(ray_cluster, polar):
    """Frozen discriminators of the same checkpoint at (TP, PP) = (2, 1) and (1, 2)."""

    def start(tp: int, pp: int):
        cfg = DiscriminatorConfig(role="frozen", checkpoint=polar.mcore, max_tokens=128,
                                  tokenizer=polar.tokenizer,
                                  max_response_tokens=32, batch_size=3,
                                  parallel=ParallelConfig(tensor_parallel_size=tp,
                                                          pipeline_parallel_size=pp))
        return DiscriminatorClient.start(cfg, "unused", seed=0, max_steps=0)

    clients = _start_all({(2, 1): lambda: start(2, 1), (1, 2): lambda: start(1, 2)})
    yield clients
    for client in clients.values():
        client.shutdown()


def _sequences(count: int, seed: int = 0) -> list[list[int]]:
    """Token rows of varied lengths, each ending in the reward token."""
    gen = random.Random(seed)
    return [[gen.randrange(3, 94) for _ in range(gen.randint(2, 40))] + [REWARD_ID]
            for _ in range(count)]


def _reference(polar, sequences: list[list[int]]) -> list[float]:
    from uniapl_mcore.models.internlm2 import reference_scores

    return [float(reference_scores(polar.weights, polar.model, torch.tensor([s]))[0])
            for s in sequences]


def _max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_tp2_scores_match_reference(frozen, polar):
    client = frozen[(2, 1)]
    assert [i["tp_rank"] for i in client.info] == [0, 1]
    assert client.template.added_tokens == () and not client.trainable
    sequences = _sequences(7)  # 3 micro-batches of 3, the last one partial
    scores = client.score_token_ids(sequences)
    assert _max_diff(scores, _reference(polar, sequences)) < 1e-5
    assert len(set(scores)) == len(scores)
    assert client.score_token_ids(sequences) == scores  # bitwise deterministic


def test_pp2_scores_equal_pp1_and_reference(frozen, polar):
    sequences = _sequences(5, seed=1)
    pp2 = frozen[(1, 2)].score_token_ids(sequences)
    assert [i["pp_rank"] for i in frozen[(1, 2)].info] == [0, 1]
    assert _max_diff(pp2, frozen[(2, 1)].score_token_ids(sequences)) < 1e-5
    assert _max_diff(pp2, _reference(polar, sequences)) < 1e-5


def test_triples_are_scored_on_the_polar_template(frozen, polar):
    client = frozen[(1, 2)]
    triples = [PolarTriple("What is 2+2?", "4", "4"),
               PolarTriple("Name a colour.\nOne word.", "<think>\n\n</think>\n\nred", "blue"),
               PolarTriple("x" * 300, "long " * 20, "answer")]  # the prompt is cut
    ids = [client.template.encode(t) for t in triples]
    assert all(len(s) <= 128 for s in ids)
    assert _max_diff(client.score(triples), _reference(polar, ids)) < 1e-5


def test_bad_calls_fail_with_one_line(frozen):
    client = frozen[(2, 1)]
    with pytest.raises(ValueError, match=r"sequences\[1\]: token id 96 is outside"):
        client.score_token_ids([[5, REWARD_ID], [96, REWARD_ID]])
    with pytest.raises(ValueError, match=r"sequences\[0\]: 129 tokens exceed"):
        client.score_token_ids([[5] * 128 + [REWARD_ID]])
    with pytest.raises(DiscriminatorError, match="role is 'frozen'"):
        client.update([PolarTriple("p", "r", "o")], [PolarTriple("p", "r", "x")])
    assert client.score([]) == []


# --------------------------------------------------------------------------- trainable


def _tiny_trainable(tokenizer: str) -> DiscriminatorConfig:
    model = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                        num_query_groups=2, head_dim=8, vocab_size=96,
                        max_position_embeddings=256, qk_norm=False, value_head=True)
    return DiscriminatorConfig(role="trainable", model=model, tokenizer=tokenizer,
                               max_tokens=256, max_response_tokens=32, batch_size=4,
                               optimizer=OptimizerConfig(lr=1e-2, warmup_steps=0,
                                                         lr_decay_style="constant"))


def _pairs(seed: int = 0) -> tuple[list[PolarTriple], list[PolarTriple]]:
    """Chosen outputs all end in " ok"; rejected ones are plain letters."""
    gen = random.Random(seed)

    def word(low: int, high: int) -> str:
        return "".join(gen.choice("abcdefgh") for _ in range(gen.randint(low, high)))

    chosen, rejected = [], []
    for i in range(8):
        reference = " ".join(word(3, 8) for _ in range(3))
        chosen.append(PolarTriple(f"question {i}", reference, word(4, 9) + " ok"))
        rejected.append(PolarTriple(f"question {i}", reference, word(4, 9)))
    return chosen, rejected


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    """Two identical trainable runs "a" and "b" of UPDATES steps and an untrained client at
    PP=2; "a" is saved, then takes one more step (its continuation is recorded)."""
    root = tmp_path_factory.mktemp("trainable")
    # no BOS and no POLAR tokens: the template adds them (94 → 96 tokens)
    tokenizer = str(save_char_tokenizer(root / "tokenizer", bos=False, polar_tokens=False))
    chosen, rejected = _pairs()
    probe = chosen[:2] + rejected[:2]

    def start(pp: int = 1) -> DiscriminatorClient:
        cfg = _tiny_trainable(tokenizer)
        cfg.parallel = ParallelConfig(pipeline_parallel_size=pp)
        return DiscriminatorClient.start(cfg, "unused", seed=3, max_steps=UPDATES + 2)

    def run() -> tuple[DiscriminatorClient, list[dict[str, float]]]:
        client = start()
        try:
            return client, [client.update(chosen, rejected) for _ in range(UPDATES)]
        except BaseException:
            client.shutdown()
            raise

    runs = _start_all({"a": run, "b": run, "pp2": lambda: (start(pp=2), [])})
    try:
        a = runs["a"][0]
        a.save(root / "saved")
        saved_scores = a.score(probe)
        next_metrics = a.update(chosen, rejected)
        yield SimpleNamespace(runs=runs, saved=root / "saved", chosen=chosen, rejected=rejected,
                              probe=probe, saved_scores=saved_scores, next_metrics=next_metrics,
                              next_scores=a.score(probe))
    finally:
        for client, _ in runs.values():
            client.shutdown()


def test_trainable_learns_the_pattern(trained):
    client, metrics = trained.runs["a"]
    assert client.trainable and client.vocab_size == 96
    assert client.template.added_tokens == ("<|reward|>", "[UNUSED_TOKEN_130]")
    losses = [m["disc/loss"] for m in metrics]
    accuracy = [m["disc/accuracy"] for m in metrics]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # the value head starts at zero
    assert min(losses[-3:]) < 0.3 * losses[0], losses
    assert accuracy[0] == 0.0 and accuracy[-1] == 1.0, accuracy
    assert all(m["disc/lr"] == pytest.approx(1e-2) for m in metrics)
    scores = client.score(trained.chosen + trained.rejected)
    assert min(scores[:8]) > max(scores[8:])


def test_identical_runs_give_identical_metrics(trained):
    assert trained.runs["a"][1] == trained.runs["b"][1]  # bitwise, every step


def test_load_restores_weights_optimizer_and_schedule(trained):
    b = trained.runs["b"][0]
    assert sorted(p.name for p in trained.saved.iterdir())[-1] == "metadata.json"
    assert not list(trained.saved.parent.glob(".tmp.*"))  # staging renamed away
    b.update(trained.chosen[:3], trained.rejected[:3])  # b diverges from a ...
    assert b.score(trained.probe) != trained.saved_scores
    b.load(trained.saved)  # ... until it loads a's checkpoint
    assert b.score(trained.probe) == trained.saved_scores
    # the next step is identical too: Adam moments and step count, LR schedule restored
    assert b.update(trained.chosen, trained.rejected) == trained.next_metrics
    assert b.score(trained.probe) == trained.next_scores
    with pytest.raises(ValueError, match="rejected: 2 rows for 3 chosen rows"):
        b.update(trained.chosen[:3], trained.rejected[:2])


def test_load_and_train_at_another_layout(trained):
    """A PP=2 client resumes from the PP=1 checkpoint: same scores, same pipelined step."""
    pp2 = trained.runs["pp2"][0]
    assert [i["pp_rank"] for i in pp2.info] == [0, 1]
    pp2.load(trained.saved)
    assert _max_diff(pp2.score(trained.probe), trained.saved_scores) < 1e-5
    metrics = pp2.update(trained.chosen, trained.rejected)
    assert metrics.keys() == trained.next_metrics.keys()
    for key, value in trained.next_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert _max_diff(pp2.score(trained.probe), trained.next_scores) < 1e-5


def test_start_refuses_bad_configs_with_one_line(ray_cluster, polar, tmp_path):
    from uniapl_mcore.checkpoint.hf_io import CheckpointError
    from uniapl_mcore.config import ConfigError

    frozen = DiscriminatorConfig(role="frozen", checkpoint=polar.mcore, tokenizer=polar.tokenizer,
                                 max_tokens=128, max_response_tokens=32)
    with pytest.raises(ConfigError, match="max_tokens: 256 exceeds .*=128"):
        DiscriminatorClient.start(replace(frozen, max_tokens=256), "x", seed=0, max_steps=0)
    with pytest.raises(CheckpointError, match="not a torch_dist checkpoint"):
        DiscriminatorClient.start(replace(frozen, checkpoint=str(tmp_path)), "x", seed=0,
                                  max_steps=0)
    from uniapl_mcore.data.tiny_tokenizer import build_tiny_tokenizer

    toy = build_tiny_tokenizer(["the quick brown fox"] * 4, tmp_path / "toy", vocab_size=300)
    with pytest.raises(ConfigError, match=rf"model\.vocab_size: 96 cannot hold .* "
                                          rf"{len(toy) + 2} tokens \(including the added"):
        DiscriminatorClient.start(replace(frozen, tokenizer=str(tmp_path / "toy")), "x",
                                  seed=0, max_steps=0)
    with pytest.raises(ConfigError, match="role: is 'none'"):
        DiscriminatorClient.start(DiscriminatorConfig(role="none"), "x", seed=0, max_steps=0)
    with pytest.raises(ConfigError) as info:  # the checkpoint's 2 layers over 3 stages
        DiscriminatorClient.start(replace(frozen, parallel=ParallelConfig(
            pipeline_parallel_size=3)), "x", seed=0, max_steps=0)
    assert str(info.value) == ("discriminator.parallel.pipeline_parallel_size: 3 stages need "
                               "at least one layer each, the model's num_layers=2")
    with pytest.raises(ConfigError, match=r"^discriminator\.parallel\.tensor_parallel_size: 3 "
                                          r"does not divide the model's num_attention_heads="):
        DiscriminatorClient.start(replace(frozen, parallel=ParallelConfig(
            tensor_parallel_size=3)), "x", seed=0, max_steps=0)


def test_an_actor_failure_surfaces_as_one_error(ray_cluster, trained):
    """A checkpoint of another architecture fails inside the actors, at start."""
    cfg = DiscriminatorConfig(role="frozen", checkpoint=str(trained.saved),
                              tokenizer=str(trained.saved.parent / "tokenizer"),
                              max_tokens=256, max_response_tokens=32)  # the default tiny model
    with pytest.raises(DiscriminatorError, match=r"setup failed on discriminator rank 0: "
                                                 r".*does not fit this model"):
        DiscriminatorClient.start(cfg, "x", seed=0, max_steps=0)
