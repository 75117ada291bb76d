"""Pure functions: sampling filters, bucket packing, mismatch metrics, config."""

from __future__ import annotations

import math

import pytest
import torch

from uniapl_mcore.config import ConfigError
from uniapl_mcore.rollout.config import RolloutConfig, SamplingConfig, WeightSyncConfig
from uniapl_mcore.rollout.mismatch import mismatch_metrics, pad_logprobs
from uniapl_mcore.rollout.sampling import filter_logits
from uniapl_mcore.rollout.transport import pack_bucket, unpack_bucket


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = filter_logits(logits, torch.ones(2), torch.tensor([2, 0]), torch.tensor([1.0, 0.7]))
    kept = torch.isfinite(out)
    assert kept[0].tolist() == [True, True, False, False]  # top-2
    assert kept[1].tolist() == [True, True, False, False]  # 0.5 + 0.3 >= 0.7
    one = filter_logits(logits[:1], torch.ones(1), torch.tensor([0]), torch.tensor([0.01]))
    assert torch.isfinite(one).sum() == 1


def test_pack_round_trip_with_mixed_dtypes():
    named = [("a", torch.randn(3, 5)), ("b", torch.randn(7).bfloat16()),
             ("c", torch.arange(4)), ("d", torch.zeros(0))]
    packed = pack_bucket(named)
    packed.buffer.setflags(write=False)  # as Ray hands it over
    for (name, ref), (got_name, got) in zip(named, unpack_bucket(packed), strict=True):
        assert name == got_name and got.dtype == ref.dtype and torch.equal(got, ref)
    assert all(m.offset % 64 == 0 for m in packed.metas)


def test_flat_bucket_packs_without_copying():
    from uniapl_mcore.checkpoint.live_export import FlatBucket

    buffer = torch.zeros(256, dtype=torch.uint8)
    a = buffer[0:24].view(torch.float32).view(2, 3)
    b = buffer[64:72].view(torch.bfloat16)
    a.copy_(torch.arange(6.0).view(2, 3))
    b.copy_(torch.tensor([1.5, -2.0, 3.0, 0.25]))
    packed = pack_bucket(FlatBucket([("a", a), ("b", b)], buffer=buffer))
    assert packed.buffer.ctypes.data == buffer.data_ptr()  # shared, not copied
    assert [m.offset for m in packed.metas] == [0, 64]
    out = dict(unpack_bucket(packed))
    assert torch.equal(out["a"], a) and torch.equal(out["b"], b)
    odd = FlatBucket([("a", buffer[8:32].view(torch.float32))], buffer=buffer)
    assert pack_bucket(odd).buffer.ctypes.data != buffer.data_ptr()  # unaligned: copied


def test_mismatch_metrics():
    rollout = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    trainer = torch.tensor([[-1.1, -1.8, 9.0], [-0.5, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    m = mismatch_metrics(rollout, trainer, mask)
    assert m["tokens"] == 3
    assert m["mean_abs_diff"] == pytest.approx(0.3 / 3)
    assert m["max_abs_diff"] == pytest.approx(0.2)
    assert m["kl_k1"] == pytest.approx(-0.1 / 3)
    k3 = sum(math.exp(x) - 1 - x for x in (-0.1, 0.2, 0.0)) / 3
    assert m["kl_k3"] == pytest.approx(k3)
    same = mismatch_metrics(rollout, rollout, mask)
    assert same["mean_abs_diff"] == same["kl_k3"] == 0
    with pytest.raises(ValueError, match="shapes differ"):
        mismatch_metrics(rollout, trainer[:, :2], mask)


def test_pad_logprobs():
    values, mask = pad_logprobs([[-1.0], [-2.0, -3.0]])
    assert values.tolist() == [[-1.0, 0.0], [-2.0, -3.0]]
    assert mask.tolist() == [[True, False], [True, True]]


def test_rollout_config_validation():
    config = RolloutConfig(engine="vllm", engine_tensor_parallel_size=8, num_engines=4)
    assert config.gpus_per_engine == 8
    assert config.sampling.params(4).n == 4
    with pytest.raises(ConfigError, match="^num_engines"):
        RolloutConfig(num_engines=0)
    with pytest.raises(ConfigError, match="^engine_tensor_parallel_size"):
        RolloutConfig(engine_tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="sampling.max_new_tokens"):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(ConfigError, match="weight_sync.bucket_bytes"):
        WeightSyncConfig(bucket_bytes=10)
    with pytest.raises(ConfigError, match="weight_sync.transport: must be 'object_store' or "
                                          "'direct', got 'nccl'"):
        WeightSyncConfig(transport="nccl")  # from a file, the refusal names 'direct'
    with pytest.raises(ConfigError, match="keep_weights_for_restart: 'direct' keeps no copy"):
        WeightSyncConfig(transport="direct", keep_weights_for_restart=True)
