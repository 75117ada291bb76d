"""HF vs Megatron-Core numerical parity on one token batch, at any TP / PP layout.

Run under ``torchrun`` (``tools/check_parity.py``): every rank builds its Megatron stage,
loads the converted ``torch_dist`` checkpoint, runs the batch through Megatron's schedule;
the last stage gathers the vocab-parallel logits, runs the Hugging Face model on the same
tokens and prints one JSON line with the differences.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

import torch

from uniapl_mcore.checkpoint.convert import load_hf_architecture
from uniapl_mcore.megatron.config import check_layout
from uniapl_mcore.megatron.schedule import ModelInputs, run_schedule
from uniapl_mcore.models.gpt import build_gpt_model, transformer_config
from uniapl_mcore.runtime.layout import ParallelConfig, pipeline_stage_layers
from uniapl_mcore.runtime.parallel import ParallelLayout, init_parallel


def _collect_logits(output: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return torch.zeros((), device=output.device), {"logits": output.detach()}


def _forward_step(batch: ModelInputs, model):
    return model(batch.tokens, batch.position_ids, batch.attention_mask), _collect_logits


def megatron_logits(gpt, tokens: torch.Tensor, layout: ParallelLayout,
                    value_head: bool = False) -> torch.Tensor | None:
    """Full-vocab logits [b, s, V_padded] (or value-head scores [b, s, 1]) on the last stage;
    None on other stages."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    batch = ModelInputs.causal(tokens, explicit_mask=layout.device.type == "cpu")
    outputs = run_schedule([gpt], [batch], _forward_step, layout, forward_only=True)
    if not layout.is_last_stage:
        return None
    logits = outputs[0]["logits"]
    if value_head:  # replicated on every TP rank
        return logits.float()
    return gather_from_tensor_model_parallel_region(logits).float()


def hf_logits(hf_dir: str, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reference logits [b, s, V] from transformers (no remote code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, trust_remote_code=False)
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens.cpu()).logits.float()


def compare(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max |Δ| of logits and of log-probs (log-softmax over the true vocabulary)."""
    ours = ours[..., : ref.shape[-1]].cpu()
    logit = (ours - ref).abs().max().item()
    logprob = (ours.log_softmax(-1) - ref.log_softmax(-1)).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(1), ref.flatten(1)).min().item()
    return {"max_abs_logit_diff": logit, "max_abs_logprob_diff": logprob,
            "min_cosine": cosine}


def compare_scores(ours: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max |Δ| between reward scores [b]."""
    return {"max_abs_score_diff": (ours - ref).abs().max().item(),
            "scores": [round(x, 6) for x in ref.tolist()]}


def reference_scores_from(hf_dir: str, model, tokens: torch.Tensor) -> torch.Tensor:
    """Scores from the plain-PyTorch InternLM2 reward reference (see models.internlm2)."""
    from uniapl_mcore.checkpoint.hf_io import open_hf_weights
    from uniapl_mcore.models.internlm2 import reference_scores

    reader = open_hf_weights(hf_dir)
    weights = {name: reader.get(name) for name in reader.names()}
    return reference_scores(weights, model, tokens)


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    from uniapl_mcore.megatron.checkpointing import load_checkpoint
    from uniapl_mcore.megatron.model import TrainableModel

    _, _, model = load_hf_architecture(args.hf)
    model = replace(model, params_dtype=args.dtype)
    parallel = ParallelConfig(tensor_parallel_size=args.tp, pipeline_parallel_size=args.pp,
                              expert_parallel_size=args.ep,
                              first_stage_layers=args.first_stage_layers,
                              last_stage_layers=args.last_stage_layers)
    check_layout(model, parallel)
    layout = init_parallel(parallel, seed=args.seed)
    try:
        config = transformer_config(model, parallel)
        gpt = build_gpt_model(model, config, layout.is_first_stage, layout.is_last_stage)
        gpt.eval()
        load_checkpoint(args.mcore, TrainableModel([gpt], None, None, config),
                        include_optimizer=False)
        gen = torch.Generator().manual_seed(args.seed)
        tokens = torch.randint(0, model.vocab_size, (args.batch, args.seq_len), generator=gen)
        ours = megatron_logits(gpt, tokens.to(layout.device), layout, model.value_head)
        if ours is None or layout.tp_rank != 0 or layout.dp_rank != 0:
            return None
        if model.value_head:
            result = compare_scores(ours[:, -1, 0].cpu(), reference_scores_from(args.hf, model,
                                                                                 tokens))
        else:
            result = compare(ours, hf_logits(args.hf, tokens, getattr(torch, args.dtype)))
        result.update(tp=args.tp, pp=args.pp, ep=args.ep, dtype=args.dtype,
                      tokens=int(tokens.numel()),
                      stage_layers=list(pipeline_stage_layers(model.num_layers, parallel)))
        return result
    finally:
        layout.destroy()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="HF vs Megatron-Core logits parity "
                                                 "(launch with torchrun --nproc-per-node TP×PP×EP)")
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--mcore", required=True, help="torch_dist checkpoint directory")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--first-stage-layers", type=int, default=None,
                        help="layers on the first pipeline stage (default: an even split, or "
                             "a balanced uneven one when --pp does not divide the layers)")
    parser.add_argument("--last-stage-layers", type=int, default=None,
                        help="layers on the last pipeline stage (default: as above)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; 0 and one JSON line on success, 2 with one line on bad input
    (a model directory, checkpoint or layout that cannot be used)."""
    from uniapl_mcore.checkpoint.hf_io import CheckpointError
    from uniapl_mcore.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"check_parity: {err}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
