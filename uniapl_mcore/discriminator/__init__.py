"""The POLAR-format discriminator: input template, scoring service, optional online training.

Names are imported lazily, so reading the config section (``.config``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DiscriminatorClient": "client", "DiscriminatorError": "client",
    "resolve_model_config": "client", "resolve_tokenizer_dir": "client",
    "DiscriminatorConfig": "config",
    "PolarTemplate": "polar_template", "PolarTriple": "polar_template",
    "TemplateError": "polar_template", "flatten_contents": "polar_template",
    "REWARD_SEPARATOR": "polar_template", "REWARD_TOKEN": "polar_template",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
