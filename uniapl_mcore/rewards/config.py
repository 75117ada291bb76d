"""Configuration of the instruction-following reward (section ``reward`` of the main config)."""

from __future__ import annotations

from dataclasses import dataclass

REWARD_MODES = ("strict", "partial")
START_METHODS = ("fork", "forkserver", "spawn")


@dataclass
class RewardConfig:
    """How verifiable rewards are computed.

    Attributes:
        mode: ``strict`` — 1.0 iff every constraint passes (the paper's reward);
            ``partial`` — the fraction of constraints passed (open-instruct credit).
        num_workers: CPU worker processes scoring in parallel; 0 scores in-process.
        chunk_size: responses per task sent to a worker.
        start_method: multiprocessing start method of the worker pool.
        code_verifiers_enabled: run dataset-provided Python ``evaluate(response)``
            verifiers (AutoIF). Off by default; rows that need them are rejected.
        sandbox_timeout_s: wall-clock limit of one verifier (all of a response's run at once).
        sandbox_memory_mb: address space a verifier may add to the warm interpreter, MiB.
        sandbox_max_output_kb: most bytes read back from the sandbox, in KiB.
        sandbox_allow_unconfined: where the OS-level sandbox cannot be set up (not root,
            no Landlock, not Linux x86-64), run code verifiers anyway in a fresh
            interpreter behind the Python audit hook only — escapable, so off by
            default: then such a machine refuses code verifiers with one error.
    """

    mode: str = "strict"
    num_workers: int = 2
    chunk_size: int = 64
    start_method: str = "forkserver"
    code_verifiers_enabled: bool = False
    sandbox_timeout_s: float = 5.0
    sandbox_memory_mb: int = 512
    sandbox_max_output_kb: int = 256
    sandbox_allow_unconfined: bool = False

    def __post_init__(self) -> None:
        if self.mode not in REWARD_MODES:
            raise ValueError(f"reward.mode must be one of {REWARD_MODES}, got {self.mode!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(
                f"reward.num_workers must be an integer >= 0, got {self.num_workers!r}"
            )
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"reward.chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        if self.start_method not in START_METHODS:
            raise ValueError(
                f"reward.start_method must be one of {START_METHODS}, got {self.start_method!r}"
            )
        if not isinstance(self.code_verifiers_enabled, bool):
            raise ValueError("reward.code_verifiers_enabled must be a boolean")
        if not self.sandbox_timeout_s > 0:
            raise ValueError(
                f"reward.sandbox_timeout_s must be > 0, got {self.sandbox_timeout_s!r}"
            )
        if not isinstance(self.sandbox_memory_mb, int) or self.sandbox_memory_mb < 64:
            raise ValueError(
                f"reward.sandbox_memory_mb must be an integer >= 64, got {self.sandbox_memory_mb!r}"
            )
        if not isinstance(self.sandbox_allow_unconfined, bool):
            raise ValueError("reward.sandbox_allow_unconfined must be a boolean")
        if not isinstance(self.sandbox_max_output_kb, int) or self.sandbox_max_output_kb < 1:
            raise ValueError(
                "reward.sandbox_max_output_kb must be an integer >= 1, "
                f"got {self.sandbox_max_output_kb!r}"
            )
