"""Typed configuration: one dataclass per component, YAML files, dotted command-line overrides.

A run's configuration is a dataclass composed of sections, each a dataclass that lives with
the component it configures (``models.config.ModelConfig``, ``runtime.layout.ParallelConfig``,
``megatron.config.OptimizerConfig``, …; the whole run: ``trainer.config.UniaplConfig``).
Components take only their own section; nothing reads a global config object. This module
holds only the machinery, so every layer can use it.

Loading (:func:`load_config`) goes: YAML file (optional) → ``key.sub=value`` overrides →
strict conversion into dataclasses. Every failure raises :class:`ConfigError` whose one-line
message names the dotted field, e.g. ``train.max_step: unknown key (did you mean
'train.max_steps'?)``. All of it happens before any process group starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line naming the offending field."""

    def __init__(self, field_path: str, message: str) -> None:
        self.field_path = field_path
        self.message = message
        super().__init__(f"{field_path}: {message}" if field_path else message)

    def within(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` put before its field path."""
        path = f"{prefix}.{self.field_path}" if self.field_path else prefix
        return ConfigError(path, self.message)


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``field_name`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(field_name, message)


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into ``("a.b", parsed value)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError("", f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` in a nested dict (creating sections as needed)."""
    for text in overrides:
        key, value = parse_override(text)
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


#: YAML 1.1 words that PyYAML reads as booleans (``progress_bar: off`` is False).
_YAML_TRUE_WORDS = ("on", "yes", "true", "y")
_YAML_FALSE_WORDS = ("off", "no", "false", "n")


def _yaml_bool_word(value: Any, choices: tuple[Any, ...]) -> Any:
    """The choice a YAML boolean was spelt as, when ``choices`` hold exactly one word that
    YAML reads as that boolean (``on``/``off``, ``yes``/``no``); else ``value`` unchanged."""
    if not isinstance(value, bool) or value in choices:
        return value
    words = _YAML_TRUE_WORDS if value else _YAML_FALSE_WORDS
    matches = [c for c in choices if isinstance(c, str) and c.lower() in words]
    return matches[0] if len(matches) == 1 else value


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; only int→float and "3e-4"→float convert."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        candidates = [option for option in options if option is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own error, with its own (deeper) path
            return _convert(value, candidates[0], path)
        for option in candidates:
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        value = _yaml_bool_word(value, choices)
        if value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(map(repr, choices))}; "
                                    f"got {value!r}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a section (mapping), got {value!r}")
        return build_dataclass(tp, value, path)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(path, f"expected float, got str {value!r}") from None
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(path, f"expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(path, f"expected int, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(path, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _over_section_default(f: dataclasses.Field, value: dict[str, Any]) -> dict[str, Any]:
    """A section given partially keeps the *containing* class's defaults for the rest (a
    config whose ``model`` default is a tiny policy stays that policy when one field of
    ``model`` is overridden), not the section class's own defaults."""
    if f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return value
    default = f.default_factory()  # type: ignore[misc]
    if not dataclasses.is_dataclass(default):
        return value
    return _deep_merge(dataclasses.asdict(default), value)


def _section_error(err: ConfigError, prefix: str) -> ConfigError:
    """``err`` of the section at ``prefix``, its path made whole. A sub-section that names its
    fields relative to its parent (``rollout``'s ``weight_sync.``, ``vllm.``, ``sampling.``)
    is not named twice (``rollout.vllm.max_model_len``, not ``rollout.vllm.vllm.…``)."""
    if not prefix:
        return err
    parent, _, name = prefix.rpartition(".")
    if err.field_path.startswith(f"{name}."):
        return err.within(parent) if parent else err
    return err.within(prefix)


def build_dataclass(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Strictly build dataclass ``cls`` from a mapping; errors name the dotted field.

    A key that is no field is an error; when the class's ``REMOVED_KEYS`` class attribute
    (``{name: what to do instead}``) lists it, the error says why it went. A value listed in
    ``REMOVED_VALUES`` (``{field: {value: reason}}``) is refused with its reason."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = list(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields and isinstance(value, dict):
            value = _over_section_default(fields[key], value)
        path = f"{prefix}.{key}" if prefix else str(key)
        removed = getattr(cls, "REMOVED_KEYS", {})
        if key not in names and key in removed:
            raise ConfigError(path, f"removed: {removed[key]}")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close \
                else f" (valid keys: {', '.join(names)})"
            raise ConfigError(path, f"unknown key{hint}")
        refused = getattr(cls, "REMOVED_VALUES", {}).get(key, {})
        if isinstance(value, str) and value in refused:
            raise ConfigError(path, f"{value!r} is not available: {refused[value]}")
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise _section_error(err, prefix) from None
    except ValueError as err:  # sections that validate with plain ValueError
        raise ConfigError(prefix, str(err)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                cls: type[T]) -> T:
    """Load ``cls`` (a config dataclass) from an optional YAML file plus ``key.sub=value``
    overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError("", f"cannot read config file {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError("", f"{path}{where}: invalid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("", f"{path}: top level must be a mapping of sections")
        data = loaded or {}
    apply_overrides(data, list(overrides or []))
    try:
        return build_dataclass(cls, data)
    except ConfigError as err:
        if path is not None:
            raise ConfigError(err.field_path, f"{err.message} [in {path}]") from None
        raise


def dump_config(config: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (used to record each run's resolved config)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
