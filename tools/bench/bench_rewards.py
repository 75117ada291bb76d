# ruff: noqa: E501  (the id-mix table keeps one row per line)
"""Throughput of strict+loose IFEval verdicts (responses/s) on an IFEval-like mix.

Builds prompts whose instruction ids follow the google/IFEval id frequencies (spec §2.1)
with 1–3 instructions each, pairs them with synthetic responses of 150–400 words (a
mix of prose, bullets, highlights, sections, titles, JSON and upper/lower-case text),
and times ``evaluate`` (strict and loose, all eight loose variants) across a CPU pool.

    python tools/bench/bench_rewards.py --responses 4000 --workers 2

The baseline, measured in the same run, is one in-process evaluator (wall clock); a
second figure gives its responses per CPU-second (``time.process_time``), which is steadier
than wall-clock time on a shared machine. ``--json FILE`` also writes the figures.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from uniapl_mcore.eval.ifeval import EvalRow, evaluate
from uniapl_mcore.rewards.pool import ChunkPool
from uniapl_mcore.rewards.verdicts import Constraint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, emit, higher_is_better  # noqa: E402

# (id, kwargs factory, weight = count in google/IFEval)
_MIX = [
    ("punctuation:no_comma", lambda r: {}, 66),
    ("length_constraints:number_sentences",
     lambda r: {"num_sentences": r.randint(2, 20), "relation": r.choice(["less than", "at least"])}, 52),
    ("length_constraints:number_words",
     lambda r: {"num_words": r.randint(50, 400), "relation": r.choice(["less than", "at least"])}, 52),
    ("keywords:forbidden_words", lambda r: {"forbidden_words": r.sample(_WORDS, 3)}, 49),
    ("detectable_format:number_highlighted_sections", lambda r: {"num_highlights": r.randint(1, 4)}, 48),
    ("keywords:frequency",
     lambda r: {"keyword": r.choice(_WORDS), "frequency": r.randint(1, 4),
                "relation": r.choice(["less than", "at least"])}, 42),
    ("combination:repeat_prompt", lambda r: {"prompt_to_repeat": "Write an essay about the river"}, 41),
    ("startend:quotation", lambda r: {}, 41),
    ("keywords:existence", lambda r: {"keywords": r.sample(_WORDS, 2)}, 39),
    ("change_case:english_lowercase", lambda r: {}, 39),
    ("detectable_format:title", lambda r: {}, 37),
    ("keywords:letter_frequency",
     lambda r: {"letter": r.choice("aeiost"), "let_frequency": r.randint(3, 30),
                "let_relation": r.choice(["less than", "at least"])}, 33),
    ("detectable_format:number_bullet_lists", lambda r: {"num_bullets": r.randint(1, 5)}, 31),
    ("language:response_language", lambda r: {"language": r.choice(["en", "de", "fr", "es", "it"])}, 31),
    ("detectable_content:number_placeholders", lambda r: {"num_placeholders": r.randint(1, 4)}, 27),
    ("length_constraints:number_paragraphs", lambda r: {"num_paragraphs": r.randint(2, 5)}, 27),
    ("detectable_content:postscript", lambda r: {"postscript_marker": r.choice(["P.S.", "P.P.S"])}, 26),
    ("startend:end_checker", lambda r: {"end_phrase": "Is there anything else I can help with?"}, 26),
    ("change_case:capital_word_frequency",
     lambda r: {"capital_frequency": r.randint(1, 20), "capital_relation": r.choice(["less than", "at least"])}, 25),
    ("change_case:english_capital", lambda r: {}, 25),
    ("combination:two_responses", lambda r: {}, 24),
    ("detectable_format:json_format", lambda r: {}, 17),
    ("detectable_format:multiple_sections",
     lambda r: {"section_spliter": r.choice(["Section", "SECTION"]), "num_sections": r.randint(2, 5)}, 14),
    ("length_constraints:nth_paragraph_first_word",
     lambda r: {"num_paragraphs": 3, "nth_paragraph": r.randint(1, 3), "first_word": r.choice(_WORDS)}, 12),
    ("detectable_format:constrained_response", lambda r: {}, 10),
]  # fmt: skip

_WORDS = ("river city music garden history energy market science travel health "
          "summer winter ocean forest money family school water light story").split()  # fmt: skip


def _sentence(r: random.Random) -> str:
    words = [r.choice(_WORDS) for _ in range(r.randint(6, 16))]
    words[0] = words[0].capitalize()
    return " ".join(words) + r.choice([".", ".", ".", "?", "!", ", indeed."])


def _response(r: random.Random) -> str:
    kind = r.random()
    paragraphs = []
    for _ in range(r.randint(2, 5)):
        paragraphs.append(" ".join(_sentence(r) for _ in range(r.randint(2, 6))))
    if kind < 0.2:
        paragraphs.insert(1, "\n".join(f"* {_sentence(r)}" for _ in range(r.randint(2, 5))))
    elif kind < 0.3:
        paragraphs = [f"SECTION {i + 1}\n{p}" for i, p in enumerate(paragraphs)]
    elif kind < 0.4:
        paragraphs[0] = f"<<{r.choice(_WORDS).title()} Story>>\n*{paragraphs[0]}*"
    elif kind < 0.45:
        return f'```json\n{{"answer": "{_sentence(r)}", "items": [1, 2, 3]}}\n```'
    text = ("\n\n" if r.random() < 0.6 else "\n***\n").join(paragraphs)
    if kind > 0.9:
        text = text.lower()
    elif kind > 0.85:
        text = text.upper()
    if r.random() < 0.2:
        text += "\n\nP.S. " + _sentence(r)
    return text


def build_mix(n: int, seed: int = 0) -> tuple[list[EvalRow], list[str]]:
    """``n`` IFEval-like rows and responses."""
    r = random.Random(seed)
    ids = [m[0] for m in _MIX]
    weights = [m[2] for m in _MIX]
    makers = {m[0]: m[1] for m in _MIX}
    rows, responses = [], []
    for i in range(n):
        k = r.choices([1, 2, 3], weights=[305, 179, 57])[0]
        chosen = r.choices(ids, weights=weights, k=k)
        constraints = tuple(Constraint(c, makers[c](r)) for c in chosen)
        rows.append(EvalRow(key=i, prompt=f"prompt {i}", constraints=constraints))
        responses.append(_response(r))
    return rows, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--responses", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cpu-responses", type=int, default=1000,
        help="responses for the per-CPU-second figure (0 skips it)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    warm_rows, warm_responses = build_mix(200, seed=1)
    with ChunkPool(args.workers, chunk_size=32) as pool:  # long-lived, as in training
        evaluate(warm_rows, warm_responses, pool=pool)  # start workers, load resources
        best = float("inf")
        for rep in range(args.repeats):
            rows, responses = build_mix(args.responses, seed=10 + rep)  # fresh texts: no cache hits
            start = time.perf_counter()
            results = evaluate(rows, responses, pool=pool)
            best = min(best, time.perf_counter() - start)
    assert len(results) == len(rows)
    one = _one_process_per_second(min(args.responses, 1000), args.repeats)
    figures = [higher_is_better(f"rewards.pool_{args.workers}_workers", len(rows) / best,
                                "responses/s", one)]
    if args.cpu_responses:
        figures.append(Figure("rewards.per_cpu_second",
                              _per_cpu_second(args.cpu_responses, args.repeats),
                              "responses/CPU-s"))
    emit(figures, args.json)


def _one_process_per_second(n: int, repeats: int) -> float:
    """The baseline: in-process evaluation, wall-clock responses per second (best of)."""
    evaluate(*build_mix(50, seed=1))  # load resources first, as the pool's warm-up does
    return _best_rate(n, repeats, time.perf_counter, seed=200)


def _per_cpu_second(n: int, repeats: int) -> float:
    """In-process throughput per CPU-second (``time.process_time``)."""
    return _best_rate(n, repeats, time.process_time, seed=100)


def _best_rate(n: int, repeats: int, clock, seed: int) -> float:
    """Responses per ``clock`` second of in-process evaluation of ``n`` fresh responses,
    the best of ``repeats``."""
    best = float("inf")
    for rep in range(repeats):
        rows, responses = build_mix(n, seed=seed + rep)
        start = clock()
        evaluate(rows, responses)
        best = min(best, clock() - start)
    return n / best


if __name__ == "__main__":
    main()
