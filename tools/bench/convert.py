#!/usr/bin/env python3
"""Checkpoint conversion benchmark: throughput vs a raw sequential read, and peak memory.

Builds a synthetic Qwen3-layout HF checkpoint (bf16, ≥ 1 GB by default), then in the same
run times: a raw sequential read of its safetensors files (baseline), ``hf-to-mcore``, a raw
read of the torch_dist files, and ``mcore-to-hf``. When it may (root), it writes back and
drops the page cache before each measurement, so reads come from the disk as they would for
a real checkpoint; otherwise every read is warm. Each conversion runs in a fresh process
that reports its own peak RSS. A second baseline, a plain parallel copy of the same files
(read + write + fsync, no conversion work), shows the machine's I/O floor for any
conversion. Every figure is the fastest of ``--repeats`` runs. Prints one line per figure
(``tools/bench/figures.py``) and, with ``--json``, writes them to a file.

    python tools/bench/convert.py [--size-gb 1.1] [--repeats 3] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402

CHUNK = 64 * 1024 * 1024


def make_checkpoint(directory: Path, size_gb: float) -> int:
    """Write a random bf16 Qwen3-shaped checkpoint of about ``size_gb``; returns its bytes."""
    import torch
    from safetensors.torch import save_file

    h, f, nh, ng, d, vocab = 2048, 6144, 16, 8, 128, 32768
    per_layer = 2 * (h * nh * d + 2 * h * ng * d + nh * d * h + 3 * h * f + 2 * h + 2 * d)
    fixed = 2 * (2 * vocab * h + h)
    layers = max(1, round((size_gb * 1024**3 - fixed) / per_layer))
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": h,
              "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": nh,
              "num_key_value_heads": ng, "head_dim": d, "vocab_size": vocab,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1e6,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu",
              "attention_bias": False}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(torch.bfloat16)

    weight_map, shard, shard_bytes, index = {}, {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes, index
        if shard:
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_bytes, index = {}, 0, index + 1

    def add(name: str, tensor: torch.Tensor) -> None:
        nonlocal shard_bytes
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        if shard_bytes >= 512 * 1024**2:
            flush()

    add("model.embed_tokens.weight", rnd(vocab, h))
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj.weight", (nh * d, h)),
                            ("self_attn.k_proj.weight", (ng * d, h)),
                            ("self_attn.v_proj.weight", (ng * d, h)),
                            ("self_attn.o_proj.weight", (h, nh * d)),
                            ("self_attn.q_norm.weight", (d,)), ("self_attn.k_norm.weight", (d,)),
                            ("input_layernorm.weight", (h,)),
                            ("post_attention_layernorm.weight", (h,)),
                            ("mlp.gate_proj.weight", (f, h)), ("mlp.up_proj.weight", (f, h)),
                            ("mlp.down_proj.weight", (h, f))):
            add(p + name, rnd(*shape))
    add("model.norm.weight", rnd(h))
    add("lm_head.weight", rnd(vocab, h))
    flush()
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dir_bytes(directory)


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only), so reads come from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def raw_read_seconds(directory: Path) -> float:
    """Sequentially read every file under ``directory`` (the baseline), cold when possible."""
    drop_page_cache()
    start = time.perf_counter()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(view):
                pass
    return time.perf_counter() - start


def raw_copy_seconds(directory: Path, target: Path, threads: int = 4) -> float:
    """Copy every file to ``target`` with ``threads`` threads (each a byte range, read and
    ``pwrite`` at its offset), then fsync: the I/O floor of any conversion that reads and
    durably writes the checkpoint's bytes once, with no conversion work at all."""
    from concurrent.futures import ThreadPoolExecutor

    drop_page_cache()
    target.mkdir(parents=True)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    start = time.perf_counter()
    ranges = []
    for path in files:
        size = path.stat().st_size
        fd = os.open(target / path.name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(fd, size)
        os.close(fd)
        step = max(1, -(-size // threads))
        ranges += [(path, lo, min(size, lo + step)) for lo in range(0, size, step)]

    def copy(job: tuple[Path, int, int]) -> None:
        path, lo, hi = job
        view = memoryview(bytearray(min(CHUNK, hi - lo)))
        src = os.open(path, os.O_RDONLY)
        dst = os.open(target / path.name, os.O_WRONLY)
        try:
            while lo < hi:
                n = os.preadv(src, [view[:min(len(view), hi - lo)]], lo)
                os.pwrite(dst, view[:n], lo)
                lo += n
            os.fsync(dst)
        finally:
            os.close(src)
            os.close(dst)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(copy, ranges))
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return seconds


def run_conversion(args: list[str]) -> tuple[float, float]:
    """Run one conversion in a fresh process; returns (seconds, peak RSS in MB).

    Seconds cover the conversion only (interpreter start-up and imports excluded); the peak
    RSS is the process's own high-water mark (VmHWM, reset at exec), imports included.
    """
    drop_page_cache()
    code = ("import sys, time\n"
            "import uniapl_mcore.checkpoint.convert  # imports are not conversion time\n"
            "import torch.distributed.checkpoint  # (imported lazily by the writer)\n"
            "from uniapl_mcore.checkpoint.convert_cli import main\n"
            "t = time.perf_counter(); rc = main(sys.argv[1:]); t = time.perf_counter() - t\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(t, int(hwm.split()[1]) / 1024)\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion failed: {proc.stderr[-2000:]}")
    seconds, rss_mb = proc.stdout.split()[-2:]
    return float(seconds), float(rss_mb)


def _in_subprocess(directory: Path, size_gb: float) -> int:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from convert import make_checkpoint;"
            "from pathlib import Path; print(make_checkpoint(Path(sys.argv[2]), "
            "float(sys.argv[3])))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent),
                          str(directory), str(size_gb)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


def best(measure, repeats: int):
    """The fastest of ``repeats`` runs of ``measure()`` (a time, or a (time, extra) tuple)."""
    return min((measure() for _ in range(repeats)), key=lambda r: r[0] if isinstance(r, tuple)
               else r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="each measurement is the fastest of this many runs")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    hf, mcore, back = work / "hf", work / "mcore", work / "back"
    for path in (hf, mcore, back):
        shutil.rmtree(path, ignore_errors=True)

    def to_mcore() -> tuple[float, float]:
        shutil.rmtree(mcore, ignore_errors=True)
        return run_conversion(["hf-to-mcore", "--hf", str(hf), "--out", str(mcore)])

    def to_hf() -> tuple[float, float]:
        shutil.rmtree(back, ignore_errors=True)
        return run_conversion(["mcore-to-hf", "--mcore", str(mcore), "--out", str(back)])

    try:
        size = _in_subprocess(hf, args.size_gb)  # keeps this process small
        cold = drop_page_cache()
        read_hf = best(lambda: raw_read_seconds(hf), args.repeats)
        copy_hf = best(lambda: raw_copy_seconds(hf, work / "copy"), args.repeats)
        to_mcore_s, to_mcore_rss = best(to_mcore, args.repeats)
        read_mcore = best(lambda: raw_read_seconds(mcore), args.repeats)
        to_hf_s, to_hf_rss = best(to_hf, args.repeats)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    mb = size / 1024**2
    print(f"page cache dropped before each measurement: {cold}; fastest of {args.repeats}")
    figures = [
        Figure("convert.checkpoint_size", mb, "MB"),
        Figure("convert.raw_read_hf", mb / read_hf, "MB/s"),
        Figure("convert.parallel_copy_hf", mb / copy_hf, "MB/s", mb / read_hf,
               read_hf / copy_hf),
        higher_is_better("convert.hf_to_mcore", mb / to_mcore_s, "MB/s", mb / read_hf),
        higher_is_better("convert.hf_to_mcore_vs_parallel_copy", mb / to_mcore_s, "MB/s",
                         mb / copy_hf),
        Figure("convert.hf_to_mcore_peak_rss", to_mcore_rss, "MB"),
        Figure("convert.raw_read_mcore", mb / read_mcore, "MB/s"),
        higher_is_better("convert.mcore_to_hf", mb / to_hf_s, "MB/s", mb / read_mcore),
        higher_is_better("convert.mcore_to_hf_vs_parallel_copy", mb / to_hf_s, "MB/s",
                         mb / copy_hf),
        Figure("convert.mcore_to_hf_peak_rss", to_hf_rss, "MB"),
    ]
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
