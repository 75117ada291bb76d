"""The run's checkpoints: every stateful part given once, saved and loaded together.

``<run_dir>/checkpoints/step_NNNNNN`` (written under a temporary name and renamed, ``latest``
replaced last: :func:`uniapl_mcore.megatron.checkpointing.staged_dir`) holds::

    policy/             weights + optimizer + LR schedule (torch_dist, any layout)
    policy/hf/          the policy's HF config.json + tokenizer (``mcore-to-hf`` reads them)
    reference/          the KL reference's weights (when a stage needs one; + its hf/)
    discriminator/      the trainable discriminator (+ its optimizer)
    rng/rank_NNNNN.safetensors   every rank's RNG states (:mod:`.rng_state`)
    trainer_state.json  step, stage, weight version, world size, the samplers' positions
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from uniapl_mcore.checkpoint.convert import write_hf_side_dir
from uniapl_mcore.megatron.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    staged_dir,
    step_dir_name,
    write_model_state,
)
from uniapl_mcore.megatron.model import TrainableModel
from uniapl_mcore.runtime.parallel import ParallelLayout
from uniapl_mcore.trainer.rng_state import (
    read_rng_state,
    rng_file,
    save_rng_state,
    set_rng_state,
)
from uniapl_mcore.trainer.update import Reference

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"


def fault_point(point: str, step: int) -> None:
    """Fault injection for the kill-and-resume tests: ``UNIAPL_FAULT=<point>:<step>`` makes
    this process SIGKILL itself when it reaches ``point`` at ``step`` (``step``: mid-step,
    after the optimizer update; ``checkpoint``: while the checkpoint is half written)."""
    if os.environ.get("UNIAPL_FAULT") == f"{point}:{step}":
        import signal

        logger.warning("UNIAPL_FAULT: killing this process at %s %d", point, step)
        os.kill(os.getpid(), signal.SIGKILL)


def read_resume_point(root: Path) -> tuple[Path | None, dict[str, Any]]:
    """The latest checkpoint under ``root`` and its trainer state (``{}`` when none)."""
    resume = latest_checkpoint(root)
    return resume, json.loads((resume / TRAINER_STATE).read_text()) if resume else {}


class CheckpointManager:
    """Saves and loads the run's stateful parts atomically (collective).

    ``discriminator`` (its client; saved when trainable), ``samplers`` (``{stage index:
    sampler}``, written into ``trainer_state.json``) and ``hf_files`` (the policy's HF
    ``config.json`` + tokenizer directory, ``RUN/policy_hf``, copied into each model's
    ``hf/``) exist on global rank 0 only; the other ranks pass None.
    """

    def __init__(self, root: Path, layout: ParallelLayout, keep_last: int, *,
                 policy: TrainableModel, reference: Reference | None,
                 discriminator: Any | None = None,
                 samplers: dict[int, Any] | None = None,
                 hf_files: Path | None = None) -> None:
        self.root, self.layout, self.keep_last = root, layout, keep_last
        self.policy, self.reference = policy, reference
        self.discriminator, self.samplers = discriminator, samplers
        self.hf_files = hf_files

    def _rng_file(self, directory: Path) -> Path:
        return rng_file(directory / "rng", self.layout.rank)

    def _trainable_disc(self) -> Any | None:
        disc = self.discriminator
        return disc if disc is not None and disc.trainable else None

    def save(self, step: int, stage: int) -> Path:
        """Everything as ``root/step_NNNNNN``; returns that directory."""
        models = ("policy",) + (("reference",) if self.reference is not None else ())
        with staged_dir(self.root, step, self.keep_last, (*models, "rng")) as tmp:
            write_model_state(tmp / "policy", self.policy, True, {"stage": stage}, step)
            if self.reference is not None:
                write_model_state(tmp / "reference", self.reference.as_trainable(), False)
            if self.hf_files is not None:  # after the model state (its directory must be empty)
                for model in models:
                    write_hf_side_dir(self.hf_files, tmp / model)
            save_rng_state(self._rng_file(tmp))
            fault_point("checkpoint", step)
            if (disc := self._trainable_disc()) is not None:
                disc.save(str(tmp / "discriminator"))  # frozen: its own checkpoint
            if self.samplers is not None:
                state = {"step": step, "stage": stage, "weight_version": step,
                         "world_size": self.layout.world_size,
                         "samplers": {str(i): s.state_dict() for i, s in self.samplers.items()}}
                (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
        return self.root / step_dir_name(step)

    def load(self, path: Path) -> None:
        """Every part from ``path`` (the trainer state is read by :func:`read_resume_point`)."""
        load_checkpoint(path / "policy", self.policy)
        if self.reference is not None:
            load_checkpoint(path / "reference", self.reference.as_trainable(),
                            include_optimizer=False)
        if (disc := self._trainable_disc()) is not None:
            disc.load(str(path / "discriminator"))
        state = read_rng_state(path / "rng", self.layout.rank)
        if state is not None:
            set_rng_state(state)
        else:
            logger.warning("%s: no RNG state for rank %d (world size changed?)", path,
                           self.layout.rank)
