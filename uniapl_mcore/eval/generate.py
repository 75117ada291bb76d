"""Response generation for evaluation: greedy decoding of a checkpoint with the torch engine.

``uniapl eval ifeval --checkpoint DIR`` renders every evaluation prompt with the checkpoint
tokenizer's chat template exactly as training does (:class:`~uniapl_mcore.data.templating.
ChatTemplater`, ``enable_thinking=False``: Qwen3's prompt ends in the empty think block),
decodes greedily with :class:`~uniapl_mcore.rollout.torch_engine.TorchEngine` in-process
(temperature 0, no stop strings, at most ``max_gen_toks`` new tokens — the lm-eval IFEval
task's settings), and writes ``responses.jsonl`` (``prompt`` / ``response``, the harness's
format) for the ordinary scoring path.

``DIR`` is a Hugging Face model directory (config.json, weights, tokenizer), or a
``torch_dist`` checkpoint made by :func:`~uniapl_mcore.checkpoint.convert.hf_to_mcore` (or by
training from one), which keeps the HF config and tokenizer under ``DIR/hf/``; the latter is
exported to a temporary HF directory first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

#: lm-eval's IFEval task: greedy, no stop strings, ``max_gen_toks`` 1280.
HARNESS_MAX_NEW_TOKENS = 1280


@contextlib.contextmanager
def hf_model_dir(checkpoint: str | Path) -> Iterator[Path]:
    """An HF model directory for ``checkpoint`` (exported to a temporary one when it is a
    ``torch_dist`` checkpoint with an ``hf/`` side directory)."""
    from uniapl_mcore.checkpoint.convert import HF_SIDE_DIR, mcore_to_hf
    from uniapl_mcore.checkpoint.paths import resolve_latest
    from uniapl_mcore.eval.ifeval import EvalDataError

    path = resolve_latest(checkpoint)
    if (path / "config.json").is_file():
        yield path
        return
    if (path / HF_SIDE_DIR / "config.json").is_file():
        with tempfile.TemporaryDirectory(prefix="uniapl-eval-hf-") as tmp:
            logger.info("--checkpoint %s is a torch_dist checkpoint; exporting it to HF", path)
            yield mcore_to_hf(path, Path(tmp) / "hf")
        return
    raise EvalDataError(
        f"--checkpoint {path}: neither an HF model directory (config.json) nor "
        f"a torch_dist checkpoint with {HF_SIDE_DIR}/config.json"
    )


def unique_prompts(prompts: Sequence[str]) -> list[str]:
    """``prompts`` without repeats, first occurrence order kept."""
    return list(dict.fromkeys(prompts))


def generate_responses(
    checkpoint: str | Path,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = HARNESS_MAX_NEW_TOKENS,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
    enable_thinking: bool = False,
) -> list[str]:
    """Greedy responses (decoded text, special tokens dropped) to ``prompts``, in order.

    Prompts are rendered as one user turn with the tokenizer's chat template, sorted by
    token length into batches of ``batch_size`` (less padding), and generated with the torch
    engine. ``device`` defaults to CUDA when available; ``dtype`` to bfloat16 on CUDA and
    float32 on CPU.
    """
    import torch

    from uniapl_mcore.data.templating import ChatTemplater
    from uniapl_mcore.eval.ifeval import EvalDataError
    from uniapl_mcore.rollout.torch_engine import TorchEngine
    from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams

    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    with hf_model_dir(checkpoint) as model_dir:
        engine = TorchEngine(model_dir, dtype=dtype, device=device, max_batch_rows=batch_size)
        if engine.tokenizer is None:
            raise EvalDataError(
                f"--checkpoint {checkpoint}: no tokenizer files next to the "
                "model (tokenizer.json / tokenizer_config.json)"
            )
        try:
            templater = ChatTemplater(engine.tokenizer, enable_thinking=enable_thinking)
        except ValueError as exc:
            raise EvalDataError(f"--checkpoint {checkpoint}: {exc}") from exc
        ids = [templater.encode_prompt([{"role": "user", "content": p}]) for p in prompts]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        order = sorted(range(len(prompts)), key=lambda i: (len(ids[i]), i))
        responses: list[str] = [""] * len(prompts)
        start = time.perf_counter()
        for lo in range(0, len(order), batch_size):
            batch = order[lo : lo + batch_size]
            requests = [GenerationRequest(tuple(ids[i]), params, str(i)) for i in batch]
            for i, result in zip(batch, engine.generate(requests), strict=True):
                responses[i] = result.samples[0].text
            logger.info(
                "generated %d/%d responses (%.1f s)",
                min(lo + batch_size, len(order)),
                len(order),
                time.perf_counter() - start,
            )
    return responses


def write_responses(path: str | Path, prompts: Sequence[str], responses: Sequence[str]) -> Path:
    """Write ``responses.jsonl``: one ``{"prompt", "response"}`` line per prompt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for prompt, response in zip(prompts, responses, strict=True):
            f.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
