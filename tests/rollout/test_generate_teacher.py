"""tools/generate_teacher.py: a killed-and-resumed run writes the same file as an
uninterrupted one (the uninterrupted run uses the Ray pool, the killed one a local engine),
with torch engines and with vLLM engines (a whole chunk per engine call)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "generate_teacher.py"


def _has_vllm() -> bool:
    from uniapl_mcore.rollout.vllm_engine import vllm_available

    return vllm_available()


#: (extra overrides, head_dim of the teacher) per engine kind; vLLM in-process in its actor
ENGINES = {
    "torch": ([], 24),
    "vllm": (["rollout.engine=vllm", "rollout.vllm.multiprocessing=false",
              f"rollout.vllm.kv_cache_bytes={64 * 1024**2}"], 32),
}


@pytest.fixture(scope="module", params=[
    "torch", pytest.param("vllm", marks=pytest.mark.skipif(not _has_vllm(),
                                                           reason="vLLM not installed"))])
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, engine) -> Path:
    """A tiny Qwen3 model whose vocabulary covers the tiny tokenizer, tokenizer alongside."""
    import torch
    import transformers

    from tests.checkpoint.hf_models import TINY
    from uniapl_mcore.data.tiny_tokenizer import build_tiny_tokenizer

    directory = tmp_path_factory.mktemp("teacher") / "hf"
    tokenizer = build_tiny_tokenizer(["hello world, answer in three words.", "ok done"] * 5,
                                     directory, vocab_size=300)
    torch.manual_seed(0)
    config = transformers.Qwen3Config(**{**TINY, "vocab_size": len(tokenizer)},
                                      head_dim=ENGINES[engine][1],
                                      eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    transformers.Qwen3ForCausalLM(config).save_pretrained(directory)
    return directory


def _rows(path: Path, count: int) -> Path:
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"id": f"row-{i}", "messages": [
                {"role": "user", "content": f"hello {i}, answer in three words."}]}) + "\n")
    return path


def _cmd(teacher: Path, data: Path, out: Path, *extra: str, engine: str = "torch"
         ) -> list[str]:
    return [sys.executable, str(TOOL), "--model", str(teacher), "--data", str(data), "--out",
            str(out), "--chunk-rows", "2", "--n", "2", *extra, "rollout.dtype=float32",
            "rollout.sampling.max_new_tokens=12", "rollout.cpus_per_engine=0",
            "rollout.requests_per_call=1", *ENGINES[engine][0]]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]


def test_kill_and_resume_gives_the_same_file(ray_cluster, teacher, engine, tmp_path):
    data = _rows(tmp_path / "rows.jsonl", 16)
    whole = tmp_path / "whole.jsonl"
    _run(_cmd(teacher, data, whole, "--ray-address", ray_cluster, engine=engine))
    lines = whole.read_text().splitlines()
    assert len(lines) == 32 and len({json.loads(x)["id"] for x in lines}) == 16

    resumed = tmp_path / "resumed.jsonl"
    proc = subprocess.Popen(_cmd(teacher, data, resumed, "--local", "--pause-s", "0.3",
                                 engine=engine),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not resumed.exists() or
                                           resumed.read_text().count("\n") < 4):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = resumed.read_text().count("\n")
    assert 4 <= partial < 32
    with resumed.open("a") as f:  # a torn write from the kill
        f.write('{"id": "row-9", "te')
    _run(_cmd(teacher, data, resumed, "--local", engine=engine))
    assert resumed.read_bytes() == whole.read_bytes()
    _run(_cmd(teacher, data, resumed, "--local", engine=engine))  # nothing left to do
    assert resumed.read_bytes() == whole.read_bytes()
