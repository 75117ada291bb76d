"""The distributed test harness itself: results by rank, surfaced tracebacks, timeouts."""

from __future__ import annotations

import os
import time

import pytest

from uniapl_mcore.runtime.dist_env import DistEnv
from uniapl_mcore.testing import DistributedRunError, run_distributed


def _all_reduce_rank():
    import torch
    import torch.distributed as dist

    env = DistEnv.from_environ()
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    value = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(value)
    return {"rank": env.rank, "world": env.world_size, "sum": value.item(),
            "threads": int(os.environ["OMP_NUM_THREADS"])}


def _raise_on_rank_one():
    if DistEnv.from_environ().rank == 1:
        raise ValueError("boom from rank one")
    return "ok"


def _hang():
    time.sleep(60)


def _exit_hard():
    os._exit(3)


def test_results_come_back_in_rank_order():
    results = run_distributed(_all_reduce_rank, world_size=3, timeout_s=120)
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["world"] == 3 and r["sum"] == 6.0 and r["threads"] >= 1 for r in results)


def test_child_traceback_surfaces():
    with pytest.raises(DistributedRunError) as info:
        run_distributed(_raise_on_rank_one, world_size=2, timeout_s=60)
    message = str(info.value)
    assert "--- rank 1 ---" in message
    assert "ValueError: boom from rank one" in message
    assert "_raise_on_rank_one" in message
    assert not isinstance(info.value, AssertionError)  # the project's own error type
    assert "rank 1: ValueError: boom from rank one" in info.value.summary


def test_hung_ranks_time_out():
    start = time.monotonic()
    with pytest.raises(DistributedRunError, match=r"ranks \[0, 1\] did not finish within 3s"):
        run_distributed(_hang, world_size=2, timeout_s=3)
    assert time.monotonic() - start < 30


def test_dead_process_is_reported():
    with pytest.raises(DistributedRunError, match="process died with exit code 3"):
        run_distributed(_exit_hard, world_size=1, timeout_s=60)


def test_dist_env_parsing_errors_name_the_variable():
    from uniapl_mcore.config import ConfigError

    assert DistEnv.from_environ({}) == DistEnv()
    env = DistEnv.from_environ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_PORT": "29500",
                                "MASTER_ADDR": "10.0.0.1", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == \
        (1, 2, 1, "10.0.0.1", 29500)
    with pytest.raises(ConfigError, match="^WORLD_SIZE: environment variable is missing"):
        DistEnv.from_environ({"RANK": "0"})
    with pytest.raises(ConfigError, match="^RANK: environment variable is not an integer"):
        DistEnv.from_environ({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match=r"^RANK: 2 is outside \[0, WORLD_SIZE=2\)"):
        DistEnv.from_environ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_PORT": "1"})
