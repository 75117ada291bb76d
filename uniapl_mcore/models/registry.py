"""Architecture name (HF ``config.json`` ``architectures[0]``) → model bundle."""

from __future__ import annotations

from typing import Protocol

from uniapl_mcore.config import ConfigError
from uniapl_mcore.models.config import ModelConfig
from uniapl_mcore.models.hf_config import HFConfig
from uniapl_mcore.models.internlm2 import INTERNLM2
from uniapl_mcore.models.mapping import AttentionShape, TensorRule
from uniapl_mcore.models.qwen3 import LLAMA, QWEN2, QWEN3, QWEN3_MOE


class ModelBundle(Protocol):
    """What a converter needs from an architecture."""

    name: str
    architectures: tuple[str, ...]

    def model_config(self, hf: HFConfig) -> ModelConfig: ...

    def tensor_rules(self, model: ModelConfig) -> list[TensorRule]: ...

    def hf_shapes(self, model: ModelConfig) -> dict[str, tuple[int, ...]]: ...

    def attention_shape(self, model: ModelConfig) -> AttentionShape: ...


BUNDLES: tuple[ModelBundle, ...] = (QWEN3, QWEN3_MOE, QWEN2, LLAMA, INTERNLM2)


def bundle_for(architecture: str, source: str = "config.json") -> ModelBundle:
    """The bundle that converts ``architecture``; an unknown one is a one-line error."""
    for bundle in BUNDLES:
        if architecture in bundle.architectures:
            return bundle
    supported = sorted(a for b in BUNDLES for a in b.architectures)
    raise ConfigError("architectures", f"unknown architecture {architecture!r} in {source} "
                                       f"(supported: {', '.join(supported)})")
