"""POLAR as published on the Hub: a tiny directory in the published layout (see
:mod:`.polar_hub`) is tokenized, converted and scored without running anything from it.

- the InternLM2 tokenizer reproduces the published ``tokenization_internlm2.py`` rules token
  for token (expected ids are built here from SentencePiece directly);
- ``hf-to-mcore`` reads safetensors, ``pytorch_model.bin`` and ``.bin`` shards + index
  identically, never executing the directory's remote code;
- bad inputs fail with one line naming the file, tensor or field;
- (slow) the converted model scores POLAR triples like the plain-PyTorch InternLM2 reference
  on the HF weights (≤ 1e-4), and a frozen-discriminator training step runs on it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from uniapl_mcore.checkpoint.convert import hf_to_mcore
from uniapl_mcore.checkpoint.hf_io import CheckpointError, TorchBinReader, open_hf_weights
from uniapl_mcore.config import ConfigError
from uniapl_mcore.data.internlm2_tokenizer import (
    InternLM2Tokenizer,
    TokenizerError,
    clean_up_tokenization,
)
from uniapl_mcore.data.tiny_tokenizer import load_tokenizer
from uniapl_mcore.discriminator.polar_template import PolarTemplate, PolarTriple

from .polar_hub import REWARD_ID, SEPARATOR_ID, VOCAB_SIZE, save_polar_hub_dir, save_tokenizer

#: Remote-code files as the Hub repo has them, here booby-trapped: importing any of them
#: leaves a marker file next to it.
REMOTE_CODE = ("tokenization_internlm2.py", "modeling_internlm2.py",
               "configuration_internlm2.py")
TRAP = "import pathlib\npathlib.Path(__file__).with_suffix('.executed').touch()\n"


def _plant_remote_code(directory: Path) -> None:
    for name in REMOTE_CODE:
        (directory / name).write_text(TRAP)


def _nothing_executed(*directories: Path) -> bool:
    return not any(list(d.rglob("*.executed")) for d in directories)


@pytest.fixture(scope="module", params=[False, True], ids=["no-dummy-prefix", "dummy-prefix"])
def hub_tokenizer(request, tmp_path_factory):
    """(tokenizer, raw SentencePiece processor) for both dummy-prefix settings."""
    import sentencepiece as spm

    directory = save_tokenizer(tmp_path_factory.mktemp("tok"), request.param)
    _plant_remote_code(directory)
    tokenizer = load_tokenizer(directory)
    assert _nothing_executed(directory)
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    return tokenizer, sp


# --------------------------------------------------------------------------- tokenizer


def test_loaded_without_remote_code_with_published_ids(hub_tokenizer):
    tokenizer, _ = hub_tokenizer
    assert isinstance(tokenizer, InternLM2Tokenizer)
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.convert_tokens_to_ids(["<|reward|>", "[UNUSED_TOKEN_130]", "<|im_end|>"]) \
        == [SEPARATOR_ID, REWARD_ID, 92542]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.convert_ids_to_tokens(SEPARATOR_ID) == "<|reward|>"  # renamed piece


def test_plain_text_is_bos_plus_sentencepiece(hub_tokenizer):
    tokenizer, sp = hub_tokenizer
    for text in ["the quick brown fox", "  two  spaces\nand a newline", "Qz 123 ümlaut 🦊",
                 "", "I'm here , don't"]:
        assert tokenizer.encode(text) == [1, *sp.encode(text)], text  # BOS, never EOS
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text)


def test_added_tokens_split_text_and_each_piece_is_encoded_alone(hub_tokenizer):
    tokenizer, sp = hub_tokenizer
    text = "Q\nthe fox<|reward|>Q\nthe dog[UNUSED_TOKEN_130]"
    expected = [1, *sp.encode("Q\nthe fox"), SEPARATOR_ID, *sp.encode("Q\nthe dog"), REWARD_ID]
    assert tokenizer.encode(text) == expected
    # the longest added token wins; special tokens written in text are split out too
    assert tokenizer.encode("<s>a</s><|im_end|>", add_special_tokens=False) == \
        [1, *sp.encode("a"), 2, 92542]
    # an ordinary SentencePiece piece that is not an added token stays text
    assert tokenizer.encode("[UNUSED_TOKEN_5]", add_special_tokens=False) == \
        sp.encode("[UNUSED_TOKEN_5]")


def test_decode_follows_the_published_class(hub_tokenizer):
    tokenizer, sp = hub_tokenizer
    text = "Is it ok , really ? I 'm sure !"
    ids = tokenizer.encode(text)
    # convert_tokens_to_string always applies transformers' punctuation clean-up
    assert tokenizer.decode(ids, skip_special_tokens=True) == clean_up_tokenization(
        sp.decode(sp.encode(text))) == "Is it ok, really? I'm sure!"
    # a special token in a run gets one space before it
    assert tokenizer.decode(ids) == " <s>" + "Is it ok, really? I'm sure!"
    # added tokens that are not special tokens are separate pieces joined with spaces
    mixed = tokenizer.encode("a<|reward|>b", add_special_tokens=False)
    assert tokenizer.decode(mixed) == f"{sp.decode(sp.encode('a'))} <|reward|> " \
                                      f"{sp.decode(sp.encode('b'))}"
    assert tokenizer.decode(mixed, spaces_between_special_tokens=False) == "a<|reward|>b"


def test_strip_flags_of_added_tokens(tmp_path):
    directory = save_tokenizer(tmp_path / "tok")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"][str(SEPARATOR_ID)].update(lstrip=True, rstrip=True)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = load_tokenizer(directory)
    assert tokenizer.tokenize("a  <|reward|>  b") == \
        [*tokenizer.tokenize("a"), "<|reward|>", *tokenizer.tokenize("b")]


def test_polar_template_on_the_published_tokenizer(hub_tokenizer):
    tokenizer, sp = hub_tokenizer
    template = PolarTemplate(tokenizer, max_tokens=64, max_response_tokens=8)
    assert template.added_tokens == () and template.vocab_size == VOCAB_SIZE
    assert (template.separator_id, template.reward_token_id, template.pad_token_id) == \
        (SEPARATOR_ID, REWARD_ID, 2)
    prompt, ref, out = "please explain why , the sky", "the sea river", "a short story"
    ids = template.encode(PolarTriple(prompt, ref, out))

    def piece(text: str, limit: int | None = None) -> str:  # tokenize with BOS, cut, decode
        kept = [1, *sp.encode(text)][:limit]
        return clean_up_tokenization(sp.decode(kept[1:]))

    budget = (64 - 4 - min(8, len(sp.encode(ref)) + 1) - min(8, len(sp.encode(out)) + 1)) // 2
    p = piece(prompt) if len(sp.encode(prompt)) + 1 <= budget else None
    assert p is not None  # the prompt fits: nothing cut on the left
    expected = [1, *sp.encode(f"{p}\n{piece(ref, 8)}"), SEPARATOR_ID,
                *sp.encode(f"{p}\n{piece(out, 8)}"), REWARD_ID]
    assert ids == expected


def test_bad_tokenizer_directories_fail_with_one_line(tmp_path):
    directory = save_tokenizer(tmp_path / "tok")
    (directory / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: missing") as err:
        load_tokenizer(directory)
    assert "\n" not in str(err.value)
    (directory / "tokenizer.model").write_bytes(b"not a protobuf")
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a SentencePiece model"):
        load_tokenizer(directory)
    directory = save_tokenizer(tmp_path / "tok2")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["92397"]["special"] = "yes"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError,
                       match=r"tokenizer_config\.json: added_tokens_decoder\.92397\.special"):
        load_tokenizer(directory)


def test_other_remote_code_tokenizers_are_refused_not_prompted(tmp_path):
    directory = save_tokenizer(tmp_path / "tok")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="SomeTokenizer",
                  auto_map={"AutoTokenizer": ["tokenization_some.SomeTokenizer", None]})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "tokenization_some.py").write_text(TRAP)
    with pytest.raises(ValueError):
        load_tokenizer(directory)
    assert _nothing_executed(directory)


# --------------------------------------------------------------------------- conversion


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The same tiny POLAR model as safetensors, one .bin and .bin shards, each converted."""
    root = tmp_path_factory.mktemp("hub")
    dirs = {}
    for weights in ("safetensors", "bin", "bin-shards"):
        dirs[weights] = save_polar_hub_dir(root / weights, weights=weights)
        _plant_remote_code(dirs[weights])
        hf_to_mcore(dirs[weights], root / f"{weights}-mcore")
    assert _nothing_executed(root)
    return root


def test_bin_and_safetensors_convert_identically(hub):
    from uniapl_mcore.checkpoint.dcp_io import TorchDistReader

    readers = {w: TorchDistReader(hub / f"{w}-mcore") for w in ("safetensors", "bin",
                                                                  "bin-shards")}
    assert isinstance(open_hf_weights(hub / "bin-shards"), TorchBinReader)
    keys = sorted(readers["safetensors"].keys())
    assert "output_layer.weight" in keys
    for key in keys:
        shape = readers["safetensors"].shape(key)
        start, sizes = (0,) * len(shape), tuple(shape)
        reference = readers["safetensors"].read(key, start, sizes)
        for weights in ("bin", "bin-shards"):
            assert torch.equal(readers[weights].read(key, start, sizes), reference), key
    side = hub / "bin-shards-mcore" / "hf"
    assert sorted(p.name for p in side.iterdir()) == [
        "config.json", "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    assert isinstance(load_tokenizer(side), InternLM2Tokenizer)


def _convert_error(hf: Path, tmp_path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        hf_to_mcore(hf, tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and not (tmp_path / "out").exists()
    return message


class _Smuggled:
    """An object a plain pickle would rebuild by calling os.system."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bin_that_is_not_a_plain_tensor_dict(tmp_path):
    hf = save_polar_hub_dir(tmp_path / "hf", weights="bin-shards")
    shard = hf / "pytorch_model-00002-of-00002.bin"
    tensors = torch.load(shard, weights_only=True)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        torch.save({**tensors, "extra": _Smuggled()}, shard)
        message = _convert_error(hf, tmp_path)
        assert message.startswith(f"{shard}: not a plain tensor file")
        assert "GLOBAL posix.system" in message and "weights_only` set to `False`" not in message
        assert not (tmp_path / "pwned").exists()
    finally:
        os.chdir(cwd)
    torch.save({**tensors, "step": 3}, shard)
    assert _convert_error(hf, tmp_path) == \
        f"{shard}: entry 'step' is a int, not a tensor (expected a flat dict of tensors)"
    torch.save({"state_dict": tensors}, shard)
    assert "entry 'state_dict' is a dict, not a tensor" in _convert_error(hf, tmp_path)
    torch.save(list(tensors.values()), shard)
    assert _convert_error(hf, tmp_path) == f"{shard}: expected a dict of tensors, got list"
    shard.write_bytes(b"garbage")
    assert _convert_error(hf, tmp_path).startswith(f"{shard}: ")


def test_missing_shard_tensor_and_index_entries(tmp_path):
    hf = save_polar_hub_dir(tmp_path / "hf", weights="bin-shards")
    shard = hf / "pytorch_model-00001-of-00002.bin"
    tensors = torch.load(shard, weights_only=True)
    shard.unlink()
    assert _convert_error(hf, tmp_path) == \
        f"{shard}: shard listed in pytorch_model.bin.index.json is missing"
    name = next(iter(tensors))
    torch.save({k: v for k, v in tensors.items() if k != name}, shard)
    assert _convert_error(hf, tmp_path) == \
        f"{shard}: tensor {name!r} listed in pytorch_model.bin.index.json is not in the file"
    (hf / "pytorch_model.bin.index.json").write_text("{")
    assert _convert_error(hf, tmp_path).startswith(
        f"{hf / 'pytorch_model.bin.index.json'}: malformed index")
    (hf / "pytorch_model.bin.index.json").unlink()
    for path in hf.glob("*.bin"):
        path.unlink()
    assert "no weights" in _convert_error(hf, tmp_path)


def test_missing_tokenizer_model_and_wrong_reward_token(tmp_path):
    hf = save_polar_hub_dir(tmp_path / "hf")
    (hf / "tokenizer.model").unlink()
    assert _convert_error(hf, tmp_path) == (
        f"{hf}: cannot load its tokenizer: {hf / 'tokenizer.model'}: missing (the InternLM2 "
        "tokenizer is a SentencePiece model)")
    hf = save_polar_hub_dir(tmp_path / "hf2")
    config = json.loads((hf / "config.json").read_text())
    config["reward_token_id"] = SEPARATOR_ID
    (hf / "config.json").write_text(json.dumps(config))
    assert _convert_error(hf, tmp_path) == (
        f"{hf / 'config.json'}: reward_token_id is {SEPARATOR_ID}, but the tokenizer encodes "
        f"[UNUSED_TOKEN_130] as [{REWARD_ID}]")
    hf = save_polar_hub_dir(tmp_path / "hf3")
    config = json.loads((hf / "tokenizer_config.json").read_text())
    del config["added_tokens_decoder"][str(REWARD_ID)]  # "[UNUSED_TOKEN_130]" is plain text now
    config["added_tokens_decoder"]["92528"] = {"content": "[UNUSED_TOKEN_130]"}
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    assert f"reward_token_id is {REWARD_ID}, but the tokenizer encodes [UNUSED_TOKEN_130] as " \
           "[92528]" in _convert_error(hf, tmp_path)


def test_frozen_discriminator_names_the_converter_for_an_hf_directory(tmp_path):
    from uniapl_mcore.discriminator.client import DiscriminatorClient
    from uniapl_mcore.discriminator.config import DiscriminatorConfig

    hf = save_polar_hub_dir(tmp_path / "hf")
    cfg = DiscriminatorConfig(role="frozen", checkpoint=str(hf))
    with pytest.raises(ConfigError, match=r"discriminator\.checkpoint: .* is a Hugging Face "
                                          r"model directory; convert it once with"):
        DiscriminatorClient.start(cfg, "unused", seed=0, max_steps=0)


# --------------------------------------------------------------------------- slow: scoring


TRIPLES = [PolarTriple("write a short poem about the sea", "the sea is blue .",
                       "<think>\n\n</think>\n\nthe sea , the sky"),
           PolarTriple("list three items", "one two three", "hello world"),
           PolarTriple("please explain why", "because it is", "I don't know !"),
           PolarTriple("Q\nwhat ?", "answer", "answer")]


@pytest.mark.slow
def test_converted_polar_scores_like_the_reference(hub, ray_cluster):
    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.discriminator.client import DiscriminatorClient
    from uniapl_mcore.discriminator.config import DiscriminatorConfig
    from uniapl_mcore.models.internlm2 import reference_scores

    cfg = DiscriminatorConfig(role="frozen", checkpoint=str(hub / "bin-shards-mcore"),
                              max_tokens=256, max_response_tokens=64, batch_size=3)
    client = DiscriminatorClient.start(cfg, "unused", seed=0, max_steps=0)
    try:
        assert isinstance(client.template.tokenizer, InternLM2Tokenizer)  # from hf/ side dir
        scores = client.score(TRIPLES)
        rows = client.template.encode_all(TRIPLES)
    finally:
        client.shutdown()
    _, _, model = load_hf_architecture(hub / "bin-shards")
    reader = open_hf_weights(hub / "bin-shards")
    weights = {name: reader.get(name) for name in reader.names()}
    reference = [float(reference_scores(weights, model, torch.tensor([row]))[0]) for row in rows]
    diff = max(abs(a - b) for a, b in zip(scores, reference, strict=True))
    print(f"POLAR hub layout: max |score - reference| = {diff:.2e} over {len(rows)} triples")
    assert all(row[-1] == REWARD_ID and row[0] == 1 for row in rows)
    assert diff <= 1e-4 and len(set(scores)) == len(scores)


@pytest.mark.slow
def test_frozen_discriminator_training_step(hub, ray_cluster, tmp_path):
    from tests.trainer._train_bodies import TINY, all_finite, read_records, train_body
    from uniapl_mcore.testing import run_distributed

    checkpoint = tmp_path / "polar-mcore"
    shutil.copytree(hub / "bin-shards-mcore", checkpoint)
    overrides = [*TINY, "loss.objective=a_grpo", "train.max_steps=1", "eval.at_start=false",
                 "discriminator.role=frozen", f"discriminator.checkpoint={checkpoint}",
                 "discriminator.max_tokens=512", "discriminator.max_response_tokens=64"]
    run_distributed(train_body, 1, args=(overrides, str(tmp_path / "run"), ray_cluster),
                    timeout_s=600)
    records = read_records(tmp_path / "run")
    assert [r["step"] for r in records][-1] == 1
    assert all_finite(records[-1]) and "adv_pref/loss" in records[-1], records[-1]
    assert records[-1]["pref/score_mean"] != 0.0  # POLAR scored the rollouts
    assert not any(k.startswith("disc/loss") for k in records[-1])  # frozen: never updated


def test_legacy_torch_save_format_is_read_too(tmp_path):
    """A pre-zip ``torch.save`` file (no memory map) goes through the same restricted load."""
    hf = save_polar_hub_dir(tmp_path / "hf", weights="bin")
    tensors = torch.load(hf / "pytorch_model.bin", weights_only=True)
    torch.save(tensors, hf / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    reader = open_hf_weights(hf)
    assert set(reader.names()) == set(tensors)
    assert all(torch.equal(reader.get(n), t) for n, t in tensors.items())
    hf_to_mcore(hf, tmp_path / "mcore")


def test_convert_cli_on_the_hub_layout(tmp_path, capsys):
    """tools/convert_checkpoint.py hf-to-mcore: exit 0 on the published layout; one line and
    exit 2 on a missing shard."""
    from uniapl_mcore.checkpoint.convert_cli import main

    hf = save_polar_hub_dir(tmp_path / "hf", weights="bin-shards")
    assert main(["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "ok")]) == 0
    capsys.readouterr()
    (hf / "pytorch_model-00002-of-00002.bin").unlink()
    assert main(["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err == (
        f"convert_checkpoint: error: {hf / 'pytorch_model-00002-of-00002.bin'}: shard listed "
        "in pytorch_model.bin.index.json is missing\n")
