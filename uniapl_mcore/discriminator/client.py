"""The discriminator as seen by the trainer: a client over a group of Ray actors.

``DiscriminatorClient.start`` launches TP·PP actors (:mod:`.service`) that form the
discriminator's own Megatron world, with its own layout (``discriminator.parallel``), and
returns a client used from one process (the trainer's rank 0; Ray already initialised).
The client turns (prompt, reference, output) triples into POLAR input ids
(:mod:`.polar_template`), sends the same call to every actor (all of them take part in each
collective) and returns what the last pipeline stage reports.

Ray resources: each actor asks for ``num_cpus_per_actor`` CPUs and ``num_gpus_per_actor``
GPUs. With any resource requested, all actors go into one ``STRICT_PACK`` placement group
(one node, so the rendezvous can use 127.0.0.1); without, they are pinned to the client's
node. Calls are blocking and deterministic: the same inputs give bitwise the same scores,
and update steps depend only on the seed and the data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uniapl_mcore.config import ConfigError, check
from uniapl_mcore.discriminator.config import DiscriminatorConfig
from uniapl_mcore.discriminator.polar_template import PolarTemplate, PolarTriple
from uniapl_mcore.discriminator.service import DiscriminatorWorker, WorkerSpec
from uniapl_mcore.megatron.config import check_layout
from uniapl_mcore.models.config import ModelConfig

logger = logging.getLogger(__name__)


class DiscriminatorError(RuntimeError):
    """The discriminator actors failed or cannot serve the call (one line)."""


def resolve_model_config(cfg: DiscriminatorConfig) -> ModelConfig:
    """The architecture: the checkpoint's ``hf/config.json`` (a converted POLAR model) when
    it has one, else ``cfg.model``."""
    from uniapl_mcore.checkpoint.convert import HF_SIDE_DIR, load_hf_architecture

    if cfg.checkpoint is not None:
        side = Path(cfg.checkpoint) / HF_SIDE_DIR
        if (side / "config.json").is_file():
            _, _, model = load_hf_architecture(side)
            check(model.value_head, "discriminator.checkpoint",
                  f"{cfg.checkpoint} holds a model without a value head; the discriminator "
                  "needs a reward model (e.g. InternLM2ForRewardModel)")
            return model
    return cfg.model


def resolve_tokenizer_dir(cfg: DiscriminatorConfig, tokenizer_dir: str | Path) -> Path:
    """``cfg.tokenizer``; else the checkpoint's ``hf/`` side directory when it holds a
    tokenizer (a converted POLAR model keeps its own); else ``tokenizer_dir`` (the policy's)."""
    from uniapl_mcore.checkpoint.convert import HF_SIDE_DIR

    if cfg.tokenizer is not None:
        return Path(cfg.tokenizer)
    if cfg.checkpoint is not None:
        side = Path(cfg.checkpoint) / HF_SIDE_DIR
        if (side / "tokenizer_config.json").is_file():
            return side
    return Path(tokenizer_dir)


def _refuse_hf_directory(checkpoint: str) -> None:
    """A Hugging Face model directory (a POLAR model as published) names the command that
    converts it instead of failing on missing torch_dist metadata."""
    path = Path(checkpoint)
    if (path / "config.json").is_file() and not (path / "metadata.json").is_file():
        raise ConfigError("discriminator.checkpoint",
                          f"{path} is a Hugging Face model directory; convert it once with "
                          f"`python tools/convert_checkpoint.py hf-to-mcore --hf {path} --out "
                          "DIR` and set discriminator.checkpoint=DIR")


def _first_line(err: BaseException) -> str:
    """The innermost error's last line (Ray wraps actor errors in long tracebacks)."""
    cause = getattr(err, "cause", None) or err
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(cause).__name__


class DiscriminatorClient:
    """Scores, trains, saves and loads the discriminator (see the module docstring)."""

    def __init__(self, cfg: DiscriminatorConfig, model: ModelConfig, template: PolarTemplate,
                 actors: list[Any], placement_group: Any = None, timeout_s: float = 600.0,
                 call_timeout_s: float = 3600.0) -> None:
        self.cfg, self.model, self.template = cfg, model, template
        self._actors, self._placement_group = actors, placement_group
        self.timeout_s, self.call_timeout_s = timeout_s, call_timeout_s
        self._broken = False  # an actor failed: the others may be stuck in a collective
        self.info: list[dict[str, int]] = []

    # ------------------------------------------------------------------ start / stop
    @classmethod
    def start(cls, cfg: DiscriminatorConfig, tokenizer_dir: str | Path, *, seed: int,
              max_steps: int, num_cpus_per_actor: float = 0, num_gpus_per_actor: float = 0,
              num_threads: int = 1, timeout_s: float = 600.0,
              call_timeout_s: float = 3600.0) -> DiscriminatorClient:
        """Start ``cfg.parallel`` TP·PP actors and build the model on them.

        Args:
            cfg: the ``discriminator`` section (role ``frozen`` or ``trainable``).
            tokenizer_dir: tokenizer used when neither ``cfg.tokenizer`` nor the
                checkpoint's ``hf/`` directory names one (normally the policy's).
            seed: seeds the random init (no checkpoint) and Megatron's RNG tracker.
            max_steps: discriminator updates the run will make (LR schedule length).
            num_cpus_per_actor, num_gpus_per_actor: Ray resources of each actor.
            num_threads: torch intra-op threads per actor.
            timeout_s: start-up and collective timeout (seconds).
            call_timeout_s: the longest a score / update / save / load call may take.
        """
        import ray

        check(cfg.enabled, "discriminator.role", "is 'none': there is no discriminator to start")
        check(max_steps >= 0, "max_steps", f"must be >= 0, got {max_steps}")
        check(num_threads >= 1, "num_threads", f"must be >= 1, got {num_threads}")
        if cfg.checkpoint is not None:
            _refuse_hf_directory(cfg.checkpoint)
        if not ray.is_initialized():
            raise DiscriminatorError("ray is not initialised (call ray.init first)")
        if cfg.checkpoint is not None:
            from uniapl_mcore.checkpoint.dcp_io import TorchDistReader

            TorchDistReader(cfg.checkpoint)  # one-line error when it is not a checkpoint
        model = resolve_model_config(cfg)
        # the checkpoint's architecture against discriminator.parallel (TP, EP, PP split)
        check_layout(model, cfg.parallel, "discriminator", model_label="the model's ")
        check(cfg.max_tokens <= model.max_position_embeddings, "discriminator.max_tokens",
              f"{cfg.max_tokens} exceeds the model's max_position_embeddings="
              f"{model.max_position_embeddings}")
        template = PolarTemplate.from_pretrained(
            resolve_tokenizer_dir(cfg, tokenizer_dir), max_tokens=cfg.max_tokens,
            max_response_tokens=cfg.max_response_tokens, strip_think=cfg.strip_think)
        template.check_model(model)
        spec = WorkerSpec(role=cfg.role, model=model, parallel=cfg.parallel,  # type: ignore[arg-type]
                          optimizer=cfg.optimizer, checkpoint=cfg.checkpoint, seed=seed,
                          max_steps=max_steps, offload=cfg.offload, num_threads=num_threads,
                          timeout_s=timeout_s)
        world = cfg.parallel.tensor_parallel_size * cfg.parallel.pipeline_parallel_size
        for attempt in range(2):  # a second try when the rendezvous port was taken meanwhile
            actors, group = _launch(spec, world, num_cpus_per_actor, num_gpus_per_actor,
                                    timeout_s)
            client = cls(cfg, model, template, actors, group, timeout_s, call_timeout_s)
            try:
                client._rendezvous()
                break
            except BaseException as err:
                client.shutdown()
                if attempt or "address already in use" not in str(err).lower():
                    raise
                logger.warning("discriminator rendezvous port was taken; starting again")
        logger.info("discriminator started: role=%s tp=%d pp=%d, %d actors, vocabulary %d%s",
                    cfg.role, cfg.parallel.tensor_parallel_size,
                    cfg.parallel.pipeline_parallel_size, world, template.vocab_size,
                    f" (added {', '.join(template.added_tokens)})" if template.added_tokens
                    else "")
        return client

    def _rendezvous(self) -> None:
        import ray

        nodes = ray.get([a.node.remote() for a in self._actors], timeout=self.timeout_s)
        addr = "127.0.0.1" if len({n for n, _ in nodes}) == 1 else nodes[0][1]
        port = ray.get(self._actors[0].free_port.remote(), timeout=self.timeout_s)
        self.info = self._call("setup", addr, port, timeout_s=self.timeout_s)

    def shutdown(self) -> None:
        """Leave the world and kill the actors (idempotent). After a failed call the actors
        are killed at once (some may be stuck in a collective)."""
        import ray

        if not self._actors:
            return
        try:
            if not self._broken:
                ray.wait([a.close.remote() for a in self._actors],
                         num_returns=len(self._actors), timeout=30)
        finally:
            for actor in self._actors:
                ray.kill(actor, no_restart=True)
            self._actors = []
            if self._placement_group is not None:
                ray.util.remove_placement_group(self._placement_group)
                self._placement_group = None

    # ------------------------------------------------------------------ properties
    @property
    def trainable(self) -> bool:
        return self.cfg.role == "trainable"

    @property
    def vocab_size(self) -> int:
        """Ids the template produces (the tokenizer plus any added POLAR tokens)."""
        return self.template.vocab_size

    # ------------------------------------------------------------------ calls
    def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> list[Any]:
        """``method(*args)`` on every actor; the results in rank order. The first actor
        error raises at once (the others may be blocked in a collective)."""
        import ray

        if not self._actors:
            raise DiscriminatorError(f"{method}: the discriminator is shut down")
        if self._broken:
            raise DiscriminatorError(f"{method}: an earlier call failed; restart the "
                                     "discriminator")
        timeout_s = self.call_timeout_s if timeout_s is None else timeout_s
        refs = [getattr(a, method).remote(*args) for a in self._actors]
        index = {ref: i for i, ref in enumerate(refs)}
        pending, deadline = list(refs), time.monotonic() + timeout_s
        while pending:
            done, pending = ray.wait(pending, num_returns=1,
                                     timeout=max(deadline - time.monotonic(), 0))
            if not done:
                self._broken = True
                raise DiscriminatorError(f"{method}: no answer from ranks "
                                         f"{sorted(index[r] for r in pending)} within "
                                         f"{timeout_s:.0f} s")
            try:
                ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - report the actor's own error
                self._broken = True
                raise DiscriminatorError(f"{method} failed on discriminator rank "
                                         f"{index[done[0]]}: {_first_line(err)}") from err
        return ray.get(refs)

    def _reported(self, results: list[Any]) -> Any:
        """The one result the reporting rank (last stage, first TP rank) returned."""
        reported = [r for r in results if r is not None]
        if len(reported) != 1:
            raise DiscriminatorError(f"expected one reporting rank, got {len(reported)}")
        return reported[0]

    def _check_ids(self, sequences: Sequence[Sequence[int]], name: str) -> list[list[int]]:
        """Token-id rows as plain lists; one-line errors name the row."""
        rows = []
        limit = self.model.max_position_embeddings
        for i, seq in enumerate(sequences):
            row = [int(t) for t in seq]
            if not row:
                raise ValueError(f"{name}[{i}]: empty token sequence")
            if len(row) > limit:
                raise ValueError(f"{name}[{i}]: {len(row)} tokens exceed the model's "
                                 f"max_position_embeddings={limit}")
            bad = next((t for t in row if not 0 <= t < self.model.vocab_size), None)
            if bad is not None:
                raise ValueError(f"{name}[{i}]: token id {bad} is outside the model's "
                                 f"vocabulary [0, {self.model.vocab_size})")
            rows.append(row)
        return rows

    def score_token_ids(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Raw scores r (value head at each row's last token), one per row, in order."""
        import ray

        rows = self._check_ids(sequences, "sequences")
        if not rows:
            return []
        ref = ray.put(rows)
        return self._reported(self._call("score", ref, self.cfg.batch_size,
                                         self.template.pad_token_id))

    def score(self, triples: Sequence[PolarTriple]) -> list[float]:
        """Raw POLAR score r per (prompt, reference, output) triple, in order."""
        return self.score_token_ids(self.template.encode_all(triples))

    def update_token_ids(self, chosen: Sequence[Sequence[int]],
                         rejected: Sequence[Sequence[int]]) -> dict[str, float]:
        """:meth:`update` on token-id rows (pair i = ``chosen[i]``, ``rejected[i]``)."""
        import ray

        if not self.trainable:
            raise DiscriminatorError(f"update: the discriminator role is {self.cfg.role!r}, "
                                     "not 'trainable'")
        if len(chosen) != len(rejected):
            raise ValueError(f"rejected: {len(rejected)} rows for {len(chosen)} chosen rows")
        if not chosen:
            raise ValueError("chosen: no pairs to train on")
        rows_c, rows_r = self._check_ids(chosen, "chosen"), self._check_ids(rejected, "rejected")
        pairs_per_batch = max(1, self.cfg.batch_size // 2)
        results = self._call("update", ray.put(rows_c), ray.put(rows_r), pairs_per_batch,
                             self.template.pad_token_id)
        return dict(self._reported(results))

    def update(self, chosen: Sequence[PolarTriple],
               rejected: Sequence[PolarTriple]) -> dict[str, float]:
        """One optimizer step on the Bradley–Terry loss −log σ(r(chosen_i) − r(rejected_i)),
        mean over pairs; micro-batches hold ``batch_size // 2`` pairs (both rows of a pair
        in one micro-batch).

        Returns ``disc/loss``, ``disc/accuracy`` (share with r_c > r_r) and
        ``disc/margin_mean`` (mean r_c − r_r), all measured before the step, plus
        ``disc/lr`` (the rate of this step) and ``disc/grad_norm`` (before clipping).
        Raises :class:`DiscriminatorError` unless the role is ``trainable``.
        """
        if not self.trainable:
            raise DiscriminatorError(f"update: the discriminator role is {self.cfg.role!r}, "
                                     "not 'trainable'")
        return self.update_token_ids(self.template.encode_all(chosen),
                                     self.template.encode_all(rejected))

    def save(self, directory: str | Path) -> None:
        """Write the discriminator to ``directory`` (a ``torch_dist`` checkpoint: weights, and
        optimizer + LR scheduler when trainable). Atomic; complete when this returns."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        self._call("save", str(directory))

    def load(self, directory: str | Path) -> None:
        """Load a directory written by :meth:`save` (a trainable client also restores the
        optimizer and scheduler when the directory has them), or a converted checkpoint."""
        from uniapl_mcore.checkpoint.dcp_io import TorchDistReader

        TorchDistReader(directory)  # one-line error when it is not a checkpoint
        self._call("load", str(directory))

    def __enter__(self) -> DiscriminatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _launch(spec: WorkerSpec, world: int, cpus: float, gpus: float,
            timeout_s: float) -> tuple[list[Any], Any]:
    """Create the ``world`` actors (not yet set up) and their placement group (or None)."""
    import ray
    from ray.util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    if cpus < 0 or gpus < 0:
        raise ConfigError("num_cpus_per_actor" if cpus < 0 else "num_gpus_per_actor",
                          "must be >= 0")
    bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
    group = None
    if bundle:
        group = ray.util.placement_group([bundle] * world, strategy="STRICT_PACK")
        if not group.wait(timeout_seconds=timeout_s):
            ray.util.remove_placement_group(group)
            raise DiscriminatorError(f"no node can host {world} discriminator actors of "
                                     f"{bundle} each (placement group not ready in "
                                     f"{timeout_s:.0f} s)")
    remote = ray.remote(DiscriminatorWorker)
    actors = []
    for rank in range(world):
        if group is not None:
            strategy: Any = PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=rank)
        else:
            strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                      soft=False)
        actors.append(remote.options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                     scheduling_strategy=strategy).remote(spec, rank, world))
    return actors, group
