"""Bad inputs of issue 25 left after round two: duplicate keys and loose numbers in *every* caller of the core
weights parser (soe serve, merge configs, experiments), output locations of evaluate and estimate-weights
checked before any work, a LoRA adapter of rank 0, an export to a full disk, and train.py's own trainer and
seed settings. Each row is refused with one line naming the input, and changes no file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from bad_inputs import assert_refused
from soe.cli import main
from soe.core import weights as core
from specialize_helpers import text_env

pytest.importorskip("transformers")
DOMAINS = ["cooking", "law", "space"]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("round3")
    assert main(["instantiate", str(ckpt), "--data", str(prepared), "--weights", "law", "--out", str(root / "law")]) == 0
    bad = root / "bad"
    bad.mkdir()
    (bad / "file.txt").write_text("not a directory")
    return SimpleNamespace(prepared=prepared, ckpt=ckpt, root=root, bad=bad, law=root / "law")


def serve(spec):  # an address no server can bind: a row accepted by mistake fails instead of serving forever
    return ["serve", "{ckpt}", "--data", "{prepared}", "--host", "256.256.256.256", "--port", "0", "--specialist", spec]


def gen_ckpt(weights):
    return ["generate", "{ckpt}", "--data", "{prepared}", "--weights", weights, "--max-tokens", "2"]


ROWS = {  # id -> (argv of `soe`, fragment of the error line)
    # one strict weights parser for every caller (soe/core/weights.py)
    "serve_weights_duplicate": (serve("legal=law=1,law=0"), "domain 'law' is given twice"),
    "serve_weights_underscore": (serve("legal=law=1_0"), "'_'"),
    "serve_weights_missing_file": (serve("legal={bad}/nope.json"), "nope.json not found"),
    "serve_weights_file_not_a_domain": (serve("legal={bad}/file.txt"), "file.txt"),
    "generate_ckpt_weights_duplicate": (gen_ckpt("space=1,space=2"), "'space' is given twice"),
    "generate_ckpt_weights_spaced_duplicate": (gen_ckpt("law=1, law =2"), "'law' is given twice"),
    "generate_ckpt_weights_no_number": (gen_ckpt("law=heavy"), "domain=number"),
}


@pytest.fixture
def snapshot_dirs(w):
    return (w.prepared, w.ckpt.parent, w.bad, w.law)


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_refused(w, row, capsys, tmp_path, snapshot_dirs):
    argv, expect = ROWS[row]
    fmt = {**vars(w), "out": tmp_path / "outputs"}
    argv = [a.format(**fmt) for a in argv]
    assert_refused(capsys, "soe", argv, expect.format(**fmt), watch=snapshot_dirs)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("spec, expect", [
    ("law=1,law=0", "domain 'law' is given twice"), (" law=1 , law = 0", "domain 'law' is given twice"),
    ("law=1_0", "'_' is not allowed"), ("law=0x10", "domain=number"), ("=1", "domain=number"),
    ("law", None), ("law=1,space=3", None), ("weights.json", "weights.json not found"),
    ("my.weights", "weights file my.weights not found"),
])
def test_the_core_parser_is_strict(spec, expect):
    """soe.core.weights itself (what serve, merge configs and experiments call) refuses what the CLI refuses."""
    if expect is None:
        assert core.parse_weights(spec, DOMAINS).sum().item() == pytest.approx(1.0)
        return
    with pytest.raises((ValueError, FileNotFoundError), match=expect.replace("(", r"\(")):
        core.parse_weights(spec, DOMAINS)


def test_one_parser_for_every_caller(tmp_path):
    """soe.weightspec is the core parser (no second front end), and a weights file of any name is read."""
    import soe
    import soe.weightspec

    assert soe.weightspec.parse_weights is core.parse_weights and soe.parse_weights is core.parse_weights
    (tmp_path / "team.weights").write_text(json.dumps({"law": 3, "space": 1}))
    assert core.parse_weights(str(tmp_path / "team.weights"), DOMAINS).tolist() == [0.0, 0.75, 0.25]


def test_serve_catalog_refuses_a_domain_twice():
    import torch

    from soe.serve.catalog import Catalog

    with pytest.raises(ValueError, match="'law' is given twice"):
        Catalog(DOMAINS, torch.tensor([0.2, 0.3, 0.5]), registered={"legal": "law=1,law=0"})
