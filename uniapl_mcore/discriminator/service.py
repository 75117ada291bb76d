"""The body of one discriminator actor: one rank of the discriminator's own Megatron world.

A discriminator of layout TP × PP runs as TP·PP Ray actors (``DiscriminatorClient`` starts
them). Each actor joins a ``torch.distributed`` world of its own (gloo on CPU, NCCL on GPU;
rendezvous through the environment variables torchrun would set), initialises Megatron's
parallel state for the discriminator's layout — independent of the policy's — and builds
its stage of the value-head GPT model. Every public method except :meth:`node` and
:meth:`free_port` is collective: the client calls it on all actors with the same arguments.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from uniapl_mcore.megatron.config import OptimizerConfig
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.runtime.layout import ParallelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything an actor needs to build its rank (picklable).

    ``checkpoint``: initial weights (``torch_dist``, weights only) or None for a random
    init from ``seed``. ``max_steps``: length of the LR schedule (discriminator updates).
    ``num_threads``: torch intra-op threads. ``timeout_s``: collective timeout.
    """

    role: Literal["frozen", "trainable"]
    model: ModelConfig
    parallel: ParallelConfig
    optimizer: OptimizerConfig
    checkpoint: str | None
    seed: int
    max_steps: int
    offload: bool = False
    num_threads: int = 1
    timeout_s: float = 600.0


def _local_rank(rank: int) -> int:
    """The device index for ``rank``: 0 when Ray gave the actor one GPU of its own."""
    if not torch.cuda.is_available():
        return rank
    return rank % torch.cuda.device_count()


class DiscriminatorWorker:
    """One rank of the discriminator (wrapped with ``ray.remote`` by the client)."""

    def __init__(self, spec: WorkerSpec, rank: int, world_size: int) -> None:
        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(spec.num_threads)
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.layout: Any = None
        self.model: Any = None  # TrainableModel (optimizer None when frozen)
        self.updates = 0

    # ------------------------------------------------------------------ set-up
    def node(self) -> tuple[str, str]:
        """(Ray node id, node IP) of this actor."""
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def free_port(self) -> int:
        """A free TCP port on this actor's host (for the rendezvous; rank 0 only)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            return int(sock.getsockname()[1])

    def setup(self, master_addr: str, master_port: int) -> dict[str, int]:
        """Join the world, build this rank's model, load the initial weights."""
        from uniapl_mcore.runtime.parallel import init_parallel

        os.environ.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
                           "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size),
                           "LOCAL_RANK": str(_local_rank(self.rank)),
                           "LOCAL_WORLD_SIZE": str(self.world_size)})
        spec = self.spec
        self.layout = init_parallel(spec.parallel, seed=spec.seed, timeout_s=spec.timeout_s)
        self.model = self._build()
        if spec.checkpoint is not None:
            self._load(spec.checkpoint, with_optimizer=False)
        if spec.offload:
            from uniapl_mcore.discriminator.offload import to_host

            to_host(self.model)
        layout = self.layout
        params = sum(p.numel() for c in self.model.chunks for p in c.parameters())
        return {"rank": self.rank, "tp_rank": layout.tp_rank, "pp_rank": layout.pp_rank,
                "parameters": int(params), "pid": os.getpid()}

    def _build(self):
        from uniapl_mcore.megatron.model import TrainableModel, build_trainable_model
        from uniapl_mcore.models.gpt import build_gpt_model, transformer_config

        spec, layout = self.spec, self.layout
        if spec.role == "trainable":
            return build_trainable_model(spec.model, spec.parallel, spec.optimizer, layout,
                                         max(spec.max_steps, 1))
        config = transformer_config(spec.model, spec.parallel)
        gpt = build_gpt_model(spec.model, config, layout.is_first_stage, layout.is_last_stage)
        gpt.eval()
        gpt.requires_grad_(False)
        return TrainableModel([gpt], None, None, config)

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        """Weights on the accelerator inside, back in host memory after (``offload``)."""
        if not self.spec.offload:
            yield
            return
        from uniapl_mcore.discriminator.offload import to_device, to_host

        to_device(self.model)
        try:
            yield
        finally:
            to_host(self.model)

    @property
    def _explicit_mask(self) -> bool:
        return self.layout.device.type == "cpu"

    @property
    def _reports(self) -> bool:
        """Whether this rank returns results (last stage, first TP rank)."""
        return self.layout.is_logging_rank

    # ------------------------------------------------------------------ work
    def score(self, sequences: Sequence[Sequence[int]], rows_per_batch: int,
              pad_id: int) -> list[float] | None:
        """Scores of ``sequences`` (token ids, each ending in the reward token), in order;
        None on ranks that do not report."""
        from uniapl_mcore.discriminator.model_step import forward_scores, score_batches

        batches = score_batches(sequences, rows_per_batch, pad_id,
                                uniform=self.layout.pp > 1, explicit_mask=self._explicit_mask)
        with self._on_device():
            scores = forward_scores(self.model.chunks, batches, self.layout)
        return scores.tolist() if self._reports and scores is not None else None

    def update(self, chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
               pairs_per_batch: int, pad_id: int) -> dict[str, float] | None:
        """One Bradley–Terry optimizer step; metrics on the reporting rank."""
        from uniapl_mcore.discriminator.model_step import bradley_terry_step, pair_batches

        if self.model.optimizer is None:
            raise RuntimeError("update: the discriminator is frozen (role 'frozen')")
        batches = pair_batches(chosen, rejected, pairs_per_batch, pad_id,
                               uniform=self.layout.pp > 1, explicit_mask=self._explicit_mask)
        with self._on_device():
            metrics = bradley_terry_step(self.model, batches, self.layout)
        self.updates += 1
        return metrics if self._reports else None

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str) -> None:
        """Write weights (+ optimizer and scheduler once trainable and stepped) as the
        ``torch_dist`` checkpoint ``directory``, atomically: written to a sibling staging
        directory first, renamed into place when every rank finished."""
        import torch.distributed as dist

        from uniapl_mcore.megatron.checkpointing import write_model_state

        final = Path(directory)
        staging = final.parent / f".tmp.{final.name}"
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        dist.barrier()
        # A never-stepped optimizer has no state to save (Megatron cannot even describe it);
        # loading weights only into a fresh optimizer gives the same state.
        with_optimizer = self.model.optimizer is not None and self.updates > 0
        with self._on_device():
            write_model_state(staging, self.model, with_optimizer,
                              {"discriminator": {"role": self.spec.role,
                                                 "updates": self.updates}}, self.updates)
        dist.barrier()
        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        dist.barrier()
        logger.info("discriminator saved to %s (%d updates)", final, self.updates)

    def load(self, directory: str) -> dict[str, Any]:
        """Load a directory written by :meth:`save` (or a converted checkpoint: weights)."""
        from uniapl_mcore.checkpoint.dcp_io import TorchDistReader

        stored = TorchDistReader(directory).common().get("common", {})
        with_optimizer = self.model.optimizer is not None and "scheduler" in stored
        with self._on_device():
            common = self._load(directory, with_optimizer)
        self.updates = int(common.get("discriminator", {}).get("updates", 0))
        return {"updates": self.updates, "optimizer": with_optimizer}

    def _load(self, path: str, with_optimizer: bool) -> dict[str, Any]:
        from uniapl_mcore.megatron.checkpointing import load_checkpoint

        common = load_checkpoint(path, self.model, include_optimizer=with_optimizer)
        if self.model.optimizer is not None and not with_optimizer:
            self.model.optimizer.reload_model_params()  # main params from the new weights
        return common

    def close(self) -> None:
        """Leave the world (the process itself is killed by the client)."""
        if self.layout is not None:
            self.layout.destroy()
            self.layout = None
