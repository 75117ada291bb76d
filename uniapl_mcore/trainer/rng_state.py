"""A process's RNG states (Python, NumPy, torch CPU, Megatron's model-parallel tracker, CUDA),
stored so that resuming unpickles nothing.

``rng/rank_NNNNN.safetensors`` holds the states as tensors (the generators' byte states, the
Mersenne Twister words as int64) and the few scalars (Python's gauss cache, NumPy's position
and gauss cache) as JSON in the safetensors header's ``__metadata__``. Checkpoints written
before this format (``rng/rank_NNNNN.pt``, a ``torch.save`` pickle holding NumPy arrays) are
read with ``torch.load(weights_only=True)`` with only NumPy's plain-array reconstruction
allowed; anything else in them is refused with one line naming the file.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uniapl_mcore.checkpoint.hf_io import CheckpointError, weights_only_refusal
from uniapl_mcore.log import error_line

FORMAT = "uniapl_mcore.rng/1"
_TRACKER = "tracker/"


def rng_file(directory: Path, rank: int) -> Path:
    """Rank ``rank``'s RNG file in a checkpoint's ``rng/`` directory."""
    return directory / f"rank_{rank:05d}.safetensors"


def legacy_rng_file(directory: Path, rank: int) -> Path:
    """The pickle file checkpoints held before :data:`FORMAT`."""
    return directory / f"rank_{rank:05d}.pt"


def rng_state() -> dict[str, Any]:
    """This process's RNG states, as the generators' own ``getstate`` calls return them."""
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"random": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor owning its storage (safetensors refuses shared or strided ones)."""
    return tensor.detach().cpu().contiguous().clone()


def state_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON scalars) for :func:`rng_state`'s dict."""
    version, words, gauss = state["random"]
    kind, keys, pos, has_gauss, cached = state["numpy"]
    tensors = {"random": torch.tensor(words, dtype=torch.int64),
               "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
               "torch": _plain(state["torch"])}
    tensors.update({_TRACKER + name: _plain(t) for name, t in state["tracker"].items()})
    if "cuda" in state:
        tensors["cuda"] = _plain(state["cuda"])
    scalars = {"random_version": int(version), "random_gauss": gauss, "numpy_kind": str(kind),
               "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss),
               "numpy_cached_gaussian": float(cached)}
    return tensors, scalars


def tensors_to_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
                     ) -> dict[str, Any]:
    """The inverse of :func:`state_to_tensors`."""
    state = {
        "random": (scalars["random_version"], tuple(int(x) for x in tensors["random"].tolist()),
                   scalars["random_gauss"]),
        "numpy": (scalars["numpy_kind"], tensors["numpy"].numpy().astype(np.uint32),
                  scalars["numpy_pos"], scalars["numpy_has_gauss"],
                  scalars["numpy_cached_gaussian"]),
        "torch": tensors["torch"],
        "tracker": {name[len(_TRACKER):]: t for name, t in tensors.items()
                    if name.startswith(_TRACKER)},
    }
    if "cuda" in tensors:
        state["cuda"] = tensors["cuda"]
    return state


def save_rng_state(path: Path) -> None:
    """This process's RNG states into the safetensors file ``path``."""
    from safetensors.torch import save_file

    tensors, scalars = state_to_tensors(rng_state())
    save_file(tensors, str(path), metadata={"format": FORMAT, "scalars": json.dumps(scalars)})


def load_rng_file(path: Path) -> dict[str, Any]:
    """The states in a file :func:`save_rng_state` wrote; one-line :class:`CheckpointError`
    naming ``path`` when it is damaged or not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: damaged RNG state file ({error_line(err)})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an RNG state file (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        return tensors_to_state(tensors, json.loads(meta["scalars"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed RNG state ({type(err).__name__}: "
                              f"{error_line(err)})") from None


def _numpy_array_globals() -> list:
    """What unpickling a plain NumPy array needs (and nothing else), under both the NumPy 2
    and the NumPy 1 module name of its reconstruction function."""
    from numpy._core.multiarray import _reconstruct

    return [np.ndarray, np.dtype, _reconstruct,
            (_reconstruct, "numpy.core.multiarray._reconstruct")]


def load_legacy_rng_file(path: Path) -> dict[str, Any]:
    """A pre-:data:`FORMAT` ``rank_NNNNN.pt``, through ``torch.load(weights_only=True)``."""
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused to load this RNG state (it holds more than "
                              f"tensors, numbers and NumPy arrays: "
                              f"{weights_only_refusal(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable RNG state ({error_line(err)})") from None
    try:  # the same checks and conversions the new format goes through
        return tensors_to_state(*state_to_tensors(state))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: not an RNG state ({type(err).__name__}: "
                              f"{error_line(err)})") from None


def read_rng_state(directory: Path, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s states from a checkpoint's ``rng/`` directory (None when it has none:
    a checkpoint written at another world size)."""
    path = rng_file(directory, rank)
    if path.is_file():
        return load_rng_file(path)
    legacy = legacy_rng_file(directory, rank)
    if legacy.is_file():
        return load_legacy_rng_file(legacy)
    return None
