"""Configuration of the rollout engines, the Ray pool and weight sync.

Units are in the names (``*_bytes``, ``*_s``); everything is validated in ``__post_init__``
with a message naming the field (relative to the ``rollout`` section).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from uniapl_mcore.config import ConfigError, check
from uniapl_mcore.models.config import DTYPES
from uniapl_mcore.rollout.types import SamplingParams


@dataclass
class SamplingConfig:
    """Default sampling for rollouts (per-request ``SamplingParams`` are built from it).

    There is no seed here: every request gets its own (the trainer's from ``train.seed``, the
    step and the row, so a resumed run samples what an uninterrupted one would)."""

    #: removed keys, with what to do instead (read by ``config.build_dataclass``)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "seed": "rollouts are seeded per request (the trainer from train.seed, the step and "
                "the row; generate_teacher from --seed and the row id); delete the key"}

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            self.params(1)
        except ConfigError as err:  # the same checks, named as this section's fields
            path = err.field_path.replace("sampling.max_tokens", "sampling.max_new_tokens")
            raise ConfigError(path, err.message) from None

    def params(self, n: int, seed: int | None = None) -> SamplingParams:
        """``SamplingParams`` for ``n`` samples, seeded with ``seed``."""
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, max_tokens=self.max_new_tokens,
                              stop=tuple(self.stop), stop_token_ids=tuple(self.stop_token_ids),
                              seed=seed)


@dataclass
class VllmConfig:
    """Options of the vLLM engines (see :mod:`uniapl_mcore.rollout.vllm_engine`).

    ``None`` means "the platform's choice", resolved by the engine where it starts:

    - ``gpu_memory_utilization``: GPU share for weights + KV cache (GPU default 0.85). On CPU
      vLLM reads it as a share of *host RAM*, so it is refused there: size the cache with
      ``kv_cache_bytes``.
    - ``kv_cache_bytes``: KV cache size in bytes (CPU default 256 MiB; on GPU, when set, it
      replaces ``gpu_memory_utilization``'s sizing).
    - ``enable_sleep_mode``: where vLLM supports it (GPU); refused on CPU when true.
    - ``enforce_eager``: CUDA graphs / compilation off (CPU default true, GPU default false).
    - ``multiprocessing``: vLLM's engine core in its own process (vLLM's default) or in the
      engine's (``VLLM_ENABLE_V1_MULTIPROCESSING``; in-process starts faster).
    - ``weight_transport``: how a bucket goes from the engine to vLLM's workers: ``inline``
      (tensors, in-process engine with one worker only), ``shm`` (a ``/dev/shm`` file),
      ``cuda_ipc`` (one buffer on the engine's GPU; GPU engines of tensor parallel size 1);
      ``auto``: inline where possible, else shm.
    - ``cpu_threads_bind``: ``VLLM_CPU_OMP_THREADS_BIND`` on CPU (``nobind``: leave the
      threads to the OS; ``auto``: vLLM pins them and reserves a core); CPU only.
    """

    gpu_memory_utilization: float | None = None
    kv_cache_bytes: int | None = None
    enable_sleep_mode: bool | None = None
    enforce_eager: bool | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    multiprocessing: bool = True
    weight_transport: Literal["auto", "inline", "shm", "cuda_ipc"] = "auto"
    cpu_threads_bind: str = "nobind"

    def __post_init__(self) -> None:
        check(self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
              "vllm.gpu_memory_utilization",
              f"must be in (0, 1] or null, got {self.gpu_memory_utilization}")
        check(self.kv_cache_bytes is None or self.kv_cache_bytes >= 1024**2,
              "vllm.kv_cache_bytes", f"must be >= 1 MiB or null, got {self.kv_cache_bytes}")
        check(self.max_model_len is None or self.max_model_len > 0, "vllm.max_model_len",
              f"must be > 0, got {self.max_model_len}")
        check(self.weight_transport in ("auto", "inline", "shm", "cuda_ipc"),
              "vllm.weight_transport", "must be 'auto', 'inline', 'shm' or 'cuda_ipc', "
              f"got {self.weight_transport!r}")
        check(bool(self.cpu_threads_bind), "vllm.cpu_threads_bind",
              "must be 'nobind', 'auto' or CPU id lists")

    @property
    def gpu_share(self) -> float:
        """``gpu_memory_utilization`` as a GPU engine uses it (its default resolved)."""
        return 0.85 if self.gpu_memory_utilization is None else self.gpu_memory_utilization

    @property
    def gpu_sleep(self) -> bool:
        """Whether a GPU engine runs with sleep mode (its default resolved: yes)."""
        return self.enable_sleep_mode is not False


@dataclass
class WeightSyncConfig:
    """How trainer weights reach the engines (:mod:`uniapl_mcore.rollout.weight_sync`).

    ``transport``: ``object_store`` (every tensor gathered to trainer rank 0, which puts
    packed buckets into Ray's shared-memory object store for the engines) or ``direct``
    (each pipeline stage's leader gathers its own stage within its TP/EP peers and
    broadcasts it straight to every engine worker over a process group: gloo on CPU, NCCL
    when the trainer's model is on CUDA; no rank-0 funnel). ``bucket_bytes``: size bound of
    one HF-named bucket. ``keep_weights_for_restart``: keep the last version's buckets in
    the object store so an engine Ray restarts is re-synced at once (``object_store``
    only; with ``direct`` a restarted engine is not served until the next sync). The
    engines' log-probs are compared with the trainer's every step (``mismatch/`` metrics,
    ``specs/objective.md`` §3.9).
    """

    #: removed keys, with what to do instead (read by ``config.build_dataclass``)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "check_logprobs_every_steps": "the trainer compares the engines' log-probs with its "
                                      "own every step (mismatch/ metrics); delete the key"}
    #: removed values, with what to use instead (read by ``config.build_dataclass``)
    REMOVED_VALUES: ClassVar[dict[str, dict[str, str]]] = {"transport": {
        "nccl": "use 'direct': stage leaders broadcast to the engine workers over NCCL when "
                "the model is on CUDA (gloo on CPU)"}}

    transport: Literal["object_store", "direct"] = "object_store"
    bucket_bytes: int = 512 * 1024**2
    keep_weights_for_restart: bool | None = None

    def __post_init__(self) -> None:
        check(self.transport in ("object_store", "direct"), "weight_sync.transport",
              f"must be 'object_store' or 'direct', got {self.transport!r}")
        check(self.bucket_bytes >= 1024**2, "weight_sync.bucket_bytes",
              f"must be >= 1 MiB, got {self.bucket_bytes}")
        check(not (self.transport == "direct" and self.keep_weights_for_restart),
              "weight_sync.keep_weights_for_restart",
              "'direct' keeps no copy of the weights (a restarted engine waits for the next "
              "sync); set it to false or null, or use transport: object_store")

    @property
    def keeps_weights(self) -> bool:
        """``keep_weights_for_restart`` resolved: default on for ``object_store``."""
        if self.keep_weights_for_restart is None:
            return self.transport == "object_store"
        return self.keep_weights_for_restart


@dataclass
class RolloutConfig:
    """The ``rollout`` section.

    ``engine``: ``torch`` (HF model class; CPU or small GPUs) or ``vllm``. ``num_engines``:
    engine actors in the pool; each spans ``engine_tensor_parallel_size`` GPUs (one placement
    bundle per TP rank) or ``cpus_per_engine`` CPUs. ``placement``: ``colocated`` (engines share
    the trainer's devices and sleep during training) or ``disaggregated`` (own devices/nodes).
    ``samples_per_prompt``: G. ``requests_per_call``: prompts per actor call (dispatch
    granularity for load balancing and retries). ``max_retries``: attempts per call after an
    engine failure. ``dtype``: engine weights (the trainer's HF dtype by default).
    """

    #: removed keys, with what to do instead (read by ``config.build_dataclass``)
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "mismatch": "the engine/trainer log-prob mismatch is measured every step (mismatch/ "
                    "metrics) and corrected by loss.rollout_is (level, mode, cap); delete the "
                    "key"}

    engine: Literal["torch", "vllm"] = "torch"
    num_engines: int = 1
    engine_tensor_parallel_size: int = 1
    placement: Literal["colocated", "disaggregated"] = "colocated"
    samples_per_prompt: int = 4
    dtype: str = "bfloat16"
    cpus_per_engine: float = 1.0
    max_batch_rows: int = 64
    requests_per_call: int = 8
    max_retries: int = 3
    call_timeout_s: float = 1800.0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)

    def __post_init__(self) -> None:
        check(self.engine in ("torch", "vllm"), "engine",
              f"must be 'torch' or 'vllm', got {self.engine!r}")
        check(self.placement in ("colocated", "disaggregated"), "placement",
              f"must be 'colocated' or 'disaggregated', got {self.placement!r}")
        for name in ("num_engines", "engine_tensor_parallel_size", "samples_per_prompt",
                     "max_batch_rows", "requests_per_call"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, f"must be >= 1, got {value!r}")
        check(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")
        check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        check(self.cpus_per_engine >= 0, "cpus_per_engine", "must be >= 0")
        check(self.call_timeout_s > 0, "call_timeout_s", "must be > 0")
        check(self.engine == "vllm" or self.engine_tensor_parallel_size == 1,
              "engine_tensor_parallel_size", "the torch engine runs one process per engine; "
              "use 1 (tensor parallelism needs engine: vllm)")

    def placement_spec(self, *, gpu_fraction: float = 0.5, timeout_s: float = 60.0,
                       colocate_with=None, bundle_indices: tuple[int, ...] | None = None,
                       gpus: bool | None = None):
        """The engines' :class:`~uniapl_mcore.rollout.placement.PlacementSpec`: one bundle per
        TP rank, ``cpus_per_engine`` split over them, whole GPUs when disaggregated and
        ``gpu_fraction`` of each when colocated (or bundles of the trainer's group
        ``colocate_with``). ``gpus``: whether the engines take GPUs (default: vLLM does;
        False for vLLM on CPU)."""
        from uniapl_mcore.rollout.placement import PlacementSpec

        tp = self.engine_tensor_parallel_size
        return PlacementSpec(self.placement, tensor_parallel_size=tp,
                             cpus_per_bundle=self.cpus_per_engine / tp,
                             gpus=self.gpus_per_engine > 0 if gpus is None else gpus,
                             gpu_fraction=gpu_fraction,
                             timeout_s=timeout_s, colocate_with=colocate_with,
                             bundle_indices=bundle_indices)

    @property
    def gpus_per_engine(self) -> int:
        """GPUs each engine actor reserves (one placement bundle per TP rank)."""
        return self.engine_tensor_parallel_size if self.engine == "vllm" else 0
