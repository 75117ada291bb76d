"""A rollout engine on the Hugging Face model class, for CPU machines and small GPUs.

Batched sampling with a KV cache: prompts are left-padded into one batch (rows = request ×
sample), prefilled once, then decoded one token per step with explicit attention masks and
position ids. Weights arrive as HF-named full tensors (from the live exporter) and are copied
into the model's parameters in place — or, from the pool's shared-memory buckets on a CPU
engine, become the parameters' storage (zero-copy) — no disk round trip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uniapl_mcore.rollout.decoder import StaticDecoder, supports
from uniapl_mcore.rollout.engine import CHECKPOINT_VERSION, NO_WEIGHTS, VersionGuard
from uniapl_mcore.rollout.sampling import draw_tokens, sample_generator, sampling_logits
from uniapl_mcore.rollout.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    SamplingParams,
    StaleWeightsError,
)

logger = logging.getLogger(__name__)


@dataclass
class _Row:
    """One sample being generated: request index, sample index, its state."""

    request: int
    index: int
    params: SamplingParams
    generator: torch.Generator
    tokens: list[int]
    logprobs: list[float]
    finish: str | None = None


class TorchEngine:
    """Sampling engine on ``transformers.AutoModelForCausalLM``.

    ``model_dir``: an HF model directory (config.json; weights too when ``load_checkpoint``).
    Without ``load_checkpoint`` the model is built from the config only and holds no weights
    until the first :meth:`finish_weight_update` (generate raises StaleWeightsError before).
    ``tokenizer_dir``: where to load a tokenizer from (default: ``model_dir`` if it has one);
    needed for ``text`` and stop strings. ``max_batch_rows``: rows per forward batch.
    """

    accepts_shared_weights = True  # load_weights(share=True) is supported

    def __init__(self, model_dir: str | Path, *, load_checkpoint: bool = True,
                 tokenizer_dir: str | Path | None = None, dtype: str = "float32",
                 device: str = "cpu", max_batch_rows: int = 64,
                 num_threads: int | None = None) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.max_batch_rows = max_batch_rows
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"model_dir: {model_dir} has no config.json")
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        if load_checkpoint:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype,
                                                         trust_remote_code=False)
        else:
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.config = config
        self.guard = VersionGuard(CHECKPOINT_VERSION if load_checkpoint else NO_WEIGHTS)
        self.tokenizer = _load_tokenizer(tokenizer_dir or model_dir, required=bool(tokenizer_dir))
        self.eos_ids = _eos_ids(model)
        self.pad_id = self.eos_ids[0] if self.eos_ids else 0
        self._params = dict(self.model.named_parameters(remove_duplicate=False))
        self._pieces = fused_expert_pieces(self._params)
        self._decoder = StaticDecoder(self.model) if supports(self.model) else None
        self._loaded: set[int] = set()
        self.asleep = False
        self.stats: dict[str, float] = {"generate_s": 0.0, "load_s": 0.0, "tokens": 0}

    # ------------------------------------------------------------------ weights
    @property
    def weight_version(self) -> int:
        return self.guard.version

    def begin_weight_update(self, version: int) -> None:
        self.guard.begin(version)
        self._loaded = set()
        self._loaded_pieces: set[str] = set()

    def load_weights(self, named: Iterable[tuple[str, torch.Tensor]], share: bool = False
                     ) -> int:
        """Copy HF-named tensors into the parameters (shapes must match exactly).

        ``share``: a tensor already of the parameter's dtype and device becomes the
        parameter's storage instead of being copied (zero-copy; the pool passes it for
        buckets read from Ray's shared-memory object store, which stay mapped as long as
        the parameter refers to them). The caller must never modify such tensors afterwards;
        the engine only reads its weights (they may be read-only memory)."""
        if self.guard.pending is None:
            raise RuntimeError("load_weights outside begin/finish_weight_update")
        start, count = time.perf_counter(), 0
        with torch.no_grad():
            for name, tensor in named:
                if name in self._pieces:  # one expert's tensor of a fused expert parameter
                    param, index = self._pieces[name]
                    _check_shape(name, tensor, param[index])
                    param[index].copy_(tensor)
                    self._loaded_pieces.add(name)
                    count += 1
                    continue
                param = self._params.get(name)
                if param is None:
                    raise KeyError(f"weights: model has no parameter {name!r}")
                if tuple(param.shape) != tuple(tensor.shape):
                    raise ValueError(f"weights: {name} has shape {tuple(tensor.shape)}, "
                                     f"model expects {tuple(param.shape)}")
                if share and tensor.dtype == param.dtype and tensor.device == param.device:
                    param.data = tensor
                else:
                    param.copy_(tensor)
                self._loaded.add(id(param))
                count += 1
        self.stats["load_s"] += time.perf_counter() - start
        return count

    def finish_weight_update(self, version: int) -> None:
        for name in self._pieces.keys() & self._loaded_pieces:
            self._loaded.add(id(self._pieces[name][0]))
        incomplete = {id(p) for n, (p, _) in self._pieces.items()
                      if n not in self._loaded_pieces}
        missing = [n for n, p in self.model.named_parameters()
                   if id(p) not in self._loaded or id(p) in incomplete]
        if missing:
            raise RuntimeError(f"weight update {version} is incomplete: {len(missing)} "
                               f"parameters never sent, e.g. {missing[:3]}")
        if self._decoder is not None:
            self._decoder.refresh()
        self.guard.finish(version)
        logger.info("engine now serves weight version %d", version)

    # ------------------------------------------------------------------ lifecycle
    def sleep(self, level: int = 1) -> None:
        """Level 1: move weights to host memory; level 2: also forget them (a weight sync
        must follow before the next generate)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        if self.device.type != "cpu":
            if self._decoder is not None:
                self._decoder.layers = []  # its fused weights live on the device
            self.model.to("cpu")
            torch.cuda.empty_cache()
        if level == 2:
            self.guard.version = NO_WEIGHTS
        self.asleep = True

    def wake_up(self) -> None:
        if self.device.type != "cpu":
            self.model.to(self.device)
            if self._decoder is not None:
                self._decoder.refresh()
        self.asleep = False

    def health(self) -> dict[str, Any]:
        return {"ok": True, "weight_version": self.weight_version, "asleep": self.asleep,
                "updating": self.guard.pending is not None, **self.stats}

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerationRequest],
                 weight_version: int | None = None) -> list[GenerationResult]:
        """Sample every request; results in request order, each with ``n`` samples."""
        if self.asleep:
            raise StaleWeightsError("engine is asleep; call wake_up() first")
        self.guard.require(weight_version)
        needs_text = any(r.sampling.stop for r in requests)
        if needs_text and self.tokenizer is None:
            raise ValueError("sampling.stop: stop strings need a tokenizer (tokenizer_dir)")
        start = time.perf_counter()
        rows = [_Row(i, k, r.sampling, sample_generator(r.sampling.seed, k), [], [])
                for i, r in enumerate(requests) for k in range(r.sampling.n)]
        for lo in range(0, len(rows), self.max_batch_rows):
            chunk = rows[lo:lo + self.max_batch_rows]
            self._generate_rows(chunk, [requests[row.request].prompt_ids for row in chunk])
        results = self._results(requests, rows)
        self.stats["generate_s"] += time.perf_counter() - start
        self.stats["tokens"] += sum(len(row.tokens) for row in rows)
        return results

    def _results(self, requests: Sequence[GenerationRequest],
                 rows: list[_Row]) -> list[GenerationResult]:
        grouped: list[list[Sample]] = [[] for _ in requests]
        for row in rows:
            text = self._decode(row.tokens)
            grouped[row.request].append(Sample(tuple(row.tokens), tuple(row.logprobs), text,
                                               row.finish or "length"))
        return [GenerationResult(r.request_id, tuple(s), self.weight_version)
                for r, s in zip(requests, grouped, strict=True)]

    def _decode(self, tokens: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @torch.no_grad()
    def _generate_rows(self, rows: list[_Row], prompts: list[tuple[int, ...]]) -> None:
        """Prefill the left-padded prompts [B, L], then decode until every row finishes.

        Per step everything is batched: sampling from each row's pre-drawn uniforms, the
        sampled tokens' log-probs, and the stop checks (end tokens, per-row length limits);
        only stop *strings* need a per-row look at the decoded text.
        """
        width = max(len(p) for p in prompts)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, width - len(prompt):] = torch.tensor(prompt)
            mask[b, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        steps = max(r.params.max_tokens for r in rows)
        state = _BatchState(rows, steps, self.eos_ids, self.device)
        forward = self._forward_fn(ids, mask, steps)
        logits = forward(None)
        for step in range(steps):
            scaled = sampling_logits(logits, state.temperature, state.top_k, state.top_p)
            nxt = draw_tokens(scaled, state.temperature, state.uniforms[:, step])
            state.record(step, nxt, scaled.log_softmax(-1).gather(-1, nxt[:, None])[:, 0])
            if state.has_stop_strings and self.tokenizer is not None:
                self._stop_strings(rows, state, step)
            if not bool(state.live.any()):
                break
            logits = forward(torch.where(state.live, nxt, torch.full_like(nxt, self.pad_id)))
        state.write_back(rows)

    def _forward_fn(self, ids: torch.Tensor, mask: torch.Tensor, steps: int):
        """A function: ``None`` → prefill logits [B, V]; tokens [B] → next logits [B, V].

        The lean :class:`StaticDecoder` where the model's family allows, else the model's own
        forward with its KV cache."""
        if self._decoder is not None:
            decoder = self._decoder

            def lean(tokens: torch.Tensor | None) -> torch.Tensor:
                if tokens is None:
                    return decoder.prefill(ids, mask, steps)
                return decoder.decode(tokens)
            return lean
        cache: dict[str, Any] = {"mask": mask, "positions": (mask.cumsum(-1) - 1).clamp(min=0)}

        def generic(tokens: torch.Tensor | None) -> torch.Tensor:
            if tokens is None:
                out = self.model(input_ids=ids, attention_mask=mask,
                                 position_ids=cache["positions"], use_cache=True)
            else:
                cache["mask"] = torch.cat([cache["mask"], torch.ones_like(mask[:, :1])], dim=1)
                cache["positions"] = cache["positions"][:, -1:] + 1
                out = self.model(input_ids=tokens[:, None], attention_mask=cache["mask"],
                                 position_ids=cache["positions"],
                                 past_key_values=cache["past"], use_cache=True)
            cache["past"] = out.past_key_values
            return out.logits[:, -1].float()
        return generic

    def _stop_strings(self, rows: list[_Row], state: _BatchState, step: int) -> None:
        """End the rows that took a token at ``step`` and whose decoded tail now holds one
        of their stop strings."""
        lengths = state.lengths.tolist()
        for b, row in enumerate(rows):
            if not row.params.stop or lengths[b] != step + 1:
                continue
            tail = self.tokenizer.decode(state.tokens[b, max(0, step - 15):step + 1].tolist(),
                                         skip_special_tokens=True)
            if any(text in tail for text in row.params.stop):
                state.stopped[b] = True
                state.live[b] = False


class _BatchState:
    """The per-row state of one generation batch, as tensors over its B rows.

    ``uniforms`` float64 [B, steps]: each row's draws, taken up front from its own
    generator (so a seeded row samples the same tokens in any batch); ``tokens`` int64 and
    ``logprobs`` float32 [B, steps]: what each row generated (its first ``lengths[b]``
    entries); ``live``: still generating; ``stopped``: ended by a stop token or string
    (else by its length limit).
    """

    def __init__(self, rows: list[_Row], steps: int, eos_ids: tuple[int, ...],
                 device: torch.device) -> None:
        params = [row.params for row in rows]
        self.temperature = torch.tensor([p.temperature for p in params], device=device)
        self.top_k = torch.tensor([p.top_k for p in params], device=device)
        self.top_p = torch.tensor([p.top_p for p in params], device=device)
        self.max_tokens = torch.tensor([p.max_tokens for p in params], device=device)
        self.uniforms = torch.stack([torch.rand(steps, generator=row.generator,
                                                dtype=torch.float64) for row in rows]).to(device)
        stops = [(() if p.ignore_eos else eos_ids) + tuple(p.stop_token_ids) for p in params]
        width = max(1, max(len(ids) for ids in stops))
        self.stop_ids = torch.tensor([list(ids) + [-1] * (width - len(ids)) for ids in stops],
                                     device=device)
        self.has_stop_strings = any(p.stop for p in params)
        self.tokens = torch.zeros(len(rows), steps, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(len(rows), steps, device=device)
        self.lengths = torch.zeros(len(rows), dtype=torch.long, device=device)
        self.live = torch.ones(len(rows), dtype=torch.bool, device=device)
        self.stopped = torch.zeros(len(rows), dtype=torch.bool, device=device)

    def record(self, step: int, tokens: torch.Tensor, logprobs: torch.Tensor) -> None:
        """Append ``tokens`` int64 [B] with their ``logprobs`` [B] to the live rows."""
        self.tokens[:, step] = tokens
        self.logprobs[:, step] = logprobs
        self.lengths += self.live.long()
        hit = (tokens[:, None] == self.stop_ids).any(-1) & self.live
        self.stopped |= hit
        self.live &= ~hit & (self.lengths < self.max_tokens)

    def write_back(self, rows: list[_Row]) -> None:
        """Copy each row's tokens, log-probs and finish reason into ``rows``."""
        tokens, logprobs = self.tokens.cpu(), self.logprobs.cpu()
        for b, (row, length, stopped) in enumerate(zip(rows, self.lengths.tolist(),
                                                        self.stopped.tolist(), strict=True)):
            row.tokens = tokens[b, :length].tolist()
            row.logprobs = logprobs[b, :length].tolist()
            row.finish = "stop" if stopped else "length"


def fused_expert_pieces(params: dict[str, torch.nn.Parameter]
                        ) -> dict[str, tuple[torch.nn.Parameter, tuple]]:
    """Checkpoint names of the experts of fused expert parameters → (parameter, index).

    transformers holds a MoE layer's experts as ``experts.gate_up_proj`` [E, 2I, H] (each
    expert's gate rows, then its up rows) and ``experts.down_proj`` [E, H, I]; checkpoints
    and weight syncs name them per expert (``experts.{e}.gate_proj.weight`` [I, H], ...).
    """
    pieces: dict[str, tuple[torch.nn.Parameter, tuple]] = {}
    for name, param in params.items():
        prefix, _, leaf = name.rpartition(".")
        if not prefix.endswith(".experts") or param.dim() != 3:
            continue
        if leaf == "gate_up_proj":
            half = param.shape[1] // 2
            for e in range(param.shape[0]):
                pieces[f"{prefix}.{e}.gate_proj.weight"] = (param, (e, slice(0, half)))
                pieces[f"{prefix}.{e}.up_proj.weight"] = (param, (e, slice(half, 2 * half)))
        elif leaf == "down_proj":
            for e in range(param.shape[0]):
                pieces[f"{prefix}.{e}.down_proj.weight"] = (param, (e,))
    return pieces


def _check_shape(name: str, tensor: torch.Tensor, target: torch.Tensor) -> None:
    if tuple(target.shape) != tuple(tensor.shape):
        raise ValueError(f"weights: {name} has shape {tuple(tensor.shape)}, model expects "
                         f"{tuple(target.shape)}")


def _eos_ids(model) -> tuple[int, ...]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)


def _load_tokenizer(path: str | Path, required: bool):
    from transformers import AutoTokenizer

    path = Path(path)
    if not required and not any((path / f).is_file() for f in
                                ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(path)
