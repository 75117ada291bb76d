# ruff: noqa: E501  (verifier sources are kept readable, one statement per line)
"""A hostile dataset against the OS sandbox: every attack scores False and leaves no trace.

Each attack is a verifier that returns True only if the attack worked, and is run twice:
with the audit hook (the normal configuration) and without it (``_audit_hook=False``),
which shows that the operating-system boundary holds by itself.  After each run the
files, sockets and processes the attack targeted are checked from outside.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest

from uniapl_mcore.rewards.config import RewardConfig
from uniapl_mcore.rewards.sandbox import run_code_verifiers
from uniapl_mcore.rewards.sandbox.supervisor import get_zygote

CFG = RewardConfig(code_verifiers_enabled=True, sandbox_timeout_s=2.0, sandbox_memory_mb=256)
RESPONSE = "hello world, this is an english response"
GOOD = "def evaluate(response):\n    return 'hello' in response\n"
SECRET = "uniapl-canary-secret"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the sandbox holding a canary file the attacks go after."""
    (tmp_path / "canary.txt").write_text(SECRET)
    return tmp_path


def _src(body: str, **values: object) -> str:
    """A verifier ``evaluate`` whose body is ``body`` with ``{name}`` placeholders filled."""
    code = textwrap.dedent(body).format(**{k: repr(v) for k, v in values.items()})
    return "def evaluate(response):\n" + textwrap.indent(code, "    ")


def _run(sources: list[str], hook: bool) -> list:
    return run_code_verifiers(sources, RESPONSE, CFG, _audit_hook=hook)


def _zygote_pid_namespace() -> str:
    """The PID namespace the current zygote's verifiers live in (as ``/proc`` names it)."""
    return os.readlink(f"/proc/{get_zygote().proc.pid}/ns/pid_for_children")


def _sandbox_processes(namespace: str | None = None) -> list[int]:
    """Host PIDs of verifier processes (sandbox uids) in the zygote's PID namespace."""
    namespace = namespace or _zygote_pid_namespace()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        if uid >= 1 << 30:
            pids.append(int(entry))
    return pids


def _assert_contained(verdicts: list, expected: list[bool] | None = None) -> None:
    expected = expected if expected is not None else [False] * len(verdicts)
    assert [v.passed for v in verdicts] == expected, verdicts
    assert _sandbox_processes() == []  # nothing outlives its verifier
    assert not os.path.exists(get_zygote().mountpoint)  # no host-side trace of the root


HOOK = pytest.mark.parametrize("hook", [True, False], ids=["hook", "os_only"])


@HOOK
def test_patched_realpath_cannot_reach_files_outside(outside: Path, hook: bool) -> None:
    canary, new = outside / "canary.txt", outside / "created.txt"
    source = "import os, posixpath\n" + _src("""
        posixpath.realpath = posixpath.abspath = os.path.realpath = os.path.abspath = lambda p, *a, **k: {tmp}
        won = False
        for attempt in (lambda: open({canary}).read() == {secret},
                        lambda: open({new}, 'w').write('x') > 0,
                        lambda: os.remove({canary}) is None,
                        lambda: os.symlink({canary}, 'link') or open('link').read() == {secret},
                        lambda: {secret} in open('/proc/self/root' + {canary}).read()):
            try:
                won = attempt() or won
            except Exception:
                pass
        return won
    """, tmp="/tmp", canary=str(canary), new=str(new), secret=SECRET)
    _assert_contained(_run([source], hook))
    assert canary.read_text() == SECRET
    assert not new.exists()


@HOOK
@pytest.mark.parametrize("attack", ["fork_exec", "os_fork", "os_system", "subprocess", "posix_spawn"])
def test_no_process_can_be_created(outside: Path, hook: bool, attack: str) -> None:
    marker = outside / f"{attack}.marker"
    shell = ["/bin/sh", "-c", f"touch {marker}"]
    bodies = {
        "fork_exec": """
            import _posixsubprocess, os
            r, w = os.pipe()
            pid = _posixsubprocess.fork_exec({shell}, [b'/bin/sh'], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, True, False, -1, None, None, None, -1, None, False)
            return pid > 0
        """,
        "os_fork": """
            import os
            pid = os.fork()
            if pid == 0:
                os.execv('/bin/sh', {shell})
            return True
        """,
        "os_system": "import os\nreturn os.system({cmd}) == 0\n",
        "subprocess": "import subprocess\nreturn subprocess.run({shell}).returncode == 0\n",
        "posix_spawn": "import os\nreturn os.posix_spawn('/bin/sh', {shell}, {{}}) > 0\n",
    }
    source = _src(bodies[attack], shell=shell, cmd=shell[2])
    _assert_contained(_run([source], hook))
    time.sleep(0.2)
    assert not marker.exists()


@HOOK
def test_no_network(outside: Path, hook: bool) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    unix_path = str(outside / "s.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen(1)
    unix.setblocking(False)
    source = "import socket\n" + _src("""
        won = False
        def tcp():
            socket.create_connection(('127.0.0.1', {tcp}), timeout=1).sendall(b'x')
            return True
        def udp():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            return s.sendto(b'x', ('127.0.0.1', {udp})) > 0
        def unix():
            s = socket.socket(socket.AF_UNIX)
            s.connect({unix})
            return True
        def abstract():
            s = socket.socket(socket.AF_UNIX)
            s.connect('\\0uniapl-test')
            return True
        def internet():
            socket.create_connection(('1.1.1.1', 80), timeout=1)
            return True
        for attempt in (tcp, udp, unix, abstract, internet):
            try:
                won = attempt() or won
            except Exception:
                pass
        return won
    """, tcp=tcp.getsockname()[1], udp=udp.getsockname()[1], unix=unix_path)
    try:
        _assert_contained(_run([source], hook))
        for listener in (tcp, unix):
            with pytest.raises(BlockingIOError):
                listener.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(16)
    finally:
        for s in (tcp, udp, unix):
            s.close()


@HOOK
def test_a_verifier_cannot_write_another_verdict(hook: bool) -> None:
    forge = b'[true, ""]\n{"status": {"code": 0}}\n'
    attacker = "import os\n" + _src("""
        for fd in range(1024):
            try:
                os.write(fd, {forge})
            except OSError:
                pass
        for d in ('/jobs', '/proc/self/fd', '/proc/1/fd'):
            try:
                for name in os.listdir(d):
                    open(os.path.join(d, name), 'wb').write({forge})
            except OSError:
                pass
        return False
    """, forge=forge)
    slow_false = "import time\n" + _src("time.sleep(0.5)\nreturn False\n")
    slow_good = "import time\n" + _src("time.sleep(0.5)\nreturn 'hello' in response\n")
    verdicts = _run([slow_good, attacker, slow_false, slow_good], hook)
    _assert_contained(verdicts, [True, False, False, True])
    assert "verdict channel" in verdicts[1].reason or "violation" in verdicts[1].reason


@HOOK
def test_signals_reach_nothing_outside(hook: bool) -> None:
    attacker = "import os, signal\n" + _src("""
        won = False
        for pid in [os.getppid(), -1, 1, {me}] + list(range(2, 64)):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                won = True
            except OSError:
                pass
        try:
            os.killpg(0, signal.SIGKILL)
        except OSError:
            pass
        return won
    """, me=os.getpid())
    slow_good = "import time\n" + _src("time.sleep(0.5)\nreturn 'hello' in response\n")
    verdicts = _run([slow_good, attacker, slow_good], hook)
    _assert_contained(verdicts, [True, False, True])
    assert [v.passed for v in _run([GOOD], hook)] == [True]  # the zygote survived


@HOOK
def test_other_processes_proc_files_are_unreadable(hook: bool) -> None:
    os.environ["UNIAPL_TEST_SECRET"] = SECRET
    try:
        source = "import os\n" + _src("""
            for pid in ({me}, 1, 'self', os.getppid()):
                for name in ('environ', 'cmdline', 'status', 'maps'):
                    try:
                        if open(f'/proc/{{pid}}/{{name}}', 'rb').read():
                            return True
                    except OSError:
                        pass
            return False
        """, me=os.getpid())
        _assert_contained(_run([source], hook))
    finally:
        del os.environ["UNIAPL_TEST_SECRET"]


@HOOK
def test_filling_the_disk_is_bounded(outside: Path, hook: bool) -> None:
    source = "import os, tempfile\n" + _src("""
        written = 0
        for target in (tempfile.gettempdir(), '/', '/jobs', {outside}):
            for i in range(64):
                try:
                    with open(os.path.join(target, f'fill{{i}}'), 'wb') as f:
                        for _ in range(16):
                            written += f.write(b'x' * (1 << 20))
                except OSError:
                    pass
        return written > 20 * (1 << 20)
    """, outside=str(outside))
    _assert_contained(_run([source], hook))
    assert sorted(p.name for p in outside.iterdir()) == ["canary.txt"]


@HOOK
def test_a_sleeper_cannot_stall_the_trainer(hook: bool) -> None:
    sleeper = "import time, signal\n" + _src("""
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except Exception:
            pass
        time.sleep(600)
        return True
    """)
    start = time.monotonic()
    verdicts = _run([sleeper, GOOD, sleeper], hook)
    assert time.monotonic() - start < CFG.sandbox_timeout_s + 1.5
    _assert_contained(verdicts, [False, True, False])
    assert "timeout" in verdicts[0].reason


@HOOK
def test_ctypes_tricks_fail(outside: Path, hook: bool) -> None:
    marker = outside / "ctypes.marker"
    source = "import ctypes, os\n" + _src("""
        libc = ctypes.CDLL(None, use_errno=True)
        won = False
        if libc.syscall(57) > 0:                  # fork
            won = True
        if libc.setuid(0) == 0 or libc.setgid(0) == 0:
            won = True
        if libc.unshare(0x10000000) == 0:         # CLONE_NEWUSER
            won = True
        if libc.syscall(56, 0x11, 0, 0, 0, 0) > 0:   # clone(SIGCHLD) without CLONE_THREAD
            won = True
        if libc.syscall(101, 0, os.getppid(), 0, 0) == 0:  # ptrace(TRACEME-ish)
            won = True
        if libc.mount(b'none', b'/', b'tmpfs', 0, None) == 0:
            won = True
        try:
            os.close(os.open({marker}, os.O_WRONLY | os.O_CREAT))
            won = True
        except OSError:
            pass
        return won
    """, marker=str(marker))
    x32 = "import ctypes\n" + _src("""
        ctypes.CDLL(None).syscall(0x40000000 + 39)   # x32 getpid: the filter kills the process
        return True
    """)
    verdicts = _run([source, x32], hook)
    _assert_contained(verdicts)
    assert not marker.exists()
    if not hook:
        assert "killed by signal 31" in verdicts[1].reason  # SIGSYS


def test_the_boundary_is_real_and_benign_work_still_passes(outside: Path) -> None:
    # Positive controls for the cases above: the same calls that are refused to a
    # verifier do work in the test process, and a benign verifier can use its own
    # temporary directory and the standard library without the audit hook.
    assert (outside / "canary.txt").read_text() == SECRET
    benign = "import json, re, tempfile, os, hashlib\n" + _src("""
        p = os.path.join(tempfile.gettempdir(), 'a.json')
        with open(p, 'w') as f:
            json.dump({{'r': response}}, f)
        return bool(re.search('hello', json.load(open(p))['r'])) and len(hashlib.sha256(b'x').hexdigest()) == 64
    """)
    assert [v.passed for v in _run([benign, GOOD], hook=False)] == [True, True]
    assert [v.passed for v in _run([benign, GOOD], hook=True)] == [True, True]


def test_unavailable_boundary_fails_closed_unless_opted_out(monkeypatch) -> None:
    from uniapl_mcore.rewards import sandbox
    from uniapl_mcore.rewards.sandbox.supervisor import SandboxUnavailableError

    def broken(*args, **kwargs):
        raise SandboxUnavailableError("code-verifier sandbox could not be set up: test")

    monkeypatch.setattr(sandbox, "run_confined", broken)
    monkeypatch.setattr(sandbox, "_unavailable", None)
    with pytest.raises(SandboxUnavailableError, match="sandbox_allow_unconfined"):
        run_code_verifiers([GOOD], RESPONSE, CFG)
    with pytest.raises(SandboxUnavailableError, match="could not be set up: test"):
        run_code_verifiers([GOOD], RESPONSE, CFG)  # stays refused, one clear error
    opted = RewardConfig(code_verifiers_enabled=True, sandbox_timeout_s=5.0,
                         sandbox_allow_unconfined=True)  # fmt: skip
    verdicts = run_code_verifiers([GOOD, "def evaluate(r):\n    return False\n"], RESPONSE, opted)
    assert [v.passed for v in verdicts] == [True, False]


def test_unconfined_key_is_validated() -> None:
    from uniapl_mcore.config import ConfigError, load_config
    from uniapl_mcore.trainer.config import UniaplConfig

    with pytest.raises(ValueError, match="sandbox_allow_unconfined"):
        RewardConfig(sandbox_allow_unconfined="yes")  # type: ignore[arg-type]
    on = load_config(None, ["reward.sandbox_allow_unconfined=true"], cls=UniaplConfig)
    assert on.reward.sandbox_allow_unconfined is True
    assert load_config(None, [], cls=UniaplConfig).reward.sandbox_allow_unconfined is False
    with pytest.raises(ConfigError, match="reward.sandbox_allow_unconfined"):
        load_config(None, ["reward.sandbox_allow_unconfined=3"], cls=UniaplConfig)


def test_without_privileges_fails_closed_with_one_clear_line() -> None:
    # A real attempt without privileges: in a fresh user namespace with no uid mapped the
    # process is "nobody", whose Python holds no capability to create namespaces.
    import subprocess
    import sys

    code = textwrap.dedent("""
        import ctypes
        assert ctypes.CDLL(None).unshare(0x10000000) == 0  # CLONE_NEWUSER, no uid_map
        from uniapl_mcore.rewards.config import RewardConfig
        from uniapl_mcore.rewards.sandbox import run_code_verifiers, SandboxUnavailableError
        try:
            run_code_verifiers(['def evaluate(r):\\n    return True\\n'], 'x', RewardConfig(code_verifiers_enabled=True))
        except SandboxUnavailableError as exc:
            print('REFUSED', exc)
    """)
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": root})  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "could not be set up: unshare(" in lines[0] and "Operation not permitted" in lines[0]
    assert "sandbox_allow_unconfined: true" in lines[0]


def test_signal_to_zygote_from_outside_kills_all_verifiers() -> None:
    # The zygote is PID 1 of its namespace: when it dies, no verifier survives it.
    zygote = get_zygote()
    namespace = _zygote_pid_namespace()
    sleeper = "import time\n" + _src("time.sleep(600)\nreturn True\n")
    import threading

    result: list = []
    thread = threading.Thread(target=lambda: result.extend(_run([sleeper], True)))
    thread.start()
    time.sleep(0.5)
    assert _sandbox_processes(namespace)
    os.kill(zygote.proc.pid, signal.SIGKILL)
    thread.join(timeout=CFG.sandbox_timeout_s + 10)
    assert result and result[0].passed is False
    deadline = time.monotonic() + 5
    while _sandbox_processes(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes(namespace) == []
    assert [v.passed for v in _run([GOOD], True)] == [True]  # a new zygote starts


def test_syscall_numbers_match_the_kernel_headers() -> None:
    from uniapl_mcore.rewards.sandbox import _oslayer

    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if not header.is_file():
        pytest.skip("no x86-64 kernel headers on this machine")
    table = {}
    for line in header.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("__NR_"):
            table[parts[1][5:]] = int(parts[2])
    assert {name: table.get(name) for name in _oslayer.NR} == _oslayer.NR
    assert set(_oslayer.DENIED) <= set(_oslayer.NR)


def test_benign_verdicts_match_the_unconfined_path() -> None:
    # The verdicts (and reasons) of ordinary AutoIF-style verifiers are those of the
    # fresh-interpreter path this sandbox replaces.
    from uniapl_mcore.rewards.sandbox.legacy import run_unconfined

    sources = [
        GOOD,
        "def evaluate(response):\n    return len(response.split()) > 100\n",
        "import re\ndef evaluate(response):\n    return re.fullmatch(r'[a-z ,]+', response) is not None\n",
        "from langdetect import detect\ndef evaluate(response):\n    return detect(response) == 'en'\n",
        "import json, math, string, collections\ndef evaluate(response):\n"
        "    c = collections.Counter(response)\n    return math.isclose(sum(c.values()), len(response)) and json.loads('[1]') == [1]\n",
        "def evaluate(response):\n    return response.count(',') == 1\n",
        "def evaluate(response):\n    raise ValueError('bad constraint')\n",
        "def evaluate(response):\n    return 'yes'\n",
        "def check(response):\n    return True\n",
    ]
    for response in (RESPONSE, "Ceci est une réponse en français, sans aucun doute possible."):
        confined = [(v.passed, v.reason) for v in run_code_verifiers(sources, response, CFG)]
        assert confined == run_unconfined(sources, response, CFG)


@HOOK
def test_nothing_carries_over_to_the_next_verifier(hook: bool) -> None:
    # A verifier that leaves state behind (a module attribute, a builtins entry, a file
    # in its temporary directory) followed by one that looks for it: each starts clean.
    plant = "import tempfile, os, json, builtins\n" + _src("""
        json.planted = True
        builtins.planted = True
        open(os.path.join(tempfile.gettempdir(), 'planted'), 'w').write('x')
        return False
    """)
    look = "import tempfile, os, json, builtins\n" + _src("""
        return (getattr(json, 'planted', False) or hasattr(builtins, 'planted')
                or os.path.exists(os.path.join(tempfile.gettempdir(), 'planted')))
    """)
    for _ in range(3):
        assert [v.passed for v in _run([plant], hook)] == [False]
        _assert_contained(_run([look, look], hook))


@HOOK
def test_flooding_the_verdict_pipe_or_spawning_threads_fails(hook: bool) -> None:
    flood = "import os\n" + _src("""
        for fd in range(3, 16):
            try:
                while True:
                    os.write(fd, b'[true, ""]\\n' * 4096)
            except OSError:
                pass
        return True
    """)
    threads = "import threading, time\n" + _src("""
        started = 0
        for _ in range(64):
            threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
            started += 1
        return started == 64
    """)
    start = time.monotonic()
    verdicts = _run([flood, threads], hook)
    assert time.monotonic() - start < CFG.sandbox_timeout_s + 1.5
    _assert_contained(verdicts)
    if not hook:
        assert "exceeded" in verdicts[0].reason or "timeout" in verdicts[0].reason
        assert "thread" in verdicts[1].reason
