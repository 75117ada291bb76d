"""Direct weight transfer (``rollout.weight_sync.transport: direct``): each pipeline stage's
leader broadcasts its own stage's buckets over a gloo channel straight to the engines, from
TP=2, from PP=2 with uneven stages and from an EP=2 Qwen3-MoE; after each of three
consecutive versions the engines' log-probs of their own samples match the trainer's (fp32)."""

from __future__ import annotations

import pytest

from uniapl_mcore.checkpoint.convert import hf_to_mcore
from uniapl_mcore.rollout.mismatch import mismatch_metrics, pad_logprobs
from uniapl_mcore.testing import run_distributed

from ._bodies import sync_and_compare

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("family", "tp", "pp", "ep", "layers", "engines"), [
    ("qwen3", 2, 1, 1, None, 2),
    ("qwen3", 1, 2, 1, 3, 2),  # uneven stages (1 and 2 layers): two senders
    ("qwen3_moe", 1, 1, 2, None, 1),  # experts split over two ranks, gathered in the stage
], ids=["tp2", "pp2-uneven", "ep2-moe"])
def test_direct_sync_engine_logprobs_match_trainer(ray_cluster, tmp_path, family, tp, pp, ep,
                                                   layers, engines):
    from tests.checkpoint.hf_models import save_tiny

    hf = save_tiny(tmp_path / "hf", family, num_layers=layers)
    mcore = hf_to_mcore(hf, tmp_path / "mcore")
    results = run_distributed(sync_and_compare, tp * pp * ep,
                              args=(str(hf), str(mcore), ray_cluster, tp, engines, 0.02),
                              kwargs={"pp": pp, "ep": ep, "syncs": 3, "transport": "direct"},
                              timeout_s=400)
    found = results[0]
    assert found["refused_before_sync"]  # engines built without weights never serve
    assert found["versions"] == [[v] * engines for v in (1, 2, 3)]
    sizes = {t["bytes"] for t in found["timings"]}
    assert len(sizes) == 1 and sizes.pop() > 0  # every version carries the whole model
    assert all(t["open_s"] > 0 for t in found["timings"][:1])  # channels opened once ...
    assert all("open_s" not in t for t in found["timings"][1:])  # ... and reused
    for version, (engine_rows, trainer_rows) in enumerate(
            zip(found["engine_logprobs"], found["trainer_logprobs"], strict=True), start=1):
        engine, mask = pad_logprobs(engine_rows)
        trainer, _ = pad_logprobs(trainer_rows)
        metrics = mismatch_metrics(engine, trainer, mask)
        print(f"{family} TP={tp} PP={pp} EP={ep} v{version}: {metrics}")
        assert metrics["tokens"] == 8 * 12
        assert metrics["max_abs_diff"] < 1e-4, (version, metrics)
