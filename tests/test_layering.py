"""The package import order: a package imports only from layers below its own.

Every ``import`` / ``from ... import`` of ``uniapl_mcore`` (module level or inside a
function) is read with ``ast``; relative imports are resolved against the importing file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "uniapl_mcore"

#: Bottom to top. Packages on one line are siblings: they never import each other.
#: ``rewards`` (the verifiers) sits below ``data``, which checks constraint rows with them.
LAYERS: list[set[str]] = [
    {"__init__"},
    {"config", "log"},
    {"runtime"},
    {"testing"},
    {"models", "rewards"},
    {"losses", "data"},
    {"checkpoint"},  # checks a reward model's tokenizer with data's loader
    {"megatron"},
    {"rollout", "discriminator"},
    {"trainer"},
    {"eval"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """``uniapl_mcore.X[.Y…]`` → ``X`` (a subpackage or a top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``uniapl_mcore`` import in ``path``."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] if not node.module else [base]
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found
            if name == "uniapl_mcore" or name.startswith("uniapl_mcore.")]


def _violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(".".join(path.relative_to(ROOT.parent).with_suffix("").parts))
        assert unit in RANK, f"{path}: package {unit!r} has no layer in tests/test_layering.py"
        for line, module in _imported_modules(path):
            target = _unit(module)
            if target == unit:
                continue
            if target not in RANK or RANK[target] >= RANK[unit]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {unit} imports {module}")
    return bad


def test_packages_import_only_lower_layers():
    assert _violations() == []


def test_lower_packages_never_import_the_trainer():
    lower = [p for p in ROOT.rglob("*.py")
             if RANK[_unit(".".join(p.relative_to(ROOT.parent).with_suffix("").parts))]
             < RANK["trainer"]]
    assert lower, "no package below the trainer found"
    offenders = [f"{p}:{line}" for p in lower for line, m in _imported_modules(p)
                 if _unit(m) == "trainer"]
    assert offenders == []


@pytest.mark.parametrize("source, expected", [
    ("from uniapl_mcore.trainer.loop import Trainer\n", ["uniapl_mcore.trainer.loop"]),
    ("def f():\n    from ..trainer import loop\n", ["uniapl_mcore.trainer"]),
    ("import uniapl_mcore.megatron.model as m\n", ["uniapl_mcore.megatron.model"]),
    ("from . import schedule\n", ["uniapl_mcore.data.schedule"]),
])
def test_import_reader_resolves_absolute_relative_and_lazy_imports(tmp_path, source,
                                                                   expected, monkeypatch):
    fake_root = tmp_path / "uniapl_mcore"
    (fake_root / "data").mkdir(parents=True)
    path = fake_root / "data" / "mod.py"
    path.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    assert [name for _, name in _imported_modules(path)] == expected
