"""Run a function in N local processes wired like a torchrun launch (gloo on CPU).

:func:`run_distributed` is the one harness every distributed test uses, and what
``uniapl train`` uses to start its own processes on a machine without torchrun::

    def _body(tmp_dir):                      # module-level: it is pickled to the children
        layout = init_parallel(...)          # reads RANK / WORLD_SIZE / MASTER_* as torchrun sets
        ...
        return {"loss": ...}

    results = run_distributed(_body, world_size=2, args=(str(tmp_path),), timeout_s=300)
    # results[r] is what rank r returned

Each child gets a fresh interpreter (``spawn``), the torchrun variables with a free port,
an equal share of the machine's cores as intra-op threads, and runs ``fn``. A child that
raises makes the call fail with that child's traceback in the message; a child that hangs
or dies is killed at ``timeout_s`` and the failure says which ranks did not finish.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from uniapl_mcore.runtime.dist_env import free_port


class DistributedRunError(RuntimeError):
    """A child process failed, died or timed out; the message carries its traceback
    (:attr:`summary`: the first line and each failing rank's last line)."""

    @property
    def summary(self) -> str:
        head, *blocks = str(self).split("\n--- rank ")
        parts = [head.splitlines()[0] if head else ""]
        for block in blocks:
            rank, _, text = block.partition(" ---\n")
            last = next((x.strip() for x in reversed(text.splitlines()) if x.strip()), "")
            parts.append(f"rank {rank}: {last}")
        return "; ".join(parts)


def _child(rank: int, world_size: int, port: int, threads: int, env: Mapping[str, str],
           fn: Callable, args: tuple, kwargs: dict, results: mp.Queue) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "OMP_NUM_THREADS": str(threads), **env})
    try:
        import torch

        torch.set_num_threads(threads)
        # Plain pickle: tensors travel by value (the queue's own pickler would share them
        # through file descriptors that die with this process).
        results.put((rank, True, pickle.dumps(fn(*args, **kwargs))))
    except BaseException:  # noqa: BLE001 - everything must reach the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001
            pass


_PORT_TAKEN = ("EADDRINUSE", "Address already in use")


def run_distributed(fn: Callable[..., Any], world_size: int, args: tuple = (),
                    kwargs: dict | None = None, timeout_s: float = 300.0,
                    env: Mapping[str, str] | None = None) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ranks 0..world_size-1; return their results by rank.

    ``fn`` and its arguments must be picklable (a module-level function). Raises
    :class:`DistributedRunError` with the first failing rank's traceback, or on timeout.
    If the free port picked for the rendezvous was taken by another process before rank 0
    bound it, the launch is retried (twice at most) on a new port.
    """
    for attempt in range(3):
        try:
            return _launch(fn, world_size, args, kwargs, timeout_s, env)
        except DistributedRunError as err:
            if attempt == 2 or not any(marker in str(err) for marker in _PORT_TAKEN):
                raise
    raise RuntimeError("unreachable")


def _launch(fn: Callable[..., Any], world_size: int, args: tuple, kwargs: dict | None,
            timeout_s: float, env: Mapping[str, str] | None) -> list[Any]:
    ctx = mp.get_context("spawn")
    results: mp.Queue = ctx.Queue()
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // world_size)
    procs = [ctx.Process(target=_child, name=f"rank{rank}", daemon=False,
                         args=(rank, world_size, port, threads, dict(env or {}), fn, args,
                               dict(kwargs or {}), results))
             for rank in range(world_size)]
    for proc in procs:
        proc.start()
    outcome: dict[int, Any] = {}
    failures: dict[int, str] = {}
    finished = False
    deadline = time.monotonic() + timeout_s
    try:
        while len(outcome) + len(failures) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(outcome) - set(failures))
                raise DistributedRunError(
                    f"{getattr(fn, '__name__', fn)}: ranks {missing} did not finish within "
                    f"{timeout_s:.0f}s" + _format_failures(failures))
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)
                        and int(p.name[4:]) not in outcome and int(p.name[4:]) not in failures]
                for proc in dead:
                    failures[int(proc.name[4:])] = f"process died with exit code {proc.exitcode}"
                continue
            if ok:
                outcome[rank] = pickle.loads(payload)
            else:
                failures[rank] = payload
                # Peers of a failed rank usually block in a collective: stop waiting for them.
                deadline = min(deadline, time.monotonic() + 10.0)
        if failures:
            raise DistributedRunError(f"{getattr(fn, '__name__', fn)} failed"
                                       + _format_failures(failures))
        finished = True
        return [outcome[rank] for rank in range(world_size)]
    finally:
        for proc in procs:  # after a failure, peers may be stuck in a collective: kill them
            proc.join(timeout=30.0 if finished else 0.5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5.0)
        results.close()


def _format_failures(failures: Mapping[int, str]) -> str:
    return "".join(f"\n--- rank {rank} ---\n{text}" for rank, text in sorted(failures.items()))
