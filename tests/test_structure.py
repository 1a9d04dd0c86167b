"""The house's rules, read from the code's imports (ast, nothing is imported or run).

- ``soe`` never imports ``data_prep`` (data preparation depends on the library, never the reverse), except
  the front door ``soe prepare`` (soe/cli/pipeline.py), which runs data_prep.prepare's main;
- no import cycle between modules, counting imports inside functions too (a lazy import cannot hide one);
- ``soe``'s parts import only the parts before them: core ← data ← train ← specialists ← experiments ←
  api / cli (soe/__init__.py lists the same order);
- no file of ``soe`` over 300 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("soe", "data_prep")
LAYERS = {"errors": 0, "fileio": 0, "malloc": 0, "checks": 0, "weightspec": 0, "core": 0, "data": 1, "train": 2, "specialists": 3, "experiments": 4}  # the rest of soe: 5
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of this repository that ``name`` imports anywhere in its file (top level or in functions)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "soe":
        return None
    return LAYERS.get(parts[1], 5) if len(parts) > 1 else 5


# The one arrow from soe into data_prep: ``soe prepare`` hands its arguments to data_prep.prepare's main.
FRONT_DOOR = {("soe.cli.pipeline", "data_prep.prepare")}


def test_soe_never_imports_data_prep():
    bad = sorted(f"{m} -> {t}" for m, ts in graph().items() if m.startswith("soe") for t in ts
                 if t.startswith("data_prep") and (m, t) not in FRONT_DOOR)
    assert not bad, f"soe must not depend on data_prep (only soe prepare calls it): {bad}"


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_parts_import_only_the_parts_before_them():
    bad = []
    for m, targets in graph().items():
        lm = layer(m)
        if lm is None:
            continue
        for t in targets:
            lt = layer(t)
            if t != "soe" and lt is not None and lt > lm:
                bad.append(f"{m} (layer {lm}) -> {t} (layer {lt})")
    assert not bad, "imports against the layering core ← data ← train ← specialists ← experiments: " + "; ".join(bad)


def test_files_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "soe").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"split these files (over {MAX_LINES} lines): {big}"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The walker sees function-level and relative imports (so the rules above are not vacuous)."""
    pkg = tmp_path / "soe"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from soe.experiments import b\n")
    (pkg / "experiments").mkdir()
    (pkg / "experiments" / "__init__.py").write_text("")
    (pkg / "experiments" / "b.py").write_text("from ..core import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("soe",))
    g = graph()
    assert g["soe.core.a"] == {"soe.experiments.b"} and g["soe.experiments.b"] == {"soe.core.a"}
    with pytest.raises(AssertionError, match="cycles"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match="layering"):
        test_parts_import_only_the_parts_before_them()
