"""The worker side of a vLLM rollout engine: a ``worker_extension_cls`` for vLLM's workers.

vLLM mixes this class into every worker (``LLM(worker_extension_cls=WORKER_EXTENSION)``); the
engine calls its methods by name through ``llm.collective_rpc("uniapl_...")``, which works in
both of vLLM's execution modes (engine core in-process or in its own processes) because only
names and plain data cross the process boundary.

A weight update is one transaction on each worker:

- :meth:`uniapl_begin_update` opens vLLM's layerwise reload session
  (``initialize_layerwise_reload``): every layer goes back to its checkpoint-format
  parameters and buffers the weights it receives until it has all of them, then processes
  them (e.g. the CPU backend's repacking) into the kernel tensors in place. Plain
  ``model.load_weights`` works only once on CPU: afterwards the repacked parameters have lost
  their loaders.
- :meth:`uniapl_load_bucket` loads one HF-named bucket, however the buckets cut the
  tensors vLLM fuses (q/k/v, gate/up): a layer waits until every piece arrived.
- :meth:`uniapl_finish_update` closes the session (``finalize_layerwise_reload``) after
  checking that every parameter of the model was written.

How a bucket reaches the worker (``transport``):

- ``inline``: the tensors themselves (engine core in the engine's process only);
- ``shm``: a file in ``/dev/shm`` holding the packed bucket (``TensorMeta`` layout of
  :mod:`uniapl_mcore.rollout.transport`), mapped without copying; any platform, any
  process on the node;
- ``cuda_ipc``: a CUDA byte buffer shared by IPC handle (pickled by the engine), GPU only;
- direct transfer (:meth:`uniapl_receive_direct`): the worker itself receives the trainer's
  broadcasts over a process group (gloo on CPU, NCCL on GPU;
  :mod:`uniapl_mcore.rollout.channel`).

CUDA is touched only when the worker's device is a CUDA device (no synchronize on CPU).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import torch

from uniapl_mcore.rollout.transport import MetaTuple, tensor_views

logger = logging.getLogger(__name__)

#: ``worker_extension_cls`` value for ``vllm.LLM``
WORKER_EXTENSION = "uniapl_mcore.rollout.vllm_worker.UniaplWorkerExtension"

class UniaplWorkerExtension:
    """Methods vLLM adds to each of its workers (``self`` is the vLLM worker: it has
    ``model_runner``, ``model_config``, ``device``, ``rank``). Names start with ``uniapl_``
    so they never collide with the worker's own."""

    # ------------------------------------------------------------------ update session
    def uniapl_begin_update(self) -> int:
        """Open a reload session; returns the number of parameters that must be written."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        model = self.model_runner.get_model()
        # names of one tensor (e.g. a tied lm_head and the embedding): writing any one of
        # them writes it; taken before the session separates them into checkpoint-format
        # parameters
        aliases: dict[int, set[str]] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), set()).add(name)
        self._uniapl_expected = list(aliases.values())
        self._uniapl_tied = {n for names in aliases.values() if len(names) > 1 for n in names}
        self._uniapl_tied_src: dict[str, torch.Tensor] = {}
        initialize_layerwise_reload(model)
        self._uniapl_loaded: set[str] = set()
        self._uniapl_keep: list[Any] = []  # mapped buffers the pending layers still read
        return len(self._uniapl_expected)

    def uniapl_load_bucket(self, transport: str, handle: Any,
                           metas: list[MetaTuple] | None = None) -> int:
        """Load one HF-named bucket; returns how many tensors it held.

        ``transport`` ``inline``: ``handle`` is a list of (name, tensor); ``shm``: the path of
        a ``/dev/shm`` file with the packed bucket laid out as ``metas``; ``cuda_ipc``: the
        pickled ``reduce_tensor`` of a CUDA uint8 buffer laid out as ``metas``.
        """
        if not hasattr(self, "_uniapl_loaded"):
            raise RuntimeError("uniapl_load_bucket outside a weight update session")
        if transport == "inline":
            named = list(handle)
        elif transport == "shm":
            total = max((offset + nbytes for *_, offset, nbytes in metas), default=0)
            flat = torch.from_file(handle, shared=True, size=total, dtype=torch.uint8) \
                if total else torch.empty(0, dtype=torch.uint8)
            self._uniapl_keep.append(flat)
            named = tensor_views(flat, metas)
        elif transport == "cuda_ipc":
            rebuild, args = pickle.loads(handle)
            args = list(args)
            args[6] = self.device.index  # the IPC buffer, opened on this worker's device
            flat = rebuild(*args)
            self._uniapl_keep.append(flat)
            named = tensor_views(flat, metas)
        else:
            raise ValueError(f"transport: unknown {transport!r} (inline | shm | cuda_ipc)")
        return self._uniapl_load(named)

    def _uniapl_load(self, named: list[tuple[str, torch.Tensor]]) -> int:
        device = self.device
        if device.type != "cpu":
            named = [(n, t.to(device, non_blocking=True)) for n, t in named]
        self._uniapl_tied_src.update((n, t) for n, t in named if n in self._uniapl_tied)
        loaded = self.model_runner.get_model().load_weights(weights=named)
        if loaded:
            self._uniapl_loaded |= set(loaded)
        return len(named)

    def _uniapl_fill_tied(self) -> None:
        """A tied tensor sent under one name (the embedding) is loaded under its other names
        too (the LM head): the reload session holds them as separate parameters."""
        for names in self._uniapl_expected:
            sent = sorted(names & set(self._uniapl_tied_src))
            missing = sorted(names - self._uniapl_loaded)
            if len(names) > 1 and sent and missing:
                src = self._uniapl_tied_src[sent[0]]
                self._uniapl_load([(name, src) for name in missing])

    def uniapl_finish_update(self) -> int:
        """Close the session (layers process and copy into their kernel tensors); raises
        when parameters were never written. Returns the parameters written."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if not hasattr(self, "_uniapl_loaded"):
            raise RuntimeError("uniapl_finish_update outside a weight update session")
        self._uniapl_fill_tied()
        missing = sorted(min(names) for names in self._uniapl_expected
                         if not names & self._uniapl_loaded)
        model = self.model_runner.get_model()
        finalize_layerwise_reload(model, self.model_config)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        count = len(self._uniapl_loaded)
        del self._uniapl_loaded, self._uniapl_keep, self._uniapl_tied_src
        if missing:
            raise RuntimeError(f"weight update is incomplete: {len(missing)} vLLM parameters "
                               f"never written, e.g. {missing[:3]}")
        return count

    # ------------------------------------------------------------------ direct transfer
    def uniapl_receive_direct(self, specs: list[dict[str, Any]], first_rank: int
                              ) -> tuple[int, int]:
        """Receive every bucket the trainer's stage leaders broadcast over the channels
        ``specs`` (:mod:`uniapl_mcore.rollout.channel`; this worker at group rank
        ``first_rank + self.rank``) and load them into the open session; the channels stay
        open for the next update. Returns (tensors, bytes)."""
        from uniapl_mcore.rollout.channel import ChannelSet, load_all

        if not hasattr(self, "_uniapl_loaded"):
            raise RuntimeError("uniapl_receive_direct outside a weight update session")
        if not hasattr(self, "_uniapl_channels"):
            self._uniapl_channels = ChannelSet()
        gloo = any(spec["backend"] == "gloo" for spec in specs)
        device = torch.device("cpu") if gloo else self.device

        def load(named: list[tuple[str, torch.Tensor]]) -> int:
            self._uniapl_keep.append(named)  # the pending layers may still read them
            return self._uniapl_load(named)

        return load_all(self._uniapl_channels.receive(specs, first_rank + self.rank, device),
                        load)
