"""The house's rules, read from the code's imports (ast, nothing is imported or run).

- the layers, bottom to top, each importing only its own layer and the layers below it (`LAYERS`):
      foundation   soe.checks, soe.configfile, soe.fileio, soe.errors, soe.malloc, soe.moved: argument checks, the
                   config-file system (dataclasses validated by pydantic), atomic files, one-line errors, the
                   allocator, the moved studies' message (the standard library, torch, yaml and pydantic only)
      core         soe.core, soe.weightspec: the dense model, the soup (S, bank, φ), domain weights h
      data         soe.data: shards, embedders, text and windows, π and mix(h), the data module
      train        soe.train: the LightningModule, optimizer, checkpoints, the LightningCLI
      specialists  soe.specialists: estimate / refine h, evaluate, export, generate, fine-tune, loading
      merging      soe.merging: merging fine-tuned specialists (under the API, which it does not use)
      api          soe.api: soe.load's Soup and Specialist
      package      soe/__init__.py: soe.load, soe.finetune, soe.merge
      serve        soe.serve: one soup served as specialists over HTTP
      data_prep    the data_prep package: raw text -> token shards (it writes soe.data's format)
      cli          soe.cli, soe/__main__.py: the one ``soe`` command line (``soe prepare`` runs data_prep)
      old names    soe.experiments, soe.merge_experiment: the studies' old names, one line naming the new ones
      experiments  studies.experiments (not installed): generic vs SoE comparisons, ablations, reports
      merging study  studies.merging, the studies/ package itself (not installed): the merging study
  (soe/__init__.py and docs/README.md list the same order);
- every module of soe, data_prep and studies belongs to a stated layer (a new part is placed, not defaulted);
- ``soe`` never imports ``studies`` (the library installs without the lab);
- ``soe`` imports ``data_prep`` only at the front door ``soe prepare`` (soe/cli/pipeline.py);
- no import cycle between modules, counting imports inside functions too (a lazy import cannot hide one);
- no file of ``soe`` or ``studies`` over 300 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("soe", "data_prep", "studies")
# Bottom to top: (layer, the parts in it). A part is soe.<part>, "__init__" (the package), "data_prep" or
# studies.<part> ("studies": the studies/ package itself).
LAYERS = [
    ("foundation", {"checks", "configfile", "fileio", "errors", "malloc", "moved"}),
    ("core", {"core", "weightspec"}),
    ("data", {"data"}),
    ("train", {"train"}),
    ("specialists", {"specialists"}),
    ("merging", {"merging"}),
    ("api", {"api"}),
    ("package", {"__init__"}),
    ("serve", {"serve"}),
    ("data_prep", {"data_prep"}),
    ("cli", {"cli", "__main__"}),
    ("old names", {"experiments", "merge_experiment"}),
    ("experiments", {"studies.experiments"}),
    ("merging study", {"studies", "studies.merging"}),
]
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


def part(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "data_prep":
        return "data_prep"
    if parts[0] == "studies":
        return ".".join(parts[:2])
    return parts[1] if len(parts) > 1 else "__init__"


def layer(module: str) -> int | None:
    """The index of ``module``'s layer in LAYERS (0: the bottom); None when no layer names its part."""
    return next((i for i, (_, parts) in enumerate(LAYERS) if part(module) in parts), None)


def describe(module: str) -> str:
    i = layer(module)
    return f"{module} ({'no layer' if i is None else LAYERS[i][0]})"


# The one arrow from soe into data_prep: ``soe prepare`` hands its arguments to data_prep.prepare's main.
FRONT_DOOR = {("soe.cli.pipeline", "data_prep.prepare")}


def test_soe_never_imports_data_prep():
    bad = sorted(
        f"{m} -> {t}"
        for m, ts in graph().items()
        if m.startswith("soe")
        for t in ts
        if t.startswith("data_prep") and (m, t) not in FRONT_DOOR
    )
    assert not bad, f"soe must not depend on data_prep (only soe prepare calls it): {bad}"


def test_soe_never_imports_studies():
    bad = sorted(
        f"{m} -> {t}" for m, ts in graph().items() if m.startswith("soe") for t in ts if t.startswith("studies")
    )
    assert not bad, f"the library must not depend on the studies (studies/ is not installed): {bad}"


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    loose = sorted(m for m in graph() if layer(m) is None)
    assert not loose, f"modules in no layer of LAYERS (place their part in the layering): {loose}"


def test_parts_import_only_the_parts_below_them():
    bad = []
    for m, targets in graph().items():
        lm = layer(m)
        for t in targets:
            lt = layer(t)
            if lm is not None and lt is not None and lt > lm:
                bad.append(f"{describe(m)} -> {describe(t)}")
    order = " <- ".join(name for name, _ in LAYERS)
    assert not bad, f"imports against the layering {order}: " + "; ".join(sorted(bad))


def test_files_stay_small():
    big = {
        str(p.relative_to(ROOT)): n
        for pkg in ("soe", "studies")
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"split these files (over {MAX_LINES} lines): {big}"


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The walker sees function-level and relative imports (so the rules above are not vacuous)."""
    pkg = tmp_path / "soe"
    (pkg / "core").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("def f():\n    from soe.serve import b\n")
    (pkg / "serve").mkdir()
    (pkg / "serve" / "__init__.py").write_text("")
    (pkg / "serve" / "b.py").write_text("from ..core import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGES", ("soe",))
    g = graph()
    assert g["soe.core.a"] == {"soe.serve.b"} and g["soe.serve.b"] == {"soe.core.a"}
    with pytest.raises(AssertionError, match="cycles"):
        test_no_import_cycles()
    with pytest.raises(AssertionError, match=r"soe.core.a \(core\) -> soe.serve.b \(serve\)"):
        test_parts_import_only_the_parts_below_them()
    (pkg / "newpart").mkdir()
    (pkg / "newpart" / "__init__.py").write_text("")
    with pytest.raises(AssertionError, match="soe.newpart"):
        test_every_module_has_a_layer()
