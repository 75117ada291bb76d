"""No silent settings (#15): every field of the run config is read somewhere in the package.

A static walk: for each field of :class:`UniaplConfig`, recursing into nested sections (also
through ``X | None`` and ``list[X]``), some module of ``uniapl_mcore`` must read the
attribute ``.name`` (or ``getattr(obj, "name")``). Validation is not use: reads inside
``__post_init__`` and inside ``check_*`` / ``_check_*`` functions do not count. A field that
nothing reads must be wired in, or removed (and refused, e.g. through a section's
``REMOVED_KEYS``).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path

import uniapl_mcore
from uniapl_mcore.trainer.config import UniaplConfig

PACKAGE = Path(uniapl_mcore.__file__).resolve().parent

#: Fields read only generically (``dataclasses.asdict``, ``to_dict``, ``**section``), each
#: with where it is read. Keep it short: a named read is always better.
READ_GENERICALLY: dict[str, str] = {}

def _sections(annotation: typing.Any) -> list[type]:
    """The dataclasses an annotation holds (``X``, ``X | None``, ``list[X]`` …)."""
    if typing.get_origin(annotation) is not None:
        return [s for arg in typing.get_args(annotation) for s in _sections(arg)]
    return [annotation] if dataclasses.is_dataclass(annotation) else []


def config_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, field name) of every init field of ``cls`` and its nested sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = f"{prefix}{f.name}"
        yield path, f.name
        for section in _sections(hints[f.name]):
            yield from config_fields(section, f"{path}.")


def _is_validation(name: str) -> bool:
    return name == "__post_init__" or name.lstrip("_").startswith("check_")


class _Reads(ast.NodeVisitor):
    """Attribute names read (``x.name``, ``getattr(x, "name")``) outside validation."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if not _is_validation(node.name):
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self.names.add(node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func, args = node.func, node.args
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(args) >= 2 \
                and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
            self.names.add(args[1].value)
        self.generic_visit(node)


def attribute_reads(root: Path) -> set[str]:
    """Every attribute name read in the ``.py`` files under ``root`` (validation excluded)."""
    reads = _Reads()
    for path in sorted(root.rglob("*.py")):
        reads.visit(ast.parse(path.read_text(), filename=str(path)))
    return reads.names


def unread_fields(roots: list[type], reads: set[str],
                  allowed: typing.Collection[str] = ()) -> list[str]:
    """Dotted paths of the fields under ``roots`` whose name is never read."""
    seen: dict[str, str] = {}
    for root in roots:
        seen.update(config_fields(root))
    return [path for path, name in seen.items() if name not in reads and path not in allowed]


def test_every_run_config_field_is_read():
    reads = attribute_reads(PACKAGE)
    unread = unread_fields([UniaplConfig], reads, set(READ_GENERICALLY))
    assert not unread, (f"config fields nothing in uniapl_mcore reads (wire them in, or remove "
                        f"and refuse them): {', '.join(unread)}")


def test_allow_list_names_real_fields():
    """A stale entry would hide a future field of the same path."""
    paths = {path for path, _ in config_fields(UniaplConfig)}
    assert set(READ_GENERICALLY) <= paths


@dataclasses.dataclass
class _Inner:
    used_by_code: int = 0
    zz_nobody_reads_this: int = 0


@dataclasses.dataclass
class _Outer:
    inner: _Inner | None = None
    items: list[_Inner] = dataclasses.field(default_factory=list)
    zz_only_validated: int = 0


THROWAWAY_MODULE = """
class Section:
    def __post_init__(self):
        assert self.zz_only_validated >= 0


def check_sizes(cfg):
    assert cfg.inner.zz_nobody_reads_this >= 0


def use(cfg):
    return cfg.inner, getattr(cfg, "items"), [i.used_by_code for i in cfg.items]
"""


def test_walker_catches_an_unread_field(tmp_path):
    """The walk sees sections nested through ``X | None`` and ``list[X]``, counts
    ``getattr`` reads, and does not count validation as use."""
    (tmp_path / "mod.py").write_text(THROWAWAY_MODULE)
    reads = attribute_reads(tmp_path)
    unread = ["inner.zz_nobody_reads_this", "items.zz_nobody_reads_this", "zz_only_validated"]
    assert unread_fields([_Outer], reads) == unread
    assert unread_fields([_Outer], reads, unread) == []
    (tmp_path / "user.py").write_text("def f(c):\n    return c.zz_nobody_reads_this\n")
    assert unread_fields([_Outer], attribute_reads(tmp_path)) == ["zz_only_validated"]
