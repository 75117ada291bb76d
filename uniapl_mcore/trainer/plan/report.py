"""The text ``uniapl train --config X --dry-run`` prints: layout, memory table, weight sync."""

from __future__ import annotations

from uniapl_mcore.trainer.config import UniaplConfig
from uniapl_mcore.trainer.plan.layout import Layout
from uniapl_mcore.trainer.plan.memory import GIB, MemoryEstimate, estimate_memory
from uniapl_mcore.trainer.plan.params import ModelParams, format_params
from uniapl_mcore.trainer.plan.sync import SyncEstimate, sync_estimate


def dry_run(cfg: UniaplConfig, world_size: int, gpu_memory_gib: float = 80.0, *,
            total_gpus: int | None = None) -> str:
    """The layout, memory and weight-sync report of ``cfg`` on ``world_size`` GPUs of
    ``gpu_memory_gib`` GiB each (raises :class:`ConfigError` if the layout is impossible)."""
    memory = estimate_memory(cfg, world_size, gpu_memory_gib, total_gpus=total_gpus)
    sync = sync_estimate(cfg, memory.layout)
    return "\n".join([format_report(memory.layout, memory), "", *sync_lines(sync)])


def format_report(layout: Layout, memory: MemoryEstimate) -> str:
    """A readable multi-line report: the layout, then the memory table in GiB."""
    lines = _layout_lines(layout, memory.params)
    lines.append("")
    lines += _memory_lines(memory)
    return "\n".join(lines)


def _stage_layers_text(counts: tuple[int, ...]) -> str:
    """``47 layers/stage`` (even split) or ``layers/stage 23/24/24/23`` (uneven)."""
    if len(set(counts)) == 1:
        return f"{counts[0]} layers/stage"
    return "layers/stage " + "/".join(map(str, counts))


def _layout_lines(layout: Layout, params: ModelParams | None) -> list[str]:
    t = layout.trainer
    lines = [f"Layout on {layout.world_size} trainer GPU(s)"
             + (f" of {layout.total_gpus}" if layout.total_gpus != layout.world_size else "")]
    moe = (f"; EP {t.ep} ({t.experts_per_rank} experts/rank), expert-DP {t.expert_dp}"
           if t.experts_per_rank else "")
    lines.append(f"  trainer        TP {t.tp} × PP {t.pp} × CP {t.cp} → DP {t.dp}"
                 f"{moe}; {_stage_layers_text(t.stage_layers)}"
                 + ("; sequence parallel" if t.sequence_parallel else ""))
    if params is not None:
        active = f", {format_params(params.active)} active" if params.active != params.total \
            else ""
        lines.append(f"  policy         {format_params(params.total)} params "
                     f"({format_params(params.non_embedding)} non-embedding{active}), "
                     f"{t.params_dtype}")
    for s in layout.stages:
        parts = [f"{s.sft_rows} SFT rows"]
        if s.pref_prompts:
            parts.append(f"{s.pref_prompts} PREF prompts × {s.samples_per_prompt} = "
                         f"{s.pref_rollouts} rollouts")
        if s.sft_rollouts:
            parts.append(f"{s.sft_rows} SFT prompts × {s.sft_samples_per_prompt} = "
                         f"{s.sft_rollouts} rollouts")
        lines.append(f"  {s.name:<14} {s.steps} steps; {'; '.join(parts)}")
        lines.append(f"  {'':<14} {s.train_rows} rows/step → {s.rows_per_dp_rank} per DP "
                     f"rank → ≤ {s.micro_batches_per_dp_rank} micro-batches "
                     f"(rows ≤ {s.max_row_tokens} tokens)")
    return lines + _placement_lines(layout)


def _placement_lines(layout: Layout) -> list[str]:
    """The reference, discriminator and rollout lines of the layout."""
    ref, d, r = layout.reference, layout.discriminator, layout.rollout
    lines = ["  reference      " + ("not needed" if not ref.needed else
                                    "frozen policy copy, same layout"
                                    + (", offloaded" if ref.offload else ""))]
    lines.append("  discriminator  " + (f"{d.role}: not needed" if not d.needed else
                                       f"{d.role}, one TP {d.tp} × PP {d.pp} replica: "
                                       f"{d.processes} process(es) on the trainer's GPUs"
                                       + (", offloaded" if d.offload else "")))
    if not r.needed:
        lines.append("  rollout        not needed")
    elif r.engine == "torch":
        lines.append(f"  rollout        torch, {r.num_engines} engine(s) on CPU")
    else:
        lines.append(f"  rollout        vllm, {r.num_engines} engine(s) × TP {r.tp_each} = "
                     f"{r.gpus} GPUs, {r.placement}"
                     + (", sleep mode on" if r.sleep_mode else ", sleep mode off"))
    return lines


def _memory_lines(memory: MemoryEstimate) -> list[str]:
    """The memory table (GiB), the peak and the warnings."""
    lines = [f"Memory per GPU, GiB (pipeline stage {memory.stage}; "
             f"GPU {memory.gpu_memory_gib:.0f} GiB)",
             f"  {'item':<26}{'training':>10}{'generation':>12}  note"]
    for item in memory.items:
        lines.append(f"  {item.name:<26}{item.training_gib:>10.2f}"
                     f"{item.generation_gib:>12.2f}  {item.note}")
    lines.append(f"  {'total':<26}{memory.training_gib:>10.2f}{memory.generation_gib:>12.2f}")
    if len(memory.stage_totals) > 1:
        lines.append("  per stage (training / generation): " + ", ".join(
            f"{s}: {t:.2f} / {g:.2f}" for s, (t, g) in enumerate(memory.stage_totals_gib)))
    if memory.engine_weight_bytes:
        lines.append(f"  vLLM weights per engine GPU: {memory.engine_weights_gib:.2f} GiB")
    verdict = "fits" if memory.fits else "DOES NOT FIT"
    lines.append(f"Peak {memory.peak_gib:.2f} GiB ({memory.peak_phase}) = "
                 f"{memory.fraction:.0%} of {memory.gpu_memory_gib:.0f} GiB: {verdict}")
    lines += [f"warning: {warning}" for warning in memory.warnings]
    return lines


def sync_lines(sync: SyncEstimate) -> list[str]:
    """The weight-sync section (GB = 10^9 bytes for traffic, GiB for memory)."""
    if not sync.readers:
        return ["Weight sync: no rollout engines"]
    gb = 1e9
    if sync.transport == "direct":
        return [
            f"Weight sync per step (direct: {sync.senders} stage leader(s) broadcast to "
            f"{sync.readers} engine(s); link {sync.link_gb_s:.0f} GB/s)",
            f"  stage 0's leader (rank 0) gathers {sync.rank0_in / gb:.2f} GB from its "
            f"TP/EP peers and broadcasts {sync.rank0_out / gb:.2f} GB; the largest stage "
            f"is {sync.largest_sender / gb:.2f} GB",
            f"  time ≥ {sync.seconds:.2f} s (the largest stage over one link; the "
            "gathers inside the stage and the loads add to it)",
            f"  peak during sync: no object store; each rank "
            f"{sync.rank_device / GIB:.2f} GiB of bucket buffers",
        ]
    return [
        f"Weight sync per step (object_store through global rank 0; link {sync.link_gb_s:.0f}"
        " GB/s)",
        f"  rank 0 receives {sync.rank0_in / gb:.2f} GB of shards and sends "
        f"{sync.rank0_out / gb:.2f} GB to {sync.readers} engine(s) "
        f"({sync.model / gb:.2f} GB of weights each)",
        f"  other ranks send their own shard: at most {sync.largest_sender / gb:.2f} GB",
        f"  time ≥ {sync.seconds:.2f} s (rank 0's link; packing and loads add to it)",
        f"  peak during sync: rank 0 host {sync.rank0_host / GIB:.2f} GiB (object store), "
        f"each rank {sync.rank_device / GIB:.2f} GiB of bucket buffers",
    ]
