"""Distributed test bodies (module-level, picklable) for the rollout tests."""

from __future__ import annotations

from typing import Any

import torch


def _perturb(gpt, scale: float) -> None:
    """Deterministic change of every parameter (a stand-in for an optimizer step)."""
    with torch.no_grad():
        for index, param in enumerate(gpt.parameters()):
            gen = torch.Generator().manual_seed(1000 + index)
            param.add_(scale * torch.randn(param.shape, generator=gen).to(param.dtype))


def _response_logprobs(gpt, layout, sequences: list[list[int]], starts: list[int]
                       ) -> list[list[float]]:
    """Trainer log-probs of tokens ``seq[start:]`` (Megatron forward, right-padded batch)."""
    from uniapl_mcore.megatron.parity import megatron_logits

    width = max(len(s) for s in sequences)
    tokens = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, seq in enumerate(sequences):
        tokens[i, :len(seq)] = torch.tensor(seq)
    logits = megatron_logits(gpt, tokens, layout)
    if logits is None:
        return []
    logp = logits.log_softmax(-1)
    out = []
    for i, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
        targets = torch.tensor(seq[start:])
        out.append(logp[i, start - 1:len(seq) - 1].gather(-1, targets[:, None])[:, 0].tolist())
    return out


def _sample_requests():
    """Sampled from the full distribution (no top-k / top-p), so the engines' log-probs are
    the trainer's log-softmax (``rollout.types``)."""
    from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams

    return [GenerationRequest(tuple(range(3 + i, 9 + 2 * i)),
                              SamplingParams(n=2, max_tokens=12, seed=i, temperature=1.0),
                              str(i))
            for i in range(4)]


def sync_and_compare(hf: str, mcore: str, ray_address: str, tp: int, num_engines: int,
                     perturb: float, kind: str = "torch", pp: int = 1, syncs: int = 1,
                     options: dict[str, Any] | None = None,
                     bucket_bytes: int = 1024**2 // 8, ep: int = 1,
                     transport: str = "object_store") -> dict[str, Any] | None:
    """Megatron at TP=``tp`` x PP=``pp`` x EP=``ep`` → ``syncs`` weight syncs (the weights
    changed before each) by ``transport`` (``object_store`` | ``direct``) into empty ``kind``
    engines → sample → compare the engines' log-probs with the trainer's. Rank 0 returns the
    findings (``engine_logprobs`` / ``trainer_logprobs``: one list of rows per sync)."""
    import torch.distributed as dist

    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import TrainableModel
    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.rollout.pool import EnginePool, PoolError, default_spec
    from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams
    from uniapl_mcore.rollout.weight_sync import sync_from_megatron
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    _, bundle, model = load_hf_architecture(hf)
    parallel = ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                              expert_parallel_size=ep)
    layout = init_parallel(parallel, seed=0)
    try:
        config = transformer_config(model, parallel)
        gpt = build_gpt_model(model, config, layout.is_first_stage, layout.is_last_stage)
        gpt.eval()
        load_checkpoint(mcore, TrainableModel([gpt], None, None, config),
                        include_optimizer=False)
        found: dict[str, Any] = {"engine_logprobs": [], "trainer_logprobs": [], "timings": [],
                                 "versions": []}
        pool = None
        if dist.get_rank() == 0:
            from uniapl_mcore.runtime.ray_cluster import init_ray

            init_ray(ray_address, log_to_driver=False)
            engine_options = dict(options or {"num_threads": 1})
            pool = EnginePool(default_spec(hf, kind, load_checkpoint=False, **engine_options),
                              num_engines, cpus_per_engine=0, requests_per_call=2)
            request = GenerationRequest((1, 2, 3), SamplingParams(max_tokens=4, seed=0))
            try:
                pool.generate([request])
                found["refused_before_sync"] = False
            except PoolError:
                found["refused_before_sync"] = True
        exporter = direct = None
        for version in range(1, syncs + 1):
            _perturb(gpt, perturb * version)
            if transport == "direct":
                from uniapl_mcore.rollout.weight_sync import DirectSync

                direct = direct or DirectSync([gpt], model, bundle)
                timings = direct.sync(pool, version, bucket_bytes)
            else:
                from uniapl_mcore.checkpoint.live_export import LiveExporter

                exporter = exporter or LiveExporter([gpt], model, bundle, dst=0)
                timings = sync_from_megatron(pool, [gpt], model, bundle, version=version,
                                             bucket_bytes=bucket_bytes, exporter=exporter)
            payload: list[Any] = [None]
            if pool is not None:
                found["timings"].append(timings)
                found["versions"].append(pool.refresh_versions())
                requests = _sample_requests()
                results = pool.generate(requests)
                assert all(r.weight_version == version for r in results)
                payload = [[(list(r.prompt_ids), list(s.token_ids), list(s.logprobs))
                            for r, res in zip(requests, results, strict=True)
                            for s in res.samples]]
            dist.broadcast_object_list(payload, src=0)
            rows = payload[0]
            trainer = _response_logprobs(gpt, layout, [p + t for p, t, _ in rows],
                                         [len(p) for p, _, _ in rows])
            last = [trainer if trainer else None]  # the last stage holds the logits
            dist.broadcast_object_list(last, src=dist.get_world_size() - 1)
            found["engine_logprobs"].append([lp for _, _, lp in rows])
            found["trainer_logprobs"].append(last[0])
        if pool is None:
            return None
        pool.shutdown()
        return found
    finally:
        layout.destroy()
