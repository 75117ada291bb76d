# ruff: noqa: E501  (verifier sources are kept one per line)
"""Hostile code verifiers yield 0 with a reason and never stall (bounded timeouts)."""

from __future__ import annotations

import os
import time

import pytest

from uniapl_mcore.rewards.config import RewardConfig
from uniapl_mcore.rewards.sandbox import run_code_verifiers

CFG = RewardConfig(code_verifiers_enabled=True, sandbox_timeout_s=2.0, sandbox_memory_mb=256)
RESPONSE = "hello world, this is an english response"

GOOD = "def evaluate(response):\n    return 'hello' in response\n"

HOSTILE = {
    "infinite_loop": ("def evaluate(response):\n    while True:\n        pass\n", "timeout"),
    "sleep": ("import time\ndef evaluate(response):\n    time.sleep(60)\n", "timeout"),
    "fork_bomb": (
        "import os\ndef evaluate(response):\n    while True:\n        os.fork()\n",
        "os.fork",
    ),
    "os_system": (
        "import os\ndef evaluate(response):\n    os.system('touch /tmp/uniapl_pwned')\n    return True\n",
        "os.system",
    ),
    "os_system_caught": (
        "import os\ndef evaluate(response):\n    try:\n        os.system('true')\n"
        "    except Exception:\n        pass\n    return True\n",
        "os.system",
    ),
    "subprocess": (
        "import subprocess\ndef evaluate(response):\n    subprocess.run(['true'])\n    return True\n",
        "subprocess",
    ),
    "huge_allocation": (
        "def evaluate(response):\n    x = bytearray(10**10)\n    return True\n",
        "MemoryError",
    ),
    "read_file": (
        "def evaluate(response):\n    return bool(open('/etc/passwd').read())\n",
        "reading outside",
    ),
    "write_file": (
        "def evaluate(response):\n    open('/tmp/uniapl_evil.txt', 'w').write('x')\n    return True\n",
        "writing outside",
    ),
    "network": (
        "import socket\ndef evaluate(response):\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "    return True\n",
        "socket",
    ),
    "ctypes": ("import ctypes\ndef evaluate(response):\n    return True\n", "ctypes"),
    "tamper_hook": (
        "import gc\ndef evaluate(response):\n    gc.get_objects()\n    return True\n",
        "gc.get_objects",
    ),
    "sys_exit": ("import sys\ndef evaluate(response):\n    sys.exit(0)\n", "SystemExit"),
    "non_bool": ("def evaluate(response):\n    return 1\n", "non-boolean"),
    "no_function": ("x = 1\n", "no evaluate"),
    "syntax_error": ("def evaluate(response)\n    return True\n", "SyntaxError"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_verifier_scores_zero_with_reason(name, caplog):
    source, fragment = HOSTILE[name]
    start = time.monotonic()
    [verdict] = run_code_verifiers([source], RESPONSE, CFG)
    assert time.monotonic() - start < CFG.sandbox_timeout_s + 3
    assert verdict.passed is False
    assert fragment in verdict.reason
    assert "scored 0" in caplog.text


def test_no_side_effects_escape_the_sandbox():
    assert not os.path.exists("/tmp/uniapl_pwned")
    assert not os.path.exists("/tmp/uniapl_evil.txt")


def test_benign_verifiers_pass_and_may_use_their_temp_dir():
    tmp_writer = (
        "import os, tempfile\ndef evaluate(response):\n"
        "    p = os.path.join(tempfile.gettempdir(), 'a.txt')\n"
        "    open(p, 'w').write(response)\n    return open(p).read() == response\n"
    )
    lang = "from langdetect import detect\ndef evaluate(response):\n    return detect(response) == 'en'\n"
    verdicts = run_code_verifiers([GOOD, tmp_writer, lang], RESPONSE, CFG)
    assert [v.passed for v in verdicts] == [True, True, True]


def test_a_timeout_does_not_spill_onto_its_neighbours():
    # Each verifier has its own process: the ones around an infinite loop keep their
    # verdicts, and the response's verifiers share one deadline (they run at once).
    loop = HOSTILE["infinite_loop"][0]
    start = time.monotonic()
    verdicts = run_code_verifiers([GOOD, loop, GOOD, loop], RESPONSE, CFG)
    assert time.monotonic() - start < CFG.sandbox_timeout_s + 1.5
    assert [v.passed for v in verdicts] == [True, False, True, False]
    assert "timeout" in verdicts[1].reason and "timeout" in verdicts[3].reason


def test_disabled_by_default():
    with pytest.raises(RuntimeError):
        run_code_verifiers([GOOD], RESPONSE, RewardConfig())
