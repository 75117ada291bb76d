"""The trainer side of the OS sandbox: starts the zygote, hands it jobs, reads verdicts.

One zygote per process (started on first use, restarted after ``fork`` or if it dies),
shared by all threads.  For each verifier the supervisor makes two pipes — input
(source + response) and verdict — and passes the child's ends to the zygote over a
``SOCK_SEQPACKET`` socket (``SCM_RIGHTS``); it then writes the input and reads the
verdict pipe itself, so a verdict can come only from that verifier's own process (and the
zygote's status line after it).  All verifiers of one response run at once, each with
``sandbox_timeout_s`` from the moment it is handed over; the zygote kills late ones, and
the supervisor gives up ``_GRACE_S`` later still (then restarts the zygote).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from uniapl_mcore.rewards.config import RewardConfig

logger = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__))
#: Seconds the supervisor waits for the zygote's ready message.
_START_TIMEOUT_S = 60.0
#: Seconds past a job's deadline before the supervisor stops waiting for the zygote.
_GRACE_S = 5.0
#: Bytes a verifier may write to its own temporary directory (its tmpfs size, RLIMIT_FSIZE).
FSIZE_BYTES = 16 * 1024 * 1024

# Returns True only when the boundary holds: run (without the audit hook) at start-up.
_PROBE = """
import os, socket, tempfile
def evaluate(response):
    if os.getuid() == 0 or os.getgid() == 0:
        return False
    pid = None
    try:
        pid = os.fork()
    except OSError:
        pass
    if pid == 0:
        os._exit(0)
    if pid is not None:
        return False
    try:
        socket.socket()
        return False
    except OSError:
        pass
    try:
        os.listdir("/")
        return False
    except OSError:
        pass
    path = os.path.join(tempfile.gettempdir(), "probe")
    with open(path, "w") as f:
        f.write(response)
    return open(path).read() == response
"""


class SandboxUnavailableError(RuntimeError):
    """The OS-level boundary for code verifiers cannot be set up on this machine."""


@dataclass
class _Pending:
    """One verifier in flight: its pipes, what is left to send, what came back."""

    to_send: bytes
    in_w: int | None
    out_r: int | None
    deadline: float
    limit: int
    received: bytearray = field(default_factory=bytearray)
    overflow: bool = False


class Zygote:
    """A running zygote (see ``_zygote.py``)."""

    def __init__(self) -> None:
        self.mountpoint = tempfile.mkdtemp(prefix="uniapl_sandbox_root_")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (f"import sys; sys.path.insert(0, {_HERE!r}); import _zygote; "
                f"_zygote.boot({child.fileno()}, {self.mountpoint!r})")  # fmt: skip
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", code], pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            parent.close()
            shutil.rmtree(self.mountpoint, ignore_errors=True)
            raise SandboxUnavailableError(
                f"code-verifier sandbox could not be set up: cannot start Python: {exc}"
            ) from exc
        finally:
            child.close()
        self.sock = parent
        self.lock = threading.Lock()
        try:
            self.info = self._await_ready()
        except BaseException:
            self.close()
            raise
        # The zygote has pivoted into its private root: the host-side mount point is no
        # longer used by anything, so nothing of the sandbox is left visible here.
        os.rmdir(self.mountpoint)

    def _await_ready(self) -> dict:
        ready, _, _ = select.select([self.sock], [], [], _START_TIMEOUT_S)
        data = self.sock.recv(1 << 20) if ready else b""
        message = json.loads(data) if data else {}
        if message.get("ready"):
            return message
        why = message.get("error") or (
            "no answer" if not ready else f"exited with status {self.proc.wait()}")
        raise SandboxUnavailableError(f"code-verifier sandbox could not be set up: {why}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, header: dict, in_r: int, out_w: int) -> None:
        """Hand one job to the zygote (thread-safe)."""
        with self.lock:
            socket.send_fds(self.sock, [json.dumps(header).encode()], [in_r, out_w])

    def close(self) -> None:
        """Stop the zygote (its PID namespace, hence every verifier, dies with it)."""
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.mountpoint, ignore_errors=True)


_lock = threading.Lock()
_zygote: Zygote | None = None
_zygote_pid = -1


def get_zygote() -> Zygote:
    """The process's zygote, started (and probed) on first use or after it died."""
    global _zygote, _zygote_pid
    with _lock:
        if _zygote is not None and _zygote_pid == os.getpid() and _zygote.alive():
            return _zygote
        if _zygote is not None and _zygote_pid == os.getpid():
            _zygote.close()
        _zygote, _zygote_pid = None, os.getpid()
        zygote = Zygote()
        try:
            [(ok, why)] = _run_jobs(zygote, [_PROBE], "probe", RewardConfig(
                code_verifiers_enabled=True, sandbox_timeout_s=10.0), audit_hook=False)
        except BaseException:
            zygote.close()
            raise
        if not ok:
            zygote.close()
            raise SandboxUnavailableError(
                f"code-verifier sandbox failed its self-test: {why or 'a check escaped'}")
        logger.info("code-verifier sandbox ready (Landlock ABI %s)", zygote.info["landlock_abi"])
        _zygote = zygote
        return zygote


def shutdown() -> None:
    """Stop this process's zygote, if any."""
    global _zygote
    with _lock:
        if _zygote is not None and _zygote_pid == os.getpid():
            _zygote.close()
        _zygote = None


atexit.register(shutdown)


def _submit_one(zygote: Zygote, source: str, response: str, config: RewardConfig,
                audit_hook: bool) -> _Pending:
    payload = json.dumps({"source": source, "response": response}).encode()
    header = {
        "timeout": config.sandbox_timeout_s, "memory": config.sandbox_memory_mb << 20,
        "cpu": int(config.sandbox_timeout_s) + 2, "fsize": FSIZE_BYTES,
        "input_limit": len(payload), "hook": audit_hook,
    }  # fmt: skip
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    try:
        zygote.submit(header, in_r, out_w)
    except BaseException:
        for fd in (in_w, out_r):
            os.close(fd)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    os.set_blocking(in_w, False)
    deadline = time.monotonic() + config.sandbox_timeout_s + _GRACE_S
    return _Pending(payload, in_w, out_r, deadline, config.sandbox_max_output_kb * 1024)


def _pump(pending: list[_Pending]) -> bool:
    """Move bytes until every verdict pipe is closed; False if a deadline ran out first."""
    poller = select.poll()
    by_fd: dict[int, _Pending] = {}
    for p in pending:
        if p.in_w is not None:
            poller.register(p.in_w, select.POLLOUT)
            by_fd[p.in_w] = p
        poller.register(p.out_r, select.POLLIN)
        by_fd[p.out_r] = p
    while any(p.out_r is not None for p in pending):
        wait = min(p.deadline for p in pending if p.out_r is not None) - time.monotonic()
        if wait <= 0:
            return False
        for fd, _ in poller.poll(int(wait * 1000) + 1):
            p = by_fd[fd]
            if fd == p.in_w:
                try:
                    p.to_send = p.to_send[os.write(fd, p.to_send[: 1 << 16]):]
                except OSError:  # the child is gone
                    p.to_send = b""
                if not p.to_send:
                    poller.unregister(fd)
                    os.close(fd)
                    p.in_w = None
            else:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    poller.unregister(fd)
                    os.close(fd)
                    p.out_r = None
                elif len(p.received) + len(chunk) > p.limit:
                    p.overflow = True
                else:
                    p.received += chunk
    return True


def _close(pending: list[_Pending]) -> None:
    for p in pending:
        for fd in (p.in_w, p.out_r):
            if fd is not None:
                os.close(fd)
        p.in_w = p.out_r = None


def parse_output(data: bytes, overflow: bool, limit_kb: int,
                 timeout_s: float) -> tuple[bool, str]:
    """``(passed, reason)`` from one verdict pipe's bytes (child line, then zygote status)."""
    if overflow:
        return False, f"verifier output exceeded {limit_kb} KiB"
    lines = [line for line in data.split(b"\n") if line.strip()]
    try:
        status = json.loads(lines[-1])["status"] if lines else None
    except (ValueError, TypeError, KeyError):
        status = None
    if not isinstance(status, dict):
        return False, "no status from the sandbox"
    if "error" in status:
        return False, f"sandbox error: {status['error']}"
    verdict = None
    if len(lines) >= 2:
        try:
            verdict = json.loads(lines[0])
        except ValueError:
            verdict = None
    if not (isinstance(verdict, list) and len(verdict) == 2):
        verdict = None
    code = status.get("code")
    if status.get("timeout"):
        return False, f"timeout after {timeout_s:g}s"
    if len(lines) > 2:  # the child writes exactly one line; anything else is tampering
        return False, "the verifier wrote to its verdict channel"
    if code == 0 and verdict is not None:
        return verdict[0] is True, str(verdict[1])
    if verdict is not None and verdict[1]:
        return False, str(verdict[1])
    if isinstance(code, int) and code < 0:
        return False, f"killed by signal {-code}"
    return False, f"exited with status {code}" if code else "no verdict produced"


def _run_jobs(zygote: Zygote, sources: Sequence[str], response: str, config: RewardConfig,
              audit_hook: bool = True) -> list[tuple[bool, str]]:
    pending: list[_Pending] = []
    try:
        for source in sources:
            pending.append(_submit_one(zygote, source, response, config, audit_hook))
        finished = _pump(pending)
    finally:
        stuck = [p.out_r is not None for p in pending]
        _close(pending)
    if not finished:
        logger.error("the code-verifier zygote did not answer in time; restarting it")
        zygote.close()
    out = []
    for p, late in zip(pending, stuck, strict=True):
        if late:
            out.append((False, f"timeout after {config.sandbox_timeout_s:g}s (no answer)"))
        else:
            out.append(parse_output(bytes(p.received), p.overflow,
                                    config.sandbox_max_output_kb, config.sandbox_timeout_s))
    return out


def run_confined(sources: Sequence[str], response: str, config: RewardConfig,
                 audit_hook: bool = True) -> list[tuple[bool, str]]:
    """``[(passed, reason)]`` per source, each in its own confined child.

    ``audit_hook=False`` leaves out the defence-in-depth hook (tests use it to show the
    OS boundary holds on its own).  Raises :class:`SandboxUnavailableError` when the
    boundary cannot be set up.
    """
    return _run_jobs(get_zygote(), sources, response, config, audit_hook)
