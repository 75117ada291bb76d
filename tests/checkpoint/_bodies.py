"""Per-rank bodies for the checkpoint tests (module-level for the harness)."""

from __future__ import annotations

from uniapl_mcore.megatron import parity


def parity_json(hf: str, mcore: str, tp: int, pp: int, ep: int = 1,
                dtype: str = "float32", extra: tuple[str, ...] = ()) -> dict | None:
    """``tools/check_parity.py``'s path: its flags (``extra``: more of them) → its report."""
    args = parity.build_parser().parse_args(["--hf", hf, "--mcore", mcore, "--tp", str(tp),
                                             "--pp", str(pp), "--ep", str(ep),
                                             "--dtype", dtype, *extra])
    return parity.run(args)


def live_export(hf: str, mcore: str, tp: int, pp: int, ep: int, dst: int | None,
                bucket_bytes: int, ring: int = 0) -> dict:
    """Build the model at a layout, load ``mcore``, stream-export; what this rank received
    (each bucket copied before the next is asked for, as ``ring`` reuse requires)."""
    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.checkpoint.live_export import LiveExporter
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import TrainableModel
    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    _, bundle, model = load_hf_architecture(hf)
    parallel = ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp,
                              expert_parallel_size=ep)
    layout = init_parallel(parallel, seed=0)
    try:
        config = transformer_config(model, parallel)
        gpt = build_gpt_model(model, config, layout.is_first_stage, layout.is_last_stage)
        load_checkpoint(mcore, TrainableModel([gpt], None, None, config),
                        include_optimizer=False)
        exporter = LiveExporter([gpt], model, bundle, dst=dst)
        count, tensors = 0, {}
        for bucket in exporter.iter_buckets(bucket_bytes, ring=ring):
            count += 1
            tensors.update((name, t.clone()) for name, t in bucket)
        return {"buckets": count, "tensors": tensors}
    finally:
        layout.destroy()


def resave_and_stream(hf: str, mcore: str, out: str, pp: int,
                      first: int | None = None, last: int | None = None) -> dict | None:
    """Load ``mcore`` into the model built at PP=``pp`` (``first`` / ``last``: the end
    stages' layers; None: the default split), save it again as ``out/step_000000``
    (torch_dist, model only) and stream-export it to rank 0, which returns the saved
    directory and the streamed HF tensors."""
    import torch.distributed as dist

    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.checkpoint.live_export import LiveExporter
    from uniapl_mcore.megatron.checkpointing import load_checkpoint, save_checkpoint
    from uniapl_mcore.megatron.config import check_layout
    from uniapl_mcore.megatron.model import TrainableModel
    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    _, bundle, model = load_hf_architecture(hf)
    parallel = ParallelConfig(pipeline_parallel_size=pp, first_stage_layers=first,
                              last_stage_layers=last)
    check_layout(model, parallel)
    layout = init_parallel(parallel, seed=0)
    try:
        config = transformer_config(model, parallel)
        gpt = build_gpt_model(model, config, layout.is_first_stage, layout.is_last_stage)
        trainable = TrainableModel([gpt], None, None, config)
        load_checkpoint(mcore, trainable, include_optimizer=False)
        saved = save_checkpoint(out, 0, trainable, include_optimizer=False)
        tensors = {}
        for bucket in LiveExporter([gpt], model, bundle, dst=0).iter_buckets(40_000):
            tensors.update((name, t.clone()) for name, t in bucket)
        return {"saved": str(saved), "tensors": tensors} if dist.get_rank() == 0 else None
    finally:
        layout.destroy()


def live_hf_dir(hf: str, mcore: str, tp: int, pp: int, out: str) -> str | None:
    """Build the model at a layout, load ``mcore`` and write it as an HF directory ``out``
    with :func:`~uniapl_mcore.checkpoint.hf_export.write_live_hf_dir` (rank 0 writes)."""
    from uniapl_mcore.checkpoint.convert import load_hf_architecture
    from uniapl_mcore.checkpoint.hf_export import write_live_hf_dir
    from uniapl_mcore.checkpoint.live_export import LiveExporter
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import TrainableModel
    from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
    from uniapl_mcore.runtime.layout import ParallelConfig
    from uniapl_mcore.runtime.parallel import init_parallel

    _, bundle, model = load_hf_architecture(hf)
    parallel = ParallelConfig(tensor_parallel_size=tp, pipeline_parallel_size=pp)
    layout = init_parallel(parallel, seed=0)
    try:
        config = transformer_config(model, parallel)
        gpt = build_gpt_model(model, config, layout.is_first_stage, layout.is_last_stage)
        load_checkpoint(mcore, TrainableModel([gpt], None, None, config),
                        include_optimizer=False)
        exporter = LiveExporter([gpt], model, bundle, dst=0)
        side = hf if layout.rank == 0 else None
        written = write_live_hf_dir(exporter, out, side, bucket_bytes=40_000,
                                    max_shard_bytes=60_000)
        return None if written is None else str(written)
    finally:
        layout.destroy()
