"""Per-rank bodies for the distributed data tests (module-level so they pickle)."""

from __future__ import annotations


def shard_with_process_group(num_sft: int, num_pref: int, rows: int, alpha: float, seed: int,
                             steps: int) -> list[dict[str, list[int]]]:
    """Each rank draws its shards; all-gather them over a real gloo group (rank 0 returns)."""
    import torch.distributed as dist

    from uniapl_mcore.data.sampler import MixedBatchSampler

    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        sampler = MixedBatchSampler(num_sft, num_pref, rows, alpha, seed)
        mine = []
        for _ in range(steps):
            shard = sampler.next_batch().shard(rank, world)
            mine.append({"sft": list(shard.sft), "pref": list(shard.pref)})
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        return gathered
    finally:
        dist.destroy_process_group()


def packed_vs_separate_logits(seed: int) -> dict[str, float]:
    """Megatron GPTModel (local attention, CPU): logits of sequences packed into one row with
    the block-diagonal mask vs each sequence run alone with a causal mask."""
    import torch

    from tests._megatron_config import load_run
    from uniapl_mcore.data.packing import PackItem, pack
    from uniapl_mcore.megatron.model import build_trainable_model
    from uniapl_mcore.megatron.schedule import causal_mask
    from uniapl_mcore.runtime.parallel import init_parallel

    cfg = load_run(None, [])
    layout = init_parallel(cfg.parallel, cfg.train.seed)
    try:
        gpt = build_trainable_model(cfg.model, cfg.parallel, cfg.optimizer, layout, 1
                                    ).chunks[0].module
        gpt.eval()
        gen = torch.Generator().manual_seed(seed)
        lengths = [9, 5, 13, 7, 3]
        items = [PackItem(torch.randint(0, cfg.model.vocab_size, (n,), generator=gen).tolist(),
                          [0] * 2 + [1] * (n - 2), key=i) for i, n in enumerate(lengths)]
        batches, _ = pack(items, micro_batch_tokens=40, pad_id=0)
        (mb,) = batches
        worst = 0.0
        with torch.no_grad():
            packed = gpt(mb.tokens, mb.position_ids, mb.attention_mask())
            for key, sl in zip(mb.keys, mb.sequence_slices(), strict=True):
                ids = torch.tensor(items[key].ids[:-1]).unsqueeze(0)
                pos = torch.arange(ids.shape[1]).unsqueeze(0)
                alone = gpt(ids, pos, causal_mask(ids.shape[1]))
                worst = max(worst, float((packed[:, sl] - alone).abs().max()))
        return {"max_abs_diff": worst, "length": mb.length, "num_tokens": mb.num_tokens}
    finally:
        layout.destroy()
