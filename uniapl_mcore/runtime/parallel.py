"""Process groups and the parallel layout: the one object every component is handed.

:func:`init_parallel` starts ``torch.distributed`` from torchrun's environment (NCCL when
CUDA is present, gloo otherwise, with the CPU execution layer enabled), initialises
Megatron's parallel state for TP / PP / CP / EP / DP, seeds Megatron's RNG tracker, and
returns a :class:`ParallelLayout`. ``layout.destroy()`` undoes all of it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from uniapl_mcore.runtime import mcore_compat
from uniapl_mcore.runtime.cpu_layer import CpuExecutionLayer, maybe_enable_cpu_layer
from uniapl_mcore.runtime.dist_env import DistEnv
from uniapl_mcore.runtime.layout import ParallelConfig

logger = logging.getLogger(__name__)


@dataclass
class ParallelLayout:
    """Where this rank sits: sizes and ranks for every parallel dimension, device, backend.

    Ranks are Megatron's (order tp-cp-ep-dp-pp). ``dp`` counts model replicas.
    """

    env: DistEnv
    tp: int
    pp: int
    cp: int
    ep: int
    dp: int
    tp_rank: int
    pp_rank: int
    cp_rank: int
    dp_rank: int
    device: torch.device
    backend: str
    cpu_layer: CpuExecutionLayer | None = field(default=None, repr=False)
    owns_process_group: bool = field(default=True, repr=False)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_logging_rank(self) -> bool:
        """The rank that writes logs and metrics: last pipeline stage, tp/dp/cp rank 0."""
        return self.is_last_stage and self.tp_rank == 0 and self.dp_rank == 0 and \
            self.cp_rank == 0

    def dp_group(self) -> dist.ProcessGroup:
        """Data-parallel group (including context-parallel ranks, as gradients are)."""
        from megatron.core import parallel_state as mpu

        return mpu.get_data_parallel_group(with_context_parallel=True)


    def destroy(self) -> None:
        """Tear down Megatron's parallel state, the process group and the CPU layer."""
        from megatron.core import parallel_state as mpu

        mpu.destroy_model_parallel()
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
        if self.cpu_layer is not None:
            self.cpu_layer.disable()


def _start_process_group(env: DistEnv, backend: str, timeout_s: float) -> bool:
    """Initialise the default group unless one exists; returns whether we started it."""
    if dist.is_initialized():
        return False
    env.export()  # a one-process run without torchrun gets a free port here
    kwargs = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", env.local_rank)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return True


def _check_derived_sizes(parallel: ParallelConfig, world_size: int) -> None:
    """Megatron's data-parallel and expert-data-parallel sizes equal the arithmetic of
    :class:`ParallelConfig` (which the dry-run planner uses); raise if they ever diverge."""
    from megatron.core import parallel_state as mpu

    built = (mpu.get_data_parallel_world_size(),
             mpu.get_expert_data_parallel_world_size())
    planned = (parallel.data_parallel_size(world_size),
               parallel.expert_data_parallel_size(world_size))
    if built != planned:
        raise RuntimeError(f"Megatron built (DP, expert-DP) = {built} but the parallel config "
                           f"implies {planned} on {world_size} ranks")


def init_parallel(parallel: ParallelConfig, seed: int, env: DistEnv | None = None,
                  timeout_s: float = 600.0) -> ParallelLayout:
    """Start the process group and Megatron parallel state for ``parallel``; seed RNGs.

    ``env`` defaults to torchrun's environment (or a one-process world). The world-size
    check runs before any group starts, so a bad layout fails with one line.
    """
    from megatron.core import parallel_state as mpu
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    env = env or DistEnv.from_environ()
    parallel.check_world_size(env.world_size)
    mcore_compat.apply()
    # Megatron's TP layers overlap grad all-reduce with compute only with one hardware queue
    # (must be set before the CUDA context exists; harmless on CPU).
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    cpu_layer = maybe_enable_cpu_layer()
    if cuda:
        torch.cuda.set_device(env.local_rank)
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    owns = _start_process_group(env, backend, timeout_s)
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        expert_model_parallel_size=parallel.expert_parallel_size,
        distributed_timeout_minutes=max(1, int(timeout_s // 60)),
        create_gloo_process_groups=True,
    )
    _check_derived_sizes(parallel, env.world_size)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    layout = ParallelLayout(
        env=env, tp=parallel.tensor_parallel_size, pp=parallel.pipeline_parallel_size,
        cp=parallel.context_parallel_size, ep=parallel.expert_parallel_size,
        dp=mpu.get_data_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        cp_rank=mpu.get_context_parallel_rank(), dp_rank=mpu.get_data_parallel_rank(),
        device=device, backend=backend, cpu_layer=cpu_layer, owns_process_group=owns)
    logger.info("parallel layout: world=%d tp=%d pp=%d cp=%d ep=%d dp=%d backend=%s",
                env.world_size, layout.tp, layout.pp, layout.cp, layout.ep, layout.dp, backend)
    return layout
