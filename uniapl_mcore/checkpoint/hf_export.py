"""A live, sharded Megatron model written as a Hugging Face directory (the trainer's
``RUN/hf`` when ``checkpoint.export_hf`` is on).

The tensors come from :class:`~uniapl_mcore.checkpoint.live_export.LiveExporter`, which
gathers every TP shard / pipeline stage / expert to one rank with the same mapping the
offline converter uses, so the files equal ``mcore-to-hf`` output of a checkpoint of the
same weights. The directory appears only when complete: it is written as
``.<name>.tmp-<pid>`` next to ``out`` and renamed (a previous ``out`` is replaced).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from uniapl_mcore.checkpoint.convert import plan_hf_tensors
from uniapl_mcore.checkpoint.hf_io import CheckpointError, SafetensorsShardWriter, copy_side_files
from uniapl_mcore.checkpoint.live_export import LiveExporter

logger = logging.getLogger(__name__)


def _fresh_tmp(out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the complete ``tmp`` to ``out``; an existing ``out`` is set aside first and
    deleted after (``out`` never holds a partial directory)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _side_files(side: Path, target: Path) -> None:
    """``side``'s ``config.json`` and tokenizer / generation files into ``target``."""
    shutil.copy2(side / "config.json", target / "config.json")
    copy_side_files(side, target)


def write_live_hf_dir(exporter: LiveExporter, out: str | Path, side: str | Path | None,
                      bucket_bytes: int = 512 * 1024**2,
                      max_shard_bytes: int = 2 * 1024**3) -> Path | None:
    """Collective (every rank of the exporter's group): the model as an HF directory ``out``
    (sharded safetensors ≤ ``max_shard_bytes`` of tensor data each + index, ``config.json``
    and the tokenizer files copied from ``side``), written by the exporter's receiving rank
    (``dst``), which passes ``side`` and gets ``out`` back; other ranks pass None and get
    None. Tensors are gathered in buckets of ≤ ``bucket_bytes`` (Megatron bytes)."""
    if exporter.dst is None or exporter.dst == "stage":
        raise ValueError("write_live_hf_dir needs an exporter with one receiving rank (dst)")
    receives = exporter.rank == exporter.dst
    writer = tmp = None
    if receives:
        out = Path(out)
        if side is None or not (Path(side) / "config.json").is_file():
            raise CheckpointError(f"{side}: no config.json for the exported model {out}")
        tmp = _fresh_tmp(out)
        plan = plan_hf_tensors(exporter.bundle, exporter.model, lambda rule: exporter.dtype)
        writer = SafetensorsShardWriter(plan, tmp, max_shard_bytes)
    try:
        for bucket in exporter.iter_buckets(bucket_bytes, ring=2):
            for name, tensor in bucket:
                writer.write(name, tensor.cpu())
        if writer is None:
            return None
        writer.finish()
        _side_files(Path(side), tmp)
        _replace_dir(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported the policy as a Hugging Face model: %s", out)
    return out
