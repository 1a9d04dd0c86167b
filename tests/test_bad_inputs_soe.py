"""Bad inputs of ``soe`` (estimate-weights, instantiate, evaluate, generate): each is refused with one line
naming it and changes no file (the prepared data, the checkpoint, an existing export). Plus the harmful
cases of issue 14: domain weights that overflowed float32 or were booleans, a dense checkpoint labelled
with an h it ignores, ``--overwrite`` deleting a directory soe did not write, and an export killed between
the two renames of its swap."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from bad_inputs import assert_refused
from specialize_helpers import text_env, train_checkpoint

import soe
from soe.cli import main
from soe.core.weights import parse_weights
from soe.specialists.export import SOE_FILE

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """The shared prepared dir and checkpoint, one export (law), and a directory of broken inputs."""
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("bad_soe")
    export = root / "export"
    soe.load(ckpt, data=prepared, device="cpu").instantiate("law", export)
    bad = root / "bad"
    bad.mkdir()
    (bad / "junk.ckpt").write_bytes(b"junk")
    data = ckpt.read_bytes()
    (bad / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (bad / "bool.json").write_text(json.dumps({"law": True}))
    (bad / "null_list.json").write_text(json.dumps([0.5, None, 0.5]))
    (bad / "corrupt.json").write_text('{"law": 0.5,')
    (bad / "file_out").write_text("not a directory")
    shutil.copytree(prepared, bad / "data")  # a prepared directory an --overwrite must never delete
    for name, broken, content in (
        ("meta", SOE_FILE, b"{not json"),
        ("st", "model.safetensors", None),
        ("tok", "tokenizer.json", b"garbage"),
    ):
        d = shutil.copytree(export, bad / f"export_{name}")
        f = d / broken
        f.write_bytes(content if content is not None else f.read_bytes()[:100])
    return SimpleNamespace(prepared=prepared, ckpt=ckpt, export=export, bad=bad, root=root)


@pytest.fixture(autouse=True)
def no_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # URL checkpoints land here, not in ~/.cache


def inst(w, *extra, out=None):
    return ["instantiate", w.ckpt, "--data", w.prepared, "--out", out or w.out / "new", *extra]


def est(w, *extra):
    texts = w.prepared / "specialists" / "legalfood" / "inhouse.jsonl"
    return ["estimate-weights", w.ckpt, "--data", w.prepared, "--texts", texts, "--out", w.out / "w.json", *extra]


def gen(w, *extra):
    return ["generate", w.export, "--prompt", "The court", *extra]


ROWS = {  # id -> (argv of the `soe` entry point, fragment the error line must contain)
    "refine_steps_negative": (lambda w: est(w, "--refine", "--refine-steps", "-3"), "--refine-steps"),
    "refine_windows_zero": (lambda w: est(w, "--refine", "--refine-windows", "0"), "--refine-windows"),
    "refine_lr_zero": (lambda w: est(w, "--refine", "--refine-lr", "0"), "--refine-lr"),
    "refine_method_unknown": (lambda w: est(w, "--refine", "--refine-method", "sgd"), "--refine-method"),
    "holdout_above_one": (lambda w: est(w, "--refine", "--holdout", "1.5"), "--holdout"),
    "estimate_max_docs_zero": (lambda w: est(w, "--max-docs", "0"), "--max-docs"),
    "top_zero": (lambda w: est(w, "--top", "0"), "--top"),
    "min_weight_one": (lambda w: est(w, "--min-weight", "1"), "--min-weight"),
    "texts_missing": (lambda w: est(w)[:5] + [w.bad / "missing.jsonl"] + est(w)[6:], "missing.jsonl"),
    "num_samples_zero": (lambda w: gen(w, "--num-samples", "0"), "--num-samples"),
    "max_tokens_negative": (lambda w: gen(w, "--max-tokens", "-1"), "--max-tokens"),
    "max_tokens_zero": (lambda w: gen(w, "--max-tokens", "0"), "--max-tokens"),
    "temperature_negative": (lambda w: gen(w, "--temperature", "-0.5"), "--temperature"),
    "temperature_nan": (lambda w: gen(w, "--temperature", "nan"), "--temperature"),
    "top_k_negative": (lambda w: gen(w, "--top-k", "-2"), "--top-k"),
    "export_corrupt_tokenizer": (lambda w: ["generate", w.bad / "export_tok"], "tokenizer.json"),
    "windows_zero": (lambda w: ["evaluate", "--specialist", w.export, "--windows", "0"], "--windows"),
    "eval_max_docs_zero": (
        lambda w: ["evaluate", "--specialist", w.export, "--texts", w.bad / "x.jsonl", "--max-docs", "0"],
        "--max-docs",
    ),
    "export_corrupt_metadata": (
        lambda w: [
            "evaluate",
            "--specialist",
            w.bad / "export_meta",
            "--texts",
            w.prepared / "specialists" / "legalfood" / "inhouse.jsonl",
        ],
        SOE_FILE,
    ),
    "export_truncated_safetensors": (
        lambda w: ["evaluate", "--specialist", w.bad / "export_st", "--data", w.prepared],
        "model.safetensors",
    ),
    "weights_boolean": (lambda w: inst(w, "--weights", w.bad / "bool.json"), "'law' is True"),
    "weights_null_in_list": (lambda w: inst(w, "--weights", w.bad / "null_list.json"), "'law' is None"),
    "weights_corrupt_file": (lambda w: inst(w, "--weights", w.bad / "corrupt.json"), "corrupt.json"),
    "ckpt_garbage": (
        lambda w: [
            "instantiate",
            w.bad / "junk.ckpt",
            "--data",
            w.prepared,
            "--out",
            w.out / "new",
            "--weights",
            "law",
        ],
        "junk.ckpt",
    ),
    "ckpt_truncated": (
        lambda w: [
            "instantiate",
            w.bad / "truncated.ckpt",
            "--data",
            w.prepared,
            "--out",
            w.out / "new",
            "--weights",
            "law",
        ],
        "truncated.ckpt",
    ),
    "ckpt_url_scheme": (
        lambda w: ["instantiate", "s3://bucket/last.ckpt", "--out", w.out / "new", "--weights", "law"],
        "unsupported URL scheme",
    ),
    "ckpt_url_missing": (
        lambda w: ["instantiate", (w.bad / "gone.ckpt").as_uri(), "--out", w.out / "new", "--weights", "law"],
        "could not download",
    ),
    "data_not_prepared": (
        lambda w: ["instantiate", w.ckpt, "--data", w.bad, "--out", w.out / "new", "--weights", "law"],
        "meta.json",
    ),
    "overwrite_prepared_data": (
        lambda w: inst(w, "--weights", "law", "--overwrite", out=w.bad / "data"),
        "not written by soe",
    ),
    "overwrite_a_file": (
        lambda w: inst(w, "--weights", "law", "--overwrite", out=w.bad / "file_out"),
        "not a directory",
    ),
    "existing_export": (lambda w: inst(w, "--weights", "space", out=w.export), "already exists"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_refused(w, row, capsys, tmp_path):
    argv, expect = ROWS[row]
    w = SimpleNamespace(**{**vars(w), "out": tmp_path / "outputs"})  # where a wrongly accepted input would write
    assert_refused(capsys, "soe", [str(a) for a in argv(w)], expect, watch=(w.prepared, w.ckpt.parent, w.export, w.bad))
    assert not w.out.exists() and not [p for p in w.root.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- case 1: domain weights


def test_weights_whose_float32_sum_overflows_are_normalised(w, tmp_path, capsys):
    """2e38 + 2e38 is inf in float32: the old check exported h = 0 for these weights."""
    domains = ["cooking", "law", "space"]
    assert parse_weights({"cooking": 2e38, "law": 2e38}, domains).tolist() == [0.5, 0.5, 0.0]
    assert parse_weights([3e38, 0, 3e38], domains).tolist() == [0.5, 0.0, 0.5]
    wf = tmp_path / "big.json"
    wf.write_text(json.dumps({"cooking": 2e38, "law": 2e38}))
    assert main([str(a) for a in inst(w, "--weights", wf, "--format", "soe", out=tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / SOE_FILE).read_text())["weights"] == {"cooking": 0.5, "law": 0.5, "space": 0.0}


@pytest.mark.parametrize("value", [True, False, "0.5", None, [1.0], {"x": 1}])
@pytest.mark.parametrize("form", ["dict", "list", "file"])
def test_weights_that_are_not_numbers_are_refused(tmp_path, value, form):
    domains = ["cooking", "law", "space"]
    spec = {"cooking": 1.0, "law": value} if form != "list" else [1.0, value, 0.0]
    if form == "file":
        (tmp_path / "w.json").write_text(json.dumps(spec))
        spec = str(tmp_path / "w.json")
    with pytest.raises(ValueError, match=r"the weight of 'law' is .*expected a number"):
        parse_weights(spec, domains)


def test_dense_checkpoint_is_never_labelled_with_an_h(w, tmp_path, capsys):
    dense = train_checkpoint(w.prepared, tmp_path / "dense", steps=2, n_experts=0)
    argv = ["instantiate", dense, "--data", w.prepared, "--out", tmp_path / "d", "--format", "soe"]
    assert_refused(
        capsys,
        "soe",
        [str(a) for a in argv + ["--weights", "law"]],
        "dense checkpoint",
        watch=(tmp_path / "dense", w.prepared),
    )
    assert main([str(a) for a in argv + ["--weights", "prior"]]) == 0
    out = capsys.readouterr().out
    assert "dense model" in out and "(weights: " not in out
    meta = json.loads((tmp_path / "d" / SOE_FILE).read_text())
    assert meta["weights"] is None and meta["n_experts"] == 0 and "generic" in meta["dense"]
    assert soe.load(tmp_path / "d").weights is None


# ---------------------------------------------------------------- case 2: --overwrite


def test_overwrite_refuses_a_directory_soe_did_not_write(w, tmp_path, capsys):
    data = shutil.copytree(w.prepared, tmp_path / "fixture")  # `--out data/fixture --overwrite`
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert_refused(
        capsys,
        "soe",
        [str(a) for a in inst(w, "--weights", "law", "--overwrite", out=data)],
        "not written by soe",
        watch=(data,),
    )
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_overwrite_replaces_our_export_or_an_empty_dir_and_cleans_leftovers(w, tmp_path, capsys):
    out = tmp_path / "spec"
    out.mkdir()  # empty: may be replaced
    (tmp_path / ".spec.tmp-dead0001").mkdir()  # an interrupted export's temporary directory
    (tmp_path / ".spec.tmp-dead0001" / "model.safetensors").write_text("half")
    args = [str(a) for a in inst(w, "--weights", "law", "--overwrite", "--format", "soe", out=out)]
    assert main(args) == 0
    assert main(args[:-4] + ["space", "--overwrite", "--format", "soe"]) == 0  # ours: replaced
    assert soe.load(out).weights["space"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["spec"]


CRASH = """
import os, sys
import soe
real = os.replace
def replace(src, dst):  # die like a killed process right after the first rename of the swap
    real(src, dst)
    if ".old-" in os.fspath(dst):
        os._exit(17)
os.replace = replace
soe.load(sys.argv[1], data=sys.argv[2], device="cpu").instantiate("space", sys.argv[3], fmt="soe", overwrite=True)
"""


@pytest.mark.parametrize("then", ["load", "export"])
def test_export_killed_between_the_two_renames_recovers(w, tmp_path, then):
    out = tmp_path / "spec"
    soup = soe.load(w.ckpt, data=w.prepared, device="cpu")
    soup.instantiate("law", out, fmt="soe")
    r = subprocess.run(
        [sys.executable, "-c", CRASH, str(w.ckpt), str(w.prepared), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 17, r.stderr
    assert not out.exists()  # killed between out -> .spec.old-* and .spec.tmp-* -> out
    expected = "law" if then == "load" else "space"
    if then == "load":  # the old model is back, whole
        back = soe.load(out, device="cpu")
    else:  # the next export recovers, then replaces it
        soup.instantiate("space", out, fmt="soe", overwrite=True)
        back = soe.load(out, device="cpu")
    assert back.weights[expected] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["spec"]
    want = soup.specialist(expected).model.state_dict()
    for name, t in back.model.state_dict().items():
        assert torch.equal(t, want[name]), name
