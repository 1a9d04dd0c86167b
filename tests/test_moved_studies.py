"""The studies left the installed package (issue 28): ``pip install .`` installs ``soe`` alone, and the old
``python -m soe.experiments…`` / ``soe.merge_experiment`` print one line naming their new command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "old, new",
    [
        ("soe.experiments", "studies.experiments"),
        ("soe.experiments.ablate", "studies.experiments.ablate"),
        ("soe.experiments.search", "studies.experiments.search"),
        ("soe.merge_experiment", "studies.merging"),
    ],
)
def test_old_entry_point_names_its_replacement(old, new, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", old, "--config", "experiments/tiny.yaml"],
        cwd=tmp_path,  # outside the checkout: the message must not depend on studies/ being importable
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{old}: error: ") and f"python -m {new}`" in lines[0], lines[0]


def test_importing_an_old_name_says_where_it_went():
    with pytest.raises(ImportError, match="studies.merging"):
        import soe.merge_experiment  # noqa: F401


def test_the_package_is_soe_alone():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(str(ROOT), include=find["include"], exclude=find.get("exclude", ()))
    assert "soe" in found and all(p == "soe" or p.startswith("soe.") for p in found), found
    assert not any(p.startswith(("soe.experiments.", "soe.merge_experiment.")) for p in found), found
