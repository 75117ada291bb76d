"""Offline conversion between Hugging Face checkpoints and Megatron-Core ``torch_dist``.

Both directions stream: one HF tensor group (one layer's q/k/v, say) is in memory at a time,
dtypes are preserved, and the output appears only when complete (written to
``<out>.tmp-<pid>`` and renamed). ``hf-to-mcore`` output loads at any TP/PP/EP through
``uniapl_mcore.megatron.checkpointing.load_checkpoint``; it also keeps the HF
``config.json`` and tokenizer files (``hf/``) so ``mcore-to-hf`` can restore them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from uniapl_mcore.checkpoint.dcp_io import ChunkSpec, TorchDistReader, write_torch_dist
from uniapl_mcore.checkpoint.hf_io import (
    CheckpointError,
    HFWeights,
    PlannedTensor,
    SafetensorsShardWriter,
    copy_side_files,
    open_hf_weights,
)
from uniapl_mcore.checkpoint.paths import STEP_DIR, resolve_latest
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.gpt import torch_dtype
from uniapl_mcore.models.hf_config import HFConfig
from uniapl_mcore.models.mapping import TensorRule, to_hf, to_mcore
from uniapl_mcore.models.registry import ModelBundle, bundle_for

logger = logging.getLogger(__name__)

HF_SIDE_DIR = "hf"  # inside an mcore checkpoint: the HF config.json and tokenizer files
FORMAT = "uniapl_mcore.hf_model/1"


def load_hf_architecture(hf_dir: str | Path) -> tuple[HFConfig, ModelBundle, ModelConfig]:
    """Parse ``config.json`` strictly and pick its bundle."""
    hf = HFConfig.read(hf_dir)
    bundle = bundle_for(hf.architecture, hf.source)
    return hf, bundle, bundle.model_config(hf)


def check_reward_tokenizer(hf_dir: Path, model: ModelConfig) -> None:
    """A reward model that ships a tokenizer: it must load (without running anything from
    the directory) and encode POLAR's reward token as the id ``config.json`` reads the score
    at (``reward_token_id``). One-line :class:`CheckpointError` naming the file otherwise."""
    if not model.value_head or not (hf_dir / "tokenizer_config.json").is_file():
        return
    from uniapl_mcore.data.tiny_tokenizer import load_tokenizer
    from uniapl_mcore.log import error_line
    from uniapl_mcore.models.internlm2 import REWARD_TOKEN

    try:
        tokenizer = load_tokenizer(hf_dir)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{hf_dir}: cannot load its tokenizer: "
                              f"{error_line(err)}") from None
    ids = list(tokenizer(REWARD_TOKEN, add_special_tokens=False)["input_ids"])
    if ids != [model.reward_token_id]:
        raise CheckpointError(f"{hf_dir / 'config.json'}: reward_token_id is "
                              f"{model.reward_token_id}, but the tokenizer encodes "
                              f"{REWARD_TOKEN} as {ids}")


def _expected_names(rules: list[TensorRule], model: ModelConfig) -> dict[str, TensorRule]:
    names = {}
    for rule in rules:
        for position in rule.positions(model.num_layers, model.num_experts):
            for name in rule.hf_names(*position):
                names[name] = rule
    return names


def _check_hf_tensors(reader: HFWeights, bundle: ModelBundle,
                      model: ModelConfig, rules: list[TensorRule]) -> None:
    """Every mapped tensor present with the right shape and dtype; nothing left unmapped."""
    expected = _expected_names(rules, model)
    present = set(reader.names())
    tied_head = model.tie_word_embeddings and "lm_head.weight" in present
    unmapped = sorted(present - set(expected) - ({"lm_head.weight"} if tied_head else set()))
    if unmapped:
        raise CheckpointError(f"{reader.directory}: tensor {unmapped[0]!r} is not mapped by the "
                              f"{bundle.name} bundle ({len(unmapped)} unmapped)")
    shapes = bundle.hf_shapes(model)
    dtype = torch_dtype(model.params_dtype)
    for name in expected:
        if name not in present:
            raise CheckpointError(f"{reader.directory}: tensor {name!r} is missing")
        template = _template_of(name, expected[name])
        if reader.shape(name) != shapes[template]:
            raise CheckpointError(f"{reader.directory}: tensor {name!r} has shape "
                                  f"{reader.shape(name)}, but config.json implies "
                                  f"{shapes[template]}")
    found = {reader.dtype(name) for name in expected}
    if found != {dtype}:
        logger.warning("config.json says %s but tensors are %s; each tensor keeps its dtype",
                       dtype, sorted(map(str, found)))


def _template_of(name: str, rule: TensorRule) -> str:
    for template in rule.hf:
        pattern = re.escape(template).replace(r"\{layer\}", r"\d+").replace(r"\{expert\}",
                                                                              r"\d+")
        if re.fullmatch(pattern, name):
            return template
    raise CheckpointError(f"no shape rule for {name!r}")


def _hf_chunks(reader: HFWeights, bundle: ModelBundle, model: ModelConfig,
               rules: list[TensorRule]) -> list[ChunkSpec]:
    """One ChunkSpec per (rule, layer); data is read and transformed only when written."""
    shape = bundle.attention_shape(model)
    chunks = []
    for rule in rules:
        positions = rule.positions(model.num_layers, model.num_experts)
        stack = rule.stack_dims(model.num_layers, model.num_experts)
        first = rule.hf_names(*positions[0])
        per_name = [reader.shape(n) for n in first]
        base = per_name[0] if rule.kind in ("copy", "vocab") else \
            (sum(s[0] for s in per_name), *per_name[0][1:])
        dtype = reader.dtype(first[0])
        ones = (1,) * len(stack)
        for position in positions:
            names = rule.hf_names(*position)

            def load(names=names, rule=rule, ones=ones, dtype=dtype,
                     base=base) -> torch.Tensor:
                if len(names) == 1:
                    tensor = to_mcore(rule, [reader.get(names[0],
                                                        _scratch("out", base, dtype))], shape)
                else:
                    parts = [reader.get(n, _scratch(f"in{i}", reader.shape(n), dtype))
                             for i, n in enumerate(names)]
                    tensor = to_mcore(rule, parts, shape, out=_scratch("out", base, dtype))
                return tensor.reshape(*ones, *tensor.shape)

            chunks.append(ChunkSpec(rule.mcore, (*stack, *base),
                                    (*position, *(0,) * len(base)),
                                    ((1,) * len(stack) + base), dtype, load))
    return chunks


def _atomic_output(out: Path) -> Path:
    if out.exists():
        raise CheckpointError(f"{out}: output directory already exists (refusing to overwrite)")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def hf_to_mcore(hf_dir: str | Path, out: str | Path, threads: int = 2) -> Path:
    """Convert an HF checkpoint directory (safetensors, or ``pytorch_model*.bin`` read with
    ``torch.load(weights_only=True)``) into a Megatron-Core ``torch_dist`` checkpoint."""
    hf_dir, out = Path(hf_dir), Path(out)
    hf, bundle, model = load_hf_architecture(hf_dir)
    check_reward_tokenizer(hf_dir, model)
    rules = bundle.tensor_rules(model)
    tmp = _atomic_output(out)
    try:
        reader = open_hf_weights(hf_dir)
        _check_hf_tensors(reader, bundle, model, rules)
        chunks = _hf_chunks(reader, bundle, model, rules)
        write_torch_dist(chunks, tmp, common={"step": 0, "format": FORMAT}, threads=threads)
        side = tmp / HF_SIDE_DIR
        side.mkdir()
        (side / "config.json").write_text(json.dumps(hf.data, indent=2) + "\n")
        copy_side_files(hf_dir, side)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:  # DCP runs one writer in this thread: drop its buffers (the others end with
        _SCRATCH.__dict__.pop("cache", None)  # their threads)
    logger.info("converted %s (%s, %d layers) → %s", hf_dir, bundle.name, model.num_layers, out)
    return out


_SCRATCH = threading.local()
_SCRATCH_BYTES_PER_THREAD = 384 * 1024**2
_SCRATCH_MAX_BUFFER = 128 * 1024**2  # larger (embedding-sized) buffers are one-offs


def _scratch(slot: str, sizes: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A [sizes] tensor whose storage is exactly its bytes, reused by this thread per (slot,
    size): layers repeat the same shapes, so after the first layer no read or merge touches
    fresh memory (fresh pages cost a page fault each, on the scale of the copy itself).

    A buffer is valid until this thread asks for the same slot and size again. Buffers of
    ≤ ``_SCRATCH_MAX_BUFFER`` are kept, up to ``_SCRATCH_BYTES_PER_THREAD`` per thread.
    """
    nbytes = torch.Size(sizes).numel() * torch.empty((), dtype=dtype).element_size()
    cache: dict[tuple[str, int], torch.Tensor] = _SCRATCH.__dict__.setdefault("cache", {})
    buffer = cache.get((slot, nbytes))
    if buffer is None:
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        kept = sum(t.numel() for t in cache.values())
        if nbytes <= _SCRATCH_MAX_BUFFER and kept + nbytes <= _SCRATCH_BYTES_PER_THREAD:
            cache[(slot, nbytes)] = buffer
    return buffer.view(dtype).view(sizes)


def hf_tensor_units(reader: TorchDistReader, bundle: ModelBundle, model: ModelConfig
                    ) -> list[Callable[[], list[tuple[str, torch.Tensor]]]]:
    """One callable per (rule, layer[, expert]) slice of a ``torch_dist`` checkpoint; each
    reads its slice and returns the HF-named tensors made from it (q/k/v split, say).
    Independent of one another, so several may run at once, one per thread: the slice is
    read into the calling thread's scratch buffer, so its tensors are valid only until that
    thread's next unit."""
    shape = bundle.attention_shape(model)
    units = []
    for rule in bundle.tensor_rules(model):
        full, dtype = reader.shape(rule.mcore), reader.dtype(rule.mcore)
        for position in rule.positions(model.num_layers, model.num_experts):
            def unit(rule: TensorRule = rule, position: tuple[int, ...] = position,
                     rest: tuple[int, ...] = full[len(position):],
                     dtype: torch.dtype = dtype) -> list[tuple[str, torch.Tensor]]:
                sizes = (1,) * len(position) + rest
                tensor = reader.read(rule.mcore, (*position, *(0,) * len(rest)), sizes,
                                     out=_scratch("slice", sizes, dtype)).reshape(rest)
                return list(zip(rule.hf_names(*position),
                                to_hf(rule, tensor, shape, model.vocab_size), strict=True))
            units.append(unit)
    return units


def plan_hf_tensors(bundle: ModelBundle, model: ModelConfig,
                    dtype_of: Callable[[TensorRule], torch.dtype]) -> list[PlannedTensor]:
    """Names, shapes and dtypes (``dtype_of(rule)``) of the HF tensors of ``model``, in the
    order of the bundle's rules (what :func:`hf_tensor_units` and the live export make)."""
    shapes = bundle.hf_shapes(model)
    plan = []
    for rule in bundle.tensor_rules(model):
        dtype = dtype_of(rule)
        for position in rule.positions(model.num_layers, model.num_experts):
            for template, name in zip(rule.hf, rule.hf_names(*position), strict=True):
                plan.append(PlannedTensor(name, shapes[template], dtype))
    return plan


def write_hf_side_dir(source: str | Path, checkpoint: str | Path) -> Path:
    """``checkpoint/hf/``: ``source``'s ``config.json`` and tokenizer / generation files
    (what :func:`mcore_to_hf` restores next to the weights). Returns that directory."""
    source, side = Path(source), Path(checkpoint) / HF_SIDE_DIR
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{source}: no config.json to store with the checkpoint")
    side.mkdir(exist_ok=True)
    shutil.copy2(source / "config.json", side / "config.json")
    copy_side_files(source, side)
    return side


def _missing_side_dir(mcore_dir: Path) -> CheckpointError:
    """The one-line error for a checkpoint without ``hf/config.json``, saying what to do."""
    if (mcore_dir / "policy" / "metadata.json").is_file():
        return CheckpointError(f"{mcore_dir}: a training checkpoint, not a model; convert its "
                               f"policy: {mcore_dir / 'policy'}")
    run_dir = mcore_dir.parent.parent.parent  # RUN/checkpoints/step_N/policy
    if mcore_dir.parent.parent.name == "checkpoints" and STEP_DIR.match(mcore_dir.parent.name):
        source = run_dir / "policy_hf"
        where = str(source) if (source / "config.json").is_file() else "<run-dir>/policy_hf"
        return CheckpointError(f"{mcore_dir}: no {HF_SIDE_DIR}/config.json (saved before "
                               f"training checkpoints carried it): copy {where}/* into "
                               f"{mcore_dir / HF_SIDE_DIR}/ and convert again")
    return CheckpointError(f"{mcore_dir}: no {HF_SIDE_DIR}/config.json; this checkpoint was "
                           "not made from a Hugging Face model, so its architecture is unknown")


def mcore_to_hf(mcore_dir: str | Path, out: str | Path,
                max_shard_bytes: int = 2 * 1024**3, threads: int = 4) -> Path:
    """Convert a ``torch_dist`` checkpoint written by :func:`hf_to_mcore`, or a training
    checkpoint's ``policy`` (``RUN/checkpoints/step_N/policy``; ``RUN/checkpoints/latest/
    policy`` reads the ``latest`` pointer), back into an HF directory that
    ``from_pretrained`` loads. The architecture and tokenizer come from its ``hf/``.

    ``threads`` slices are read, split and written at once (each straight to its offset in
    its shard); resident memory is about ``threads`` slices, whatever the model size.
    """
    mcore_dir, out = resolve_latest(mcore_dir), Path(out)
    side = mcore_dir / HF_SIDE_DIR
    if not mcore_dir.is_dir():
        raise CheckpointError(f"{mcore_dir}: no such checkpoint directory")
    if not (side / "config.json").is_file():
        raise _missing_side_dir(mcore_dir)
    hf, bundle, model = load_hf_architecture(side)
    reader = TorchDistReader(mcore_dir)
    tmp = _atomic_output(out)
    try:
        plan = plan_hf_tensors(bundle, model, lambda rule: reader.dtype(rule.mcore))
        writer = SafetensorsShardWriter(plan, tmp, max_shard_bytes)
        try:
            def run(unit: Callable[[], list[tuple[str, torch.Tensor]]]) -> None:
                for name, tensor in unit():
                    writer.write(name, tensor)

            with ThreadPoolExecutor(max(1, threads), thread_name_prefix="mcore-to-hf") as pool:
                for _ in pool.map(run, hf_tensor_units(reader, bundle, model)):
                    pass
            writer.finish(threads)
        finally:
            writer.close()
        shutil.copy2(side / "config.json", tmp / "config.json")
        copy_side_files(side, tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %s → %s", mcore_dir, out)
    return out
