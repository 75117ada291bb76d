"""What runs inside a verifier process: the audit hook and one ``evaluate(response)`` call.

Standard library only (imported by the zygote, outside the package, and by the legacy
``python -I`` child).  The audit hook is **defence in depth only**: it turns the common
escape attempts into a clear reason (``operation not permitted: os.system``), but a
determined verifier can get past it (e.g. by replacing ``posixpath`` helpers); the OS
boundary (``_oslayer``/``_zygote``) is what contains it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

_DENY_PREFIXES = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                  "os.fork", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.",
                  "nntplib.", "telnetlib.", "webbrowser.", "_winapi.", "winreg.", "pty.")
_DENY = frozenset({"os.system", "os.kill", "os.killpg", "os.forkpty", "resource.setrlimit",
                   "resource.prlimit", "sys.addaudithook", "os.setuid", "os.setgid",
                   "os.putenv", "os.unsetenv", "mmap.__new__", "gc.get_objects",
                   "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                   "sys._getframe"})  # fmt: skip
_FROZEN_ATTRS = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__globals__"})
_PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.replace", "os.unlink",
                          "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link",
                          "os.truncate", "os.utime", "os.chdir", "os.listdir", "os.scandir",
                          "shutil.rmtree", "shutil.copyfile", "shutil.copytree",
                          "shutil.move", "shutil.chown", "os.chflags", "os.lchmod",
                          "os.setxattr", "os.removexattr", "glob.glob", "os.walk"})  # fmt: skip
_LIST_EVENTS = ("os.listdir", "os.scandir", "os.walk", "glob.glob")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

#: Modules verifiers commonly use, imported before the sandbox closes the file system.
WARM_MODULES = ("collections", "datetime", "functools", "itertools", "math", "random", "re",
                "string", "unicodedata", "json", "statistics", "textwrap", "difflib",
                "heapq", "bisect", "operator", "copy", "time", "calendar", "fractions",
                "decimal", "hashlib", "base64", "zlib", "io", "csv", "typing", "tempfile")


def warm_up() -> None:
    """Import :data:`WARM_MODULES` and langdetect (with its profiles) if installed."""
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)
    try:
        import langdetect
        from langdetect import DetectorFactory

        DetectorFactory.seed = 0
        langdetect.detect("warm up the language profiles")
    except Exception:  # noqa: BLE001 - langdetect is optional
        pass


def install_audit_hook(tmp: str, read_roots: list[str], violation: Callable[[str], None]) -> None:
    """Refuse process creation, signals, sockets, ctypes and file access outside ``tmp``.

    ``violation(message)`` is called on a refused event and must not return (it reports
    and ends the process), so a verifier cannot catch the refusal and return True.
    """
    real = os.path.realpath
    tmp_dir = real(tmp)
    roots = tuple(real(p) + os.sep for p in read_roots)

    def hook(event, args, _tmp=tmp_dir + os.sep, _tmp_dir=tmp_dir, _roots=roots, _real=real,
             _fsdecode=os.fsdecode, _isinstance=isinstance, _str=str, _bytes=bytes, _int=int,
             _Err=violation):  # fmt: skip
        if event in _DENY or event.startswith(_DENY_PREFIXES):
            _Err("operation not permitted: " + event)
        if event == "object.__setattr__" and len(args) > 1 and args[1] in _FROZEN_ATTRS:
            _Err("changing " + _str(args[1]) + " is not permitted")
        if event == "open":
            path, mode, flags = args
            if path is None:
                return
            if _isinstance(path, _int):
                _Err("opening file descriptors is not permitted")
            p = _real(_fsdecode(path) if _isinstance(path, _bytes) else _str(path))
            if p == _tmp_dir or p.startswith(_tmp):
                return
            writing = (_isinstance(mode, _str) and any(c in mode for c in "wax+")) or (
                _isinstance(flags, _int) and flags & _WRITE_FLAGS)
            if writing:
                _Err("writing outside the sandbox directory: " + p)
            if p.startswith(_roots):
                return
            _Err("reading outside the sandbox directory: " + p)
        if event in _PATH_EVENTS:
            for a in args:
                if _isinstance(a, (_str, _bytes)):
                    p = _real(_fsdecode(a) if _isinstance(a, _bytes) else a)
                    if not (p == _tmp_dir or p.startswith(_tmp) or
                            (event in _LIST_EVENTS and p.startswith(_roots))):
                        _Err(event + " outside the sandbox directory: " + p)

    sys.addaudithook(hook)


def evaluate_source(source: str, response: str) -> list:
    """Run one verifier; returns ``[passed: bool, reason: str]`` (never raises)."""
    try:
        namespace = {"__name__": "verifier", "__builtins__": __builtins__}
        exec(compile(source, "<verifier>", "exec"), namespace)  # noqa: S102 - sandboxed
        fn = namespace.get("evaluate")
        if not callable(fn):
            return [False, "no evaluate(response) function defined"]
        result = fn(response)
        if result is True or result is False:
            return [result, ""]
        if type(result).__name__ == "bool_":
            return [bool(result), ""]
        return [False, "evaluate returned a non-boolean: " + type(result).__name__]
    except BaseException as exc:  # noqa: BLE001 - any failure scores False
        try:
            return [False, type(exc).__name__ + ": " + str(exc)[:300]]
        except BaseException:  # noqa: BLE001 - a hostile __str__
            return [False, "verifier raised an exception"]


def legacy_main() -> None:
    """The fresh-interpreter child of the unconfined path (``sandbox_allow_unconfined``).

    Reads ``{"sources", "response", "tmp", "read_roots", "result_file", limits}`` from
    stdin, lowers its rlimits, installs the audit hook and runs every verifier in this
    one process, rewriting the result file after each (an escapable design kept only as
    the explicit opt-out and as the benchmark's baseline).
    """
    import resource

    cfg = json.loads(sys.stdin.read())
    tmp = os.path.realpath(cfg["tmp"])
    result = os.path.join(tmp, cfg["result_file"])
    for kind, value in ((resource.RLIMIT_AS, cfg["memory_bytes"]),
                        (resource.RLIMIT_CPU, cfg["cpu_seconds"]),
                        (resource.RLIMIT_FSIZE, cfg["fsize_bytes"]),
                        (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0),
                        (resource.RLIMIT_NPROC, 0)):  # fmt: skip
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warm_up()
    verdicts: list = []

    def flush(extra=None, _dumps=json.dumps, _open=os.open, _write=os.write, _close=os.close,
              _flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):  # fmt: skip
        fd = _open(result, _flags, 0o600)
        try:
            _write(fd, _dumps(verdicts + (extra or [])).encode())
        finally:
            _close(fd)

    def violation(message, _flush=flush, _exit=os._exit):
        try:
            _flush([[False, "sandbox violation: " + message]])
        finally:
            _exit(3)

    install_audit_hook(tmp, cfg["read_roots"], violation)
    flush()
    for source in cfg["sources"]:
        verdicts.append(evaluate_source(source, cfg["response"]))
        flush()
