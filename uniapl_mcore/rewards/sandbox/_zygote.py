"""The zygote: a warm fork server that runs each code verifier in a fresh, confined child.

Standard library only; started by the supervisor as ``python -I`` (see ``supervisor.py``)
and imported by file path, not through the ``uniapl_mcore`` package.

Process tree and why:

* **boot** (started by the supervisor): ``unshare`` of the mount, network, PID, IPC and
  UTS namespaces, ``/`` made recursively private (nothing propagates back to the host),
  then one ``fork``: the child is PID 1 of the new PID namespace.  boot only waits.
* **zygote** (PID 1 there; ``PR_SET_PDEATHSIG`` ties it to boot): imports what
  verifiers commonly use (langdetect profiles included), then builds a private root — a
  read-only tmpfs holding read-only bind mounts of Python's directories and of the
  shared libraries it has loaded — and ``pivot_root`` s into it, detaching the host's
  tree.  The network namespace has only a downed loopback.  Being PID 1, its death
  makes the kernel SIGKILL every verifier, so none can outlive it; it exits when the
  supervisor's control socket closes.
* **verifier child**, one ``fork`` per verifier (nothing is shared from one verifier to
  the next: fresh address space, fresh tmpfs, its own uid): its own tmpfs at
  ``/jobs/N`` (``sandbox_fsize`` bytes, 512 inodes — "filling the disk" fills this),
  every inherited descriptor closed except its own two pipe ends, rlimits, all groups
  dropped and ``setresuid``/``setresgid`` to a uid no other living verifier has (so
  ``kill``, ``/proc`` and ``ptrace`` of siblings are refused by plain DAC and
  ``RLIMIT_NPROC`` binds), ``no_new_privs``, a Landlock domain of its own, the seccomp
  filter, and last the audit hook.  Then ``evaluate(response)``.

Control protocol (``SOCK_SEQPACKET``): the supervisor sends one JSON header per verifier
with two descriptors attached — the read end of an input pipe (the child reads the
source and response from it) and the write end of a verdict pipe.  Both pipes are
created by the supervisor for that one verifier, so a verifier can only ever write its
own verdict.  The child writes one JSON line ``[passed, reason]``; after reaping it the
zygote appends ``\\n{"status": …}`` (exit code, signal, timeout), which is therefore
always the last line.  The zygote kills a child at its deadline (SIGKILL).
"""

from __future__ import annotations

import collections
import errno
import gc
import json
import os
import random
import resource
import select
import signal
import socket
import sys
import sysconfig
import tempfile
import time

if __package__:
    from . import _child, _oslayer
else:  # loaded by path in the zygote process
    import _child  # type: ignore[no-redef]
    import _oslayer  # type: ignore[no-redef]

NAMESPACES = (_oslayer.CLONE_NEWNS | _oslayer.CLONE_NEWNET | _oslayer.CLONE_NEWPID
              | _oslayer.CLONE_NEWIPC | _oslayer.CLONE_NEWUTS)  # fmt: skip
#: Most verifier children alive at once; more jobs wait in a queue.
MAX_RUNNING = 32
#: Size of the uid range verifier children take their uid from.
UID_RANGE = 1024
EXIT_VIOLATION = 3
EXIT_SETUP = 4
#: Modules the zygote imported for itself, hidden from verifiers.
_HIDDEN_MODULES = frozenset({"ctypes", "_ctypes", "_oslayer", "_zygote"})


def _send(ctl: socket.socket, message: dict) -> None:
    ctl.send(json.dumps(message).encode())


def boot(ctl_fd: int, mountpoint: str) -> None:
    """Entry point of the process the supervisor starts; never returns."""
    ctl = socket.socket(fileno=ctl_fd)
    try:
        _oslayer.check_platform()
        _oslayer.unshare(NAMESPACES)
        _oslayer.mount(None, "/", None, _oslayer.MS_REC | _oslayer.MS_PRIVATE)
    except OSError as exc:
        _send(ctl, {"error": str(exc)})
        os._exit(2)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _oslayer.prctl(_oslayer.PR_SET_PDEATHSIG, signal.SIGKILL)
            _serve(ctl, mountpoint)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor
            try:
                _send(ctl, {"error": f"{type(exc).__name__}: {exc}"})
            except OSError:
                pass
        finally:
            os._exit(code)
    ctl.close()
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


# ---------------------------------------------------------------- the private root


def python_roots() -> list[str]:
    """Directories verifiers may read: Python's library paths and loaded shared libs.

    Returned spelled as Python uses them, plus their resolved spellings, outermost first
    with nested ones dropped.
    """
    paths = sysconfig.get_paths()
    found = {paths[n] for n in ("stdlib", "platstdlib", "purelib", "platlib")}
    found |= {p for p in sys.path if p.endswith("lib-dynload")}
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/") and ".so" in parts[5]:
                    found.add(os.path.dirname(parts[5].strip()))
    except OSError:
        pass
    found |= {os.path.realpath(p) for p in found}
    existing = sorted(p.rstrip("/") for p in found if os.path.isdir(p))
    roots: list[str] = []
    for p in existing:
        if not any(p == r or p.startswith(r + "/") for r in roots):
            roots.append(p)
    return roots


def _bind_ro(source: str, target: str) -> None:
    _oslayer.mount(source, target, None, _oslayer.MS_BIND)
    _oslayer.mount(None, target, None, _oslayer.MS_REMOUNT | _oslayer.MS_BIND
                   | _oslayer.MS_RDONLY | _oslayer.MS_NOSUID | _oslayer.MS_NODEV)  # fmt: skip


def build_root(mountpoint: str, roots: list[str]) -> None:
    """Make a tmpfs root with ``roots`` bound read-only and a ``/jobs`` tmpfs; pivot into it."""
    ms = _oslayer.MS_NOSUID | _oslayer.MS_NODEV
    _oslayer.mount("tmpfs", mountpoint, "tmpfs", ms, "size=1m,nr_inodes=4096,mode=0755")
    for root in roots:
        target = mountpoint + root
        os.makedirs(target, mode=0o755, exist_ok=True)
        _bind_ro(os.path.realpath(root), target)
    if os.path.isfile("/etc/ld.so.cache"):  # lets the dynamic loader find libraries
        os.makedirs(mountpoint + "/etc", mode=0o755, exist_ok=True)
        open(mountpoint + "/etc/ld.so.cache", "wb").close()
        _bind_ro("/etc/ld.so.cache", mountpoint + "/etc/ld.so.cache")
    os.mkdir(mountpoint + "/jobs", 0o711)
    _oslayer.mount("tmpfs", mountpoint + "/jobs", "tmpfs", ms | _oslayer.MS_NOEXEC,
                   "size=256k,nr_inodes=4096,mode=0711")
    os.mkdir(mountpoint + "/.old", 0o700)
    _oslayer.pivot_root(mountpoint, mountpoint + "/.old")
    os.chdir("/")
    _oslayer.umount("/.old")
    os.rmdir("/.old")
    _oslayer.mount(None, "/", None, _oslayer.MS_REMOUNT | _oslayer.MS_RDONLY | ms)


def pick_uid_base() -> int:
    """A random ``UID_RANGE``-aligned block of uids owned by no one, in [2^30, 2^31)."""
    with open("/proc/self/uid_map") as f:
        extents = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    for _ in range(64):
        base = (1 << 30) + random.randrange((1 << 30) // UID_RANGE - 1) * UID_RANGE
        if any(inside <= base and base + UID_RANGE <= inside + count
               for inside, _, count in extents):  # fmt: skip
            return base
    raise _oslayer.SandboxSetupError(errno.EINVAL, "no unprivileged uid range is mapped")


# ---------------------------------------------------------------- serving


class _Job:
    __slots__ = ("pid", "pidfd", "out_fd", "jobdir", "uid", "deadline", "timed_out")

    def __init__(self, pid: int, pidfd: int, out_fd: int, jobdir: str, uid: int,
                 deadline: float) -> None:
        self.pid, self.pidfd, self.out_fd = pid, pidfd, out_fd
        self.jobdir, self.uid, self.deadline = jobdir, uid, deadline
        self.timed_out = False


class _Server:
    def __init__(self, ctl: socket.socket, roots: list[str], abi: int, uid_base: int,
                 devnull: int, vm_base: int) -> None:
        self.ctl, self.roots, self.abi = ctl, roots, abi
        self.devnull, self.vm_base = devnull, vm_base
        self.free_uids = collections.deque(range(uid_base, uid_base + UID_RANGE))
        self.running: dict[int, _Job] = {}  # pidfd -> job
        self.queue: collections.deque = collections.deque()
        self.seq = 0

    def loop(self) -> None:
        poller = select.poll()
        poller.register(self.ctl, select.POLLIN)
        while True:
            now = time.monotonic()
            deadlines = [j.deadline for j in self.running.values() if not j.timed_out]
            wait = None if not deadlines else max(0.0, min(deadlines) - now)
            for fd, _ in poller.poll(None if wait is None else int(wait * 1000) + 1):
                if fd == self.ctl.fileno():
                    if not self._receive():
                        return
                else:
                    poller.unregister(fd)
                    self._reap(self.running.pop(fd))
            now = time.monotonic()
            for job in self.running.values():
                if not job.timed_out and now >= job.deadline:
                    job.timed_out = True
                    os.kill(job.pid, signal.SIGKILL)
            while self.queue and len(self.running) < MAX_RUNNING:
                job = self._start(*self.queue.popleft())
                if job is not None:
                    poller.register(job.pidfd, select.POLLIN)

    def _receive(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, 1 << 16, 2)
        except OSError:
            return False
        if not data:
            return False
        header = json.loads(data)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        self.queue.append((header, fds[0], fds[1], time.monotonic()))
        return True

    def _start(self, header: dict, in_fd: int, out_fd: int, received: float) -> _Job | None:
        self.seq += 1
        uid = self.free_uids.popleft()
        jobdir = f"/jobs/{self.seq}"
        try:
            os.mkdir(jobdir, 0o700)
            _oslayer.mount("tmpfs", jobdir, "tmpfs", _oslayer.MS_NOSUID | _oslayer.MS_NODEV
                           | _oslayer.MS_NOEXEC, f"size={int(header['fsize'])},"
                           f"nr_inodes=512,mode=0700,uid={uid},gid={uid}")  # fmt: skip
            pid = os.fork()
        except OSError as exc:
            self._finish(out_fd, {"error": f"could not start: {exc}"}, jobdir, uid)
            os.close(in_fd)
            return None
        if pid == 0:
            header["vm_base"] = self.vm_base
            _run_child(header, in_fd, out_fd, jobdir, uid, self.roots, self.abi, self.devnull)
        os.close(in_fd)
        job = _Job(pid, os.pidfd_open(pid), out_fd, jobdir, uid,
                   received + float(header["timeout"]))
        self.running[job.pidfd] = job
        return job

    def _reap(self, job: _Job) -> None:
        _, status = os.waitpid(job.pid, 0)
        os.close(job.pidfd)
        report: dict = {"code": os.waitstatus_to_exitcode(status)}
        if job.timed_out:
            report["timeout"] = True
        self._finish(job.out_fd, report, job.jobdir, job.uid)

    def _finish(self, out_fd: int, report: dict, jobdir: str, uid: int) -> None:
        try:
            os.set_blocking(out_fd, False)
            os.write(out_fd, b"\n" + json.dumps({"status": report}).encode() + b"\n")
        except OSError:
            pass  # the supervisor gave up on this job, or the child filled the pipe
        os.close(out_fd)
        try:
            _oslayer.umount(jobdir)
            os.rmdir(jobdir)
        except OSError:
            pass
        self.free_uids.append(uid)


def _serve(ctl: socket.socket, mountpoint: str) -> None:
    sys.dont_write_bytecode = True
    _child.warm_up()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    abi = _oslayer.landlock_abi()
    if abi < 1:
        raise _oslayer.SandboxSetupError(errno.ENOSYS, "Landlock is not available in this kernel")
    roots = python_roots()
    uid_base = pick_uid_base()
    devnull = os.open("/dev/null", os.O_RDWR)
    # The address-space cap is sandbox_memory on top of the warm interpreter (with slack
    # for the zygote's own growth); /proc is gone once the root is pivoted.
    vm_base = _vm_size() + (64 << 20)
    build_root(mountpoint, roots)
    server = _Server(ctl, roots, abi, uid_base, devnull, vm_base)
    # Children must not copy the warm heap: a garbage collection in a child would touch
    # (and so copy-on-write) every object the zygote holds.
    gc.collect()
    gc.freeze()
    _send(ctl, {"ready": True, "landlock_abi": abi, "roots": roots})
    server.loop()


# ---------------------------------------------------------------- the verifier child


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_all(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ValueError("verifier input exceeds its limit")
        chunks.append(chunk)


def _confine(header: dict, jobdir: str, uid: int, roots: list[str], abi: int) -> None:
    """Everything between fork and the verifier's first instruction (see module doc)."""
    for kind, value in ((resource.RLIMIT_AS, int(header["vm_base"]) + int(header["memory"])),
                        (resource.RLIMIT_CPU, int(header["cpu"])),
                        (resource.RLIMIT_FSIZE, int(header["fsize"])),
                        (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0),
                        (resource.RLIMIT_MEMLOCK, 0), (resource.RLIMIT_NPROC, 16)):  # fmt: skip
        resource.setrlimit(kind, (value, value))
    os.chdir(jobdir)
    os.environ.clear()
    os.environ.update({"PATH": "/nonexistent", "HOME": jobdir, "TMPDIR": jobdir,
                       "LANG": "C.UTF-8"})  # fmt: skip
    tempfile.tempdir = jobdir
    ruleset = _oslayer.landlock_ruleset(abi, roots, [jobdir])
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _oslayer.prctl(_oslayer.PR_SET_NO_NEW_PRIVS, 1)
    _oslayer.prctl(_oslayer.PR_SET_DUMPABLE, 0)
    _oslayer.landlock_restrict_self(ruleset)
    os.close(ruleset)
    _oslayer.seccomp_install()


def _vm_size() -> int:
    """This process's current virtual size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _run_child(header: dict, in_fd: int, out_fd: int, jobdir: str, uid: int,
               roots: list[str], abi: int, devnull: int) -> None:
    """The forked verifier child; never returns."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        lo, hi = sorted((in_fd, out_fd))
        os.closerange(3, lo)
        os.closerange(lo + 1, hi)
        os.closerange(hi + 1, 1 << 16)
        payload = json.loads(_read_all(in_fd, int(header["input_limit"])))
        os.close(in_fd)
        _confine(header, jobdir, uid, roots, abi)
    except BaseException as exc:  # noqa: BLE001 - reported as the verdict
        try:
            _write_all(out_fd, json.dumps([False, f"sandbox setup failed: {exc}"]).encode())
        finally:
            os._exit(EXIT_SETUP)

    def violation(message, _fd=out_fd, _dumps=json.dumps, _write=_write_all, _exit=os._exit):
        try:
            _write(_fd, _dumps([False, "sandbox violation: " + message]).encode() + b"\n")
        finally:
            _exit(EXIT_VIOLATION)

    # The zygote's own ctypes stays loaded; drop it from sys.modules so that a verifier's
    # ``import ctypes`` is a fresh import that the audit hook refuses by name.
    for name in [n for n in sys.modules if n.split(".")[0] in _HIDDEN_MODULES]:
        del sys.modules[name]
    if header.get("hook", True):
        _child.install_audit_hook(jobdir, roots, violation)
    verdict = _child.evaluate_source(payload["source"], payload["response"])
    try:
        _write_all(out_fd, json.dumps(verdict).encode() + b"\n")
    finally:
        os._exit(0)
