#!/usr/bin/env python3
"""Sandboxed code-verifier throughput: the OS sandbox against the old fresh-interpreter path.

AutoIF-style ``evaluate(response)`` verifiers (word count, a regex, langdetect), three per
response, scored by ``--callers`` threads at once (as reward workers call it).  The
figure is verifications per second through ``run_code_verifiers`` (warm zygote, one
confined child per verifier); the baseline, measured in the same run, is the unconfined
path (``legacy.run_unconfined``: one fresh ``python -I`` per response, audit hook only),
which is what every response cost before.  Zygote start-up (including its self-test) is
reported separately and not counted in the rate.

    python tools/bench/sandbox.py [--responses 300] [--baseline-responses 12] [--callers 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from uniapl_mcore.rewards.config import RewardConfig
from uniapl_mcore.rewards.sandbox import run_code_verifiers
from uniapl_mcore.rewards.sandbox.legacy import run_unconfined
from uniapl_mcore.rewards.sandbox.supervisor import get_zygote, shutdown

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402

VERIFIERS = [
    "def evaluate(response):\n    return len(response.split()) >= 5\n",
    "import re\ndef evaluate(response):\n"
    "    return re.search(r'\\bhello\\b', response, re.I) is not None\n",
    "from langdetect import detect\ndef evaluate(response):\n"
    "    return detect(response) == 'en'\n",
]
RESPONSES = [
    "Hello there, this is a short answer written in plain English for the benchmark.",
    "Bonjour, ceci est une réponse écrite en français pour le banc d'essai du bac à sable.",
    "hello " * 40 + "and a much longer English response that goes on for a while.",
]


def _rate(score, responses: int, callers: int) -> float:
    """Verifications per second of ``score(response)`` over ``responses`` responses."""
    work = [RESPONSES[i % len(RESPONSES)] for i in range(responses)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=callers) as pool:
        results = list(pool.map(score, work))
    elapsed = time.perf_counter() - start
    assert all(len(r) == len(VERIFIERS) for r in results)
    return responses * len(VERIFIERS) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=300)
    parser.add_argument("--baseline-responses", type=int, default=12)
    parser.add_argument("--callers", type=int, default=2, help="threads scoring at once")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = RewardConfig(code_verifiers_enabled=True)
    start = time.perf_counter()
    get_zygote()
    startup = time.perf_counter() - start

    def confined(response: str) -> list:
        return run_code_verifiers(VERIFIERS, response, config)

    def unconfined(response: str) -> list:
        return run_unconfined(VERIFIERS, response, config)

    # Same verdicts on both paths (a benchmark of wrong answers would be meaningless).
    for response in RESPONSES:
        assert [v.passed for v in confined(response)] == [ok for ok, _ in unconfined(response)]
    rate = _rate(confined, args.responses, args.callers)
    baseline = _rate(unconfined, args.baseline_responses, args.callers)
    shutdown()
    emit([higher_is_better("sandbox.verifications_per_s", rate, "verifications/s", baseline),
          Figure("sandbox.zygote_startup", startup, "s")], args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
