"""The unconfined path: one fresh ``python -I`` per response, behind the audit hook only.

This is NOT a security boundary (a verifier can get past an audit hook and, as root,
past ``RLIMIT_NPROC``).  It runs only when the OS sandbox cannot be set up and the user
opted out with ``reward.sandbox_allow_unconfined: true``; ``tools/bench/sandbox.py`` also
measures it as the baseline.  Verdicts are read back from a result file in the
response's temporary directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence

from uniapl_mcore.rewards.config import RewardConfig

_RESULT_FILE = ".verdicts.json"
_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD = f"import sys; sys.path.insert(0, {_HERE!r}); import _child; _child.legacy_main()"


def _read_roots() -> list[str]:
    """Directories the audit hook lets the child read (Python's library paths)."""
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    roots = {sysconfig.get_paths()[n] for n in names}
    roots |= {p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p}
    return sorted(roots)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
    proc.wait()


def _read_verdicts(path: str, limit: int) -> list | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError:
        return None
    if len(raw) > limit:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, list) else None


def _run_child(sources: Sequence[str], response: str, config: RewardConfig,
               tmp: str) -> tuple[list | None, str]:
    """Run the child; returns (raw verdict list or None, failure reason)."""
    payload = json.dumps({
        "sources": list(sources), "response": response, "tmp": tmp,
        "read_roots": _read_roots(), "result_file": _RESULT_FILE,
        "memory_bytes": config.sandbox_memory_mb * 1024 * 1024,
        "cpu_seconds": max(1, math.ceil(config.sandbox_timeout_s)) + 1,
        "fsize_bytes": 16 * 1024 * 1024,
    }).encode()  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
           "no_proxy": "*", "NO_PROXY": "*"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp, env=env,
        start_new_session=True, close_fds=True,
    )  # fmt: skip
    reason = ""
    try:
        proc.communicate(payload, timeout=config.sandbox_timeout_s)
    except subprocess.TimeoutExpired:
        reason = f"timeout after {config.sandbox_timeout_s:g}s"
        _kill_group(proc)
    except BaseException:
        _kill_group(proc)
        raise
    if not reason and proc.returncode == 3:
        reason = "not run: the sandbox stopped at an earlier verifier's violation"
    elif not reason and proc.returncode != 0:
        rc = proc.returncode
        reason = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    limit = config.sandbox_max_output_kb * 1024
    return _read_verdicts(os.path.join(tmp, _RESULT_FILE), limit), reason


def run_unconfined(sources: Sequence[str], response: str,
                   config: RewardConfig) -> list[tuple[bool, str]]:
    """``[(passed, reason)]`` per source, all run in one audit-hooked interpreter."""
    tmp = tempfile.mkdtemp(prefix="uniapl_sandbox_")
    try:
        raw, reason = _run_child(sources, response, config, tmp)
    except OSError as exc:  # could not even start the interpreter
        raw, reason = None, f"sandbox failed to start: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raw = raw or []
    out = []
    for index in range(len(sources)):
        if index < len(raw) and isinstance(raw[index], list) and len(raw[index]) == 2:
            ok, why = raw[index]
            out.append((ok is True, str(why)))
        else:
            out.append((False, reason or "no verdict produced"))
    return out
