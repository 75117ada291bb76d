"""Ray start-up for the project: join a cluster or start a local node, with retries; the
processes of one Ray temp dir; clusters on loopback that stay on loopback.

- :func:`init_ray` is ``ray.init`` that survives a slow machine: a start-up that times out
  ("The current node timed out during startup": Ray waits a fixed 30 s for its raylet to
  register, which an overloaded machine can miss) is cleaned up and tried again, a bounded
  number of times, then fails with one line naming what could not be started or joined.
- :func:`keep_loopback`: Ray replaces a loopback address given for a node or a cluster
  (``127.0.0.1``, ``localhost``, ``::1``) by the machine's external address
  (``ray._private.services.resolve_ip_for_localhost``), so a cluster meant to stay on
  loopback ends up on the external interface, and a driver told ``127.0.0.1:PORT`` looks
  for the cluster at ``<external address>:PORT``. Inside this block loopback addresses stay
  as given (other addresses resolve as before); with the node on loopback, Ray's servers
  listen on loopback only.
- :func:`processes_under` / :func:`stop_processes_under`: the processes of the Ray node(s)
  started with ``--temp-dir DIR`` (those whose command line names ``DIR``, and their
  descendants: workers and agents retitle themselves ``ray::...``), stopped in ``ray stop``'s
  order — raylets, then the rest, then the GCS — without touching any other Ray on the
  machine.

Run as a module it is what ``examples/launch_multi_node.sh`` calls::

    python -m uniapl_mcore.runtime.ray_cluster start [ray start options]   # loopback kept
    python -m uniapl_mcore.runtime.ray_cluster wait-nodes ADDRESS COUNT TIMEOUT_S
    python -m uniapl_mcore.runtime.ray_cluster pids TEMP_DIR
    python -m uniapl_mcore.runtime.ray_cluster stop TEMP_DIR [--grace-s S]

``start`` exits with :data:`EXIT_AUTH` when the cluster refused this node's token.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from uniapl_mcore.log import error_line

logger = logging.getLogger(__name__)

#: Exit status of ``start`` when the cluster refused the authentication token.
EXIT_AUTH = 3

#: Lower-cased fragments of Ray start-up errors that a later attempt can get past.
_TRANSIENT = ("timed out during startup", "timed out while waiting for gcs",
              "failed to connect to gcs", "deadline exceeded")
_AUTH = ("invalidauthtoken", "authenticationerror", "authentication token")


class RayStartError(RuntimeError):
    """Ray could not be started or joined within the allowed attempts."""


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is a start-up failure worth another attempt (an overloaded machine),
    not a refusal (a wrong token, a bad argument)."""
    text = str(err).lower()
    if any(fragment in text for fragment in _AUTH):
        return False
    return isinstance(err, TimeoutError | ConnectionError) or \
        any(fragment in text for fragment in _TRANSIENT)


def first_line(err: BaseException) -> str:
    """``Type: first line`` of ``err`` (Ray's messages carry tracebacks)."""
    line, name = error_line(err), type(err).__name__
    return line if line == name else f"{name}: {line}"


def is_loopback(host: str) -> bool:
    """``127.x.x.x``, ``localhost`` or ``::1``."""
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


@contextmanager
def keep_loopback() -> Iterator[None]:
    """Within the block Ray keeps loopback addresses as given (see the module docstring)."""
    from ray._private import services

    original = services.resolve_ip_for_localhost

    def resolve(host: str) -> str:
        return host if host and is_loopback(host) else original(host)

    services.resolve_ip_for_localhost = resolve
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original


def init_ray(address: str | None = None, *, attempts: int = 3, retry_wait_s: float = 5.0,
             **init_kwargs: Any) -> None:
    """``ray.init(address=address, **init_kwargs)`` under :func:`keep_loopback`.

    A transient start-up failure (:func:`is_transient`) is cleaned up (``ray.shutdown()``,
    and the Ray processes the failed attempt left behind are killed) and retried after
    ``retry_wait_s`` × attempt seconds, ``attempts`` times in all; each attempt is bounded
    by Ray's own start-up timeouts. Then :class:`RayStartError`, one line: what could not be
    started or joined, how often, for how long, and Ray's last error. Other errors propagate
    unchanged at once.
    """
    import ray

    if attempts < 1:
        raise ValueError(f"attempts: must be >= 1, got {attempts}")
    what = f"join the Ray cluster at {address}" if address else "start a local Ray node"
    start, last = time.monotonic(), None
    for attempt in range(1, attempts + 1):
        before = _own_ray_processes()
        try:
            with keep_loopback():
                ray.init(address=address, **init_kwargs)
            return
        except Exception as err:  # noqa: BLE001 - classified below
            _clean_up_failed_start(before)
            if not is_transient(err):
                raise
            last = err
        if attempt < attempts:
            wait = retry_wait_s * attempt
            logger.warning("could not %s (attempt %d of %d: %s); retrying in %.0f s", what,
                           attempt, attempts, first_line(last), wait)
            time.sleep(wait)
    raise RayStartError(f"could not {what}: {attempts} attempts in "
                        f"{time.monotonic() - start:.0f} s failed; last error: "
                        f"{first_line(last)}") from last


def _own_ray_processes() -> set[int]:
    """PIDs of this process's descendants that are Ray's (what a local start spawns)."""
    import psutil
    import ray

    ray_dir = os.path.dirname(ray.__file__)
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            name, cmdline = child.name(), " ".join(child.cmdline())
        except psutil.Error:
            continue
        if name.startswith("ray::") or ray_dir in cmdline:
            found.add(child.pid)
    return found


def _clean_up_failed_start(before: set[int]) -> None:
    import psutil
    import ray

    try:
        ray.shutdown()
    except Exception as err:  # noqa: BLE001 - best effort after a failed start
        logger.warning("ray.shutdown() after a failed start: %s", first_line(err))
    leftover = []
    for pid in _own_ray_processes() - before:
        try:
            leftover.append(psutil.Process(pid))
        except psutil.Error:
            continue
    _terminate(leftover, grace_s=5.0)


# ---------------------------------------------------------------- the processes of a temp dir


def _names_dir(arg: str, temp_dir: str) -> bool:
    """Whether one command-line argument names ``temp_dir`` or a path inside it."""
    start = arg.find(temp_dir)
    while start >= 0:
        end = start + len(temp_dir)
        if end == len(arg) or arg[end] in "/ ,;":
            return True
        start = arg.find(temp_dir, start + 1)
    return False


def processes_under(temp_dir: str | os.PathLike[str]) -> list[Any]:
    """The live processes (``psutil.Process``) of the Ray node(s) started with
    ``--temp-dir temp_dir``: those whose command line names it, and their descendants."""
    import psutil

    root = os.path.realpath(os.fspath(temp_dir)).rstrip("/")
    given = os.fspath(temp_dir).rstrip("/")
    me = os.getpid()
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid != me and any(_names_dir(a, root) or _names_dir(a, given) for a in cmdline):
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return [p for p in found.values() if _alive(p)]


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _rank(proc: Any) -> int:
    """``ray stop``'s order: raylets first (their agents and workers follow them), the GCS
    last (the others report to it while they shut down)."""
    try:
        text = " ".join(proc.cmdline()[:1]) + " " + proc.name()
    except Exception:  # noqa: BLE001 - gone already
        return 1
    return 0 if "raylet" in text else 2 if "gcs_server" in text else 1


def _terminate(procs: Sequence[Any], grace_s: float) -> list[int]:
    """SIGTERM ``procs``, SIGKILL whatever is left after ``grace_s``; their PIDs."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def stop_processes_under(temp_dir: str | os.PathLike[str], grace_s: float = 10.0) -> list[int]:
    """Stop the Ray node(s) of ``temp_dir`` (see :func:`processes_under`), nothing else;
    the PIDs that were stopped."""
    stopped: list[int] = []
    for group in (0, 1, 2):
        procs = [p for p in processes_under(temp_dir) if _rank(p) == group]
        stopped += _terminate(procs, grace_s / 3)
    stopped += _terminate(processes_under(temp_dir), grace_s / 3)  # late-spawned workers
    return stopped


# ---------------------------------------------------------------- command line


def wait_for_nodes(address: str, count: int, timeout_s: float) -> int:
    """Wait until the cluster at ``address`` has ``count`` live nodes; how many it has."""
    import ray

    init_ray(address, log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            if alive >= count or time.monotonic() > deadline:
                return alive
            time.sleep(1.0)
    finally:
        ray.shutdown()


def _start(ray_args: list[str]) -> int:
    from ray.scripts.scripts import cli

    try:
        with keep_loopback():
            cli.main(args=["start", *ray_args], prog_name="ray", standalone_mode=False)
    except Exception as err:  # noqa: BLE001 - reported in one line
        if any(fragment in str(err).lower() for fragment in _AUTH):
            print("ray start: the cluster refused this node's authentication token (set the "
                  "same RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH on every node)", file=sys.stderr)
            return EXIT_AUTH
        print(f"ray start: {first_line(err)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["start"]:  # everything after it is `ray start`'s (argparse would eat it)
        return _start(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m uniapl_mcore.runtime.ray_cluster",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="`ray start` with loopback addresses kept (its options)")
    wait = sub.add_parser("wait-nodes", help="wait for COUNT live nodes")
    wait.add_argument("address")
    wait.add_argument("count", type=int)
    wait.add_argument("timeout_s", type=float)
    pids = sub.add_parser("pids", help="PIDs of the Ray processes of TEMP_DIR")
    pids.add_argument("temp_dir")
    stop = sub.add_parser("stop", help="stop the Ray processes of TEMP_DIR only")
    stop.add_argument("temp_dir")
    stop.add_argument("--grace-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.command == "wait-nodes":
        try:
            alive = wait_for_nodes(args.address, args.count, args.timeout_s)
        except RayStartError as err:
            print(err, file=sys.stderr)
            return 1
        if alive < args.count:
            print(f"only {alive} of {args.count} Ray nodes joined {args.address} within "
                  f"{args.timeout_s:g} s", file=sys.stderr)
            return 1
        return 0
    if args.command == "pids":
        print("\n".join(str(p.pid) for p in processes_under(args.temp_dir)))
        return 0
    stopped = stop_processes_under(args.temp_dir, args.grace_s)
    print(f"stopped {len(stopped)} Ray process(es) of {args.temp_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
