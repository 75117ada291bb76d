"""Sandboxed execution of dataset-provided code verifiers (AutoIF ``evaluate(response)``).

These functions were written by an LLM, so they are treated as hostile.  Each one runs
in its own short-lived process forked from a warm, pre-confined zygote, behind an
operating-system boundary (details and the reasons for each mechanism in
``_zygote.py`` and ``_oslayer.py``):

* no network: a network namespace with no usable interface, seccomp refusing
  ``socket``, Landlock refusing TCP bind/connect;
* its own unprivileged uid/gid (no capabilities, ``no_new_privs``);
* a filesystem view of read-only Python plus a private 16 MiB tmpfs (mount namespace
  and ``pivot_root``, and independently Landlock);
* no process creation (seccomp on ``fork``/``vfork``/``clone``/``execve*``; threads
  are allowed but ``RLIMIT_NPROC`` = 16 caps them, which binds because the uid is not
  root), no signals outside itself (PID namespace, uid, Landlock scoping);
* rlimits on address space, CPU seconds, file size, open files; a wall-clock deadline
  after which it is SIGKILLed;
* its verdict read by the trainer from a pipe made for it alone;
* the old Python audit hook on top, as defence in depth (it names the refused
  operation in the reason).

Any failure — timeout, crash, refused operation, exception, non-boolean return —
gives that verifier a ``False`` verdict and a reason, which is logged.

Why a fork server of our own rather than bubblewrap or nsjail: those are Debian packages
the project's machines do not install, and both exec a new interpreter per run — the
~0.65 s per response this design removes; the kernel features they use (namespaces,
``pivot_root``, seccomp, plus Landlock) are reachable from Python through ``ctypes``.
User namespaces are not used: the trainer runs as root, and real uids (not a one-uid
mapping) are what keep concurrent verifiers apart.

Where the boundary cannot be set up (not root, no Landlock, not Linux x86-64, …) the
first call raises :class:`SandboxUnavailableError` — fail closed — unless
``reward.sandbox_allow_unconfined`` is true: then verifiers run in a fresh ``python -I``
per response behind the audit hook only (``legacy.py``; escapable), with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from uniapl_mcore.rewards.config import RewardConfig
from uniapl_mcore.rewards.sandbox.legacy import run_unconfined
from uniapl_mcore.rewards.sandbox.supervisor import SandboxUnavailableError, run_confined

logger = logging.getLogger(__name__)

__all__ = ["CodeVerdict", "SandboxUnavailableError", "run_code_verifiers"]

_unavailable: SandboxUnavailableError | None = None


@dataclass(frozen=True)
class CodeVerdict:
    """The outcome of one code verifier: pass/fail and, on failure, why."""

    passed: bool
    reason: str = ""


def _run(sources: Sequence[str], response: str, config: RewardConfig,
         audit_hook: bool) -> list[tuple[bool, str]]:
    global _unavailable
    if _unavailable is None:
        try:
            return run_confined(sources, response, config, audit_hook)
        except SandboxUnavailableError as exc:
            _unavailable = exc
            if config.sandbox_allow_unconfined:
                logger.warning("%s; reward.sandbox_allow_unconfined is set, so code verifiers "
                               "run behind the Python audit hook only (NOT a security "
                               "boundary)", exc)
    if not config.sandbox_allow_unconfined:
        raise SandboxUnavailableError(
            f"{_unavailable}. Code verifiers are refused; to run them anyway behind the "
            "Python audit hook only (escapable), set reward.sandbox_allow_unconfined: true")
    return run_unconfined(sources, response, config)


def run_code_verifiers(
    sources: Sequence[str], response: str, config: RewardConfig, *, _audit_hook: bool = True
) -> list[CodeVerdict]:
    """Run each ``evaluate(response)`` source in the sandbox; one verdict per source.

    ``_audit_hook`` is for tests only (False shows the OS boundary holding by itself).
    Raises :class:`SandboxUnavailableError` when the OS boundary cannot be set up and
    ``config.sandbox_allow_unconfined`` is false.
    """
    if not config.code_verifiers_enabled:
        raise RuntimeError("code verifiers are disabled (reward.code_verifiers_enabled)")
    if not sources:
        return []
    out = [CodeVerdict(ok, why) for ok, why in _run(sources, response, config, _audit_hook)]
    for index, v in enumerate(out):
        if v.reason:
            logger.warning("code verifier %d scored 0: %s", index, v.reason)
    return out
