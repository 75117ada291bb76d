"""Training-state checkpoints that load at any TP / PP / DP layout, written atomically.

A checkpoint is a Megatron ``dist_checkpointing`` directory (``torch_dist`` format) holding
the model's sharded tensors, the optimizer state in the distributed optimizer's fully
reshardable model-space format, and common (rank-identical) state: the LR scheduler, the
step counter and any caller state. Layout on disk::

    <root>/step_000012/      one complete checkpoint
    <root>/latest            text: "step_000012", replaced atomically after the directory

A checkpoint is first written to ``<root>/.tmp.step_000012`` and renamed into place by rank 0
only after every rank finished writing, so a crash mid-save never leaves a half checkpoint
where ``latest`` or a resume could find it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from uniapl_mcore.checkpoint.dcp_io import TorchDistReader
from uniapl_mcore.checkpoint.hf_io import CheckpointError
from uniapl_mcore.checkpoint.paths import LATEST, resolve_latest, step_dir_name
from uniapl_mcore.checkpoint.paths import STEP_DIR as _STEP_DIR
from uniapl_mcore.megatron.model import TrainableModel

logger = logging.getLogger(__name__)

#: Optimizer sharding: the distributed optimizer's fully reshardable (any TP/PP/DP) format.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable",
                      "chained_optim_avoid_prefix": True}


def unwrap_model(chunk: Any) -> Any:
    """The GPTModel inside a DDP wrapper (checkpoint keys carry no ``module.`` prefix)."""
    return getattr(chunk, "module", chunk)


def _model_key(index: int, count: int) -> str:
    return "model" if count == 1 else f"model{index}"


def _model_sharded_state_dict(chunks: list[Any]) -> dict[str, Any]:
    return {_model_key(i, len(chunks)): unwrap_model(chunk).sharded_state_dict()
            for i, chunk in enumerate(chunks)}


def _placeholder_torch_adam_state(optimizer: Any) -> list[torch.optim.Optimizer]:
    """Give never-stepped torch Adams zero moments and ``step`` 0; returns those it filled.

    Megatron's optimizer ``state_dict()`` (called while building the loading state dict)
    reads each parameter's ``step``, which torch's Adam — the fallback without Apex /
    Transformer Engine — creates only on its first step. The caller clears the placeholders
    again before ``load_state_dict``, which allocates the real state itself.
    """
    filled = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = getattr(inner, "optimizer", None)
        if not isinstance(torch_opt, torch.optim.Adam | torch.optim.AdamW):
            continue
        if torch_opt.state:
            continue
        filled.append(torch_opt)
        for group in torch_opt.param_groups:
            for param in group["params"]:
                torch_opt.state[param].update(step=torch.tensor(0.0),
                                              exp_avg=torch.zeros_like(param),
                                              exp_avg_sq=torch.zeros_like(param))
    return filled


@contextlib.contextmanager
def _torch_adam_step_set_aside(optimizer: Any) -> Iterator[None]:
    """Work around Megatron 0.16's distributed-optimizer load with torch's Adam.

    ``DistributedOptimizer.load_state_dict`` first gives every torch-Adam state a ``step``
    tensor, then copies the checkpoint's per-parameter tensors (param, exp_avg, exp_avg_sq)
    over *every* state key — and fails on ``step``, which the checkpoint keeps per group.
    While the per-parameter copy runs, ``step`` is set aside; it is put back as one tensor
    per parameter, because Megatron hands all parameters the *same* tensor and torch's Adam
    increments it in place (it would advance once per parameter per step).
    """
    patched = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = getattr(inner, "optimizer", None)
        original = getattr(inner, "load_parameter_state_from_fully_reshardable", None)
        if original is None or not isinstance(torch_opt, torch.optim.Adam | torch.optim.AdamW):
            continue

        def load_without_step(param_state, _original=original, _opt=torch_opt):
            steps = {p: st.pop("step") for p, st in _opt.state.items() if "step" in st}
            try:
                return _original(param_state)
            finally:
                for param, step in steps.items():
                    _opt.state[param]["step"] = step.detach().clone()

        inner.load_parameter_state_from_fully_reshardable = load_without_step
        patched.append(inner)
    try:
        yield
    finally:
        for inner in patched:
            del inner.load_parameter_state_from_fully_reshardable


def _sharded_state(trainable: TrainableModel, include_optimizer: bool,
                   is_loading: bool) -> dict[str, Any]:
    state = _model_sharded_state_dict(trainable.chunks)
    if include_optimizer:
        filled = _placeholder_torch_adam_state(trainable.optimizer) if is_loading else []
        merged: dict[str, Any] = {}
        for value in state.values():
            merged.update(value)
        state["optimizer"] = trainable.optimizer.sharded_state_dict(
            merged, is_loading=is_loading, metadata=OPTIMIZER_METADATA)
        for torch_opt in filled:
            torch_opt.state.clear()
    return state


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def write_model_state(directory: str | Path, trainable: TrainableModel,
                      include_optimizer: bool = True, common: dict[str, Any] | None = None,
                      step: int = 0) -> None:
    """Write model (+ optimizer, scheduler) and ``common`` into an existing empty directory.

    Collective; not atomic by itself (see :func:`save_checkpoint` and :func:`staged_dir`).
    """
    from megatron.core import dist_checkpointing

    state = _sharded_state(trainable, include_optimizer, is_loading=False)
    state["common"] = {"step": step, **(common or {})}
    if include_optimizer:
        state["common"]["scheduler"] = trainable.scheduler.state_dict()
    dist_checkpointing.save(state, str(directory), content_metadata=dict(OPTIMIZER_METADATA))


@contextlib.contextmanager
def staged_dir(root: str | Path, step: int, keep_last: int | None = None,
               subdirs: tuple[str, ...] = ()) -> Iterator[Path]:
    """Collective: yields ``root/.tmp.step_NNNNNN`` (fresh, with ``subdirs`` created) to
    write into; after the body finished on every rank, rank 0 renames it to
    ``root/step_NNNNNN``, points ``latest`` at it and prunes to ``keep_last``."""
    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f".tmp.{step_dir_name(step)}"
    if _is_rank0():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for sub in subdirs:
            (tmp / sub).mkdir()
    barrier()
    yield tmp
    barrier()
    if _is_rank0():
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_latest(root, final.name)
        if keep_last is not None:
            prune_checkpoints(root, keep_last)
    barrier()
    logger.info("saved checkpoint %s", final)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: str | Path, step: int, trainable: TrainableModel,
                    include_optimizer: bool = True, common: dict[str, Any] | None = None,
                    keep_last: int | None = None) -> Path:
    """Save model (+ optimizer, scheduler) and ``common`` state as ``root/step_NNNNNN``.

    Collective: every rank calls it. ``common`` must be identical on all ranks (rank 0's copy
    is written). Returns the final checkpoint directory.
    """
    with staged_dir(root, step, keep_last) as tmp:
        write_model_state(tmp, trainable, include_optimizer, common, step)
    return Path(root) / step_dir_name(step)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f".{LATEST}.tmp"
    with open(tmp, "w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / LATEST)


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``root/latest`` names, or ``None`` when there is none yet."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = Path(root) / name
    if not _STEP_DIR.match(name) or not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {name!r}, which is not a checkpoint directory")
    return path


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (never the one ``latest`` names)."""
    keep = latest_checkpoint(root)
    for _, path in list_checkpoints(root)[:-keep_last]:
        if keep is None or path.resolve() != keep.resolve():
            shutil.rmtree(path, ignore_errors=True)


def _drop_absent_extra_state(model_state: dict[str, Any], stored: set[str]) -> list[str]:
    """Remove ``*._extra_state`` objects the checkpoint lacks; returns their names.

    Extra state is per-implementation metadata (Transformer Engine's FP8 scales; nothing for
    the local spec). Checkpoints converted from Hugging Face, or saved with the other layer
    implementation, do not carry it, and loading without it is correct.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    dropped = [name for name, value in model_state.items()
               if isinstance(value, ShardedObject) and name.endswith("_extra_state")
               and value.unique_key not in stored]
    for name in dropped:
        del model_state[name]
    return dropped


def _load_or_explain(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``dist_checkpointing.load``; a checkpoint that does not fit this model (shape, missing
    key) becomes one CheckpointError naming the directory and Megatron's reason."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return dist_checkpointing.load(state, str(path))
    except (CheckpointingException, CheckpointException) as err:
        reason = str(err).strip().splitlines()
        raise CheckpointError(f"{path}: does not fit this model: "
                              f"{reason[-1] if reason else type(err).__name__}") from None


def load_checkpoint(path: str | Path, trainable: TrainableModel,
                    include_optimizer: bool = True) -> dict[str, Any]:
    """Load a checkpoint into ``trainable`` at this run's layout; returns the common state.

    Collective. ``include_optimizer=False`` loads weights only (e.g. an initial model).
    ``RUN/checkpoints/latest/policy`` reads the ``latest`` pointer.
    """
    path = resolve_latest(path)
    if not (path / "metadata.json").is_file():
        raise FileNotFoundError(f"{path} is not a dist_checkpointing checkpoint "
                                "(no metadata.json)")
    state = _sharded_state(trainable, include_optimizer, is_loading=True)
    stored = set(TorchDistReader(path).metadata.state_dict_metadata)
    absent = {key: _drop_absent_extra_state(state[key], stored)
              for key in state if key.startswith("model")}
    loaded = _load_or_explain(state, path)
    common = loaded.pop("common", None) or {}
    for i, chunk in enumerate(trainable.chunks):
        key = _model_key(i, len(trainable.chunks))
        weights = loaded[key]
        weights.update(dict.fromkeys(absent[key]))  # None: "no extra state" to every module
        unwrap_model(chunk).load_state_dict(weights, strict=True)
    if include_optimizer:
        with _torch_adam_step_set_aside(trainable.optimizer):
            trainable.optimizer.load_state_dict(loaded["optimizer"])
        if "scheduler" in common:
            trainable.scheduler.load_state_dict(common["scheduler"])
    logger.info("loaded checkpoint %s (step %s)", path, common.get("step"))
    return common
