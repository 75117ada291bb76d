"""The data pipeline: unified rows, dataset loaders, chat templating and loss masks, mixed
SFT/preference sampling, sequence packing, and the embedded toy task.

Attributes are imported lazily so that ``uniapl_mcore.data.config`` (imported by the main
config) does not pull in ``datasets``, ``transformers`` or ``torch``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataConfig": "config", "DataSourceConfig": "config", "ToyTaskConfig": "config",
    "Row": "schema", "TeacherResponse": "schema", "DataError": "schema",
    "validate_row": "schema",
    "ADAPTERS": "formats", "adapt": "formats",
    "load_source": "loaders", "RowTable": "loaders", "SourceReport": "loaders",
    "write_jsonl": "loaders",
    "ChatTemplater": "templating", "SFTExample": "templating",
    "TruncationStats": "templating", "answer_text": "templating",
    "MixedBatchSampler": "sampler", "GlobalBatch": "sampler", "RankBatch": "sampler",
    "PackItem": "packing", "PackedMicroBatch": "packing", "PackingStats": "packing",
    "pack": "packing", "first_fit_decreasing": "packing", "padded_batch_stats": "packing",
    "block_causal_mask": "packing",
    "DataBundle": "pipeline", "build_data": "pipeline",
    "build_toy_task": "toy_task", "ToyTaskFiles": "toy_task",
    "train_tiny_tokenizer": "tiny_tokenizer", "build_tiny_tokenizer": "tiny_tokenizer",
    "load_tokenizer": "tiny_tokenizer",
    "conflicting_pairs": "conflicts",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
