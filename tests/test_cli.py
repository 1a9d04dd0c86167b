"""The `soe` command line: estimate → instantiate → evaluate → generate, and every user error
exits 2 with one clear line on stderr (no traceback, no half-written output)."""

import json
import shutil
import subprocess
import sys

import pytest
from specialize_helpers import strip_data_dir, text_env

from soe.cli import main
from soe.data.shards import load_meta, sha256_file

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return text_env(tmp_path_factory)


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_end_to_end(env, tmp_path, capsys):
    prepared, ckpt = env
    inhouse = prepared / "specialists" / "legalfood" / "inhouse.jsonl"
    w = tmp_path / "weights.json"
    code, out, err = run(
        [
            "estimate-weights",
            ckpt,
            "--data",
            prepared,
            "--texts",
            inhouse,
            "--out",
            w,
            "--refine",
            "--refine-steps",
            "10",
        ],
        capsys,
    )
    assert code == 0, err
    weights = json.loads(w.read_text())
    assert list(weights) == ["cooking", "law", "space"] and max(weights, key=weights.get) == "law"
    assert "top domains" in out and "in-sample loss" in out and "held-out loss" in out

    spec = tmp_path / "spec"
    code, out, err = run(["instantiate", ckpt, "--data", prepared, "--weights", w, "--out", spec], capsys)
    assert code == 0, err
    assert "instantiated Θ(h)" in out and " ms" in out
    assert {p.name for p in spec.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "soe_specialist.json",
    }

    js, md = tmp_path / "eval.json", tmp_path / "eval.md"
    code, out, err = run(
        [
            "evaluate",
            "--specialist",
            spec,
            "--ckpt",
            ckpt,
            "--data",
            prepared,
            "--weights",
            "law",
            "--prior",
            "--json",
            js,
            "--md",
            md,
            "--windows",
            "32",
        ],
        capsys,
    )
    assert code == 0, err
    rows = json.loads(js.read_text())
    assert {r["model"] for r in rows} == {"spec", "soup@law", "soup@prior"}
    assert {r["set"] for r in rows} == {"cooking", "law", "space", "legalfood"}
    assert md.read_text() in out and "bits/byte" in out
    by = {(r["model"], r["set"]): r["loss"] for r in rows}
    assert by[("spec", "law")] != by[("soup@law", "law")]  # the exported h is the estimate, not one-hot

    code, out, err = run(["generate", spec, "--prompt", "The court", "--max-tokens", "8", "--num-samples", "2"], capsys)
    assert code == 0, err
    assert out.count("The court") == 2 and "--- sample 2" in out

    code, out, err = run(
        [
            "generate",
            ckpt,
            "--data",
            prepared,
            "--weights",
            "space",
            "--temperature",
            "0",
            "--max-tokens",
            "5",
            "--prompt",
            "Orbit",
        ],
        capsys,
    )
    assert code == 0 and out.startswith("Orbit")


def test_estimate_from_prepared_dir_and_min_weight(env, tmp_path, capsys):
    prepared, _ = env
    w = tmp_path / "w.json"
    inhouse = prepared / "specialists" / "legalfood" / "inhouse.jsonl"
    code, out, err = run(["estimate-weights", prepared, "--texts", inhouse, "--out", w, "--min-weight", "0.5"], capsys)
    assert code == 0, err
    assert json.loads(w.read_text()) == {"cooking": 0.0, "law": 1.0, "space": 0.0}


def test_instantiate_own_format_and_overwrite(env, tmp_path, capsys):
    prepared, ckpt = env
    out = tmp_path / "own"
    args = ["instantiate", ckpt, "--data", prepared, "--weights", "law=1,space=1", "--out", out, "--format", "soe"]
    assert run(args, capsys)[0] == 0
    assert not (out / "config.json").exists()
    code, _, err = run(args, capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert run(args + ["--overwrite", "--format", "hf"], capsys)[0] == 0
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own"]


def other_tokenizer(prepared, tmp_path):
    other = shutil.copytree(prepared, tmp_path / "other")
    tok = json.loads((other / "tokenizer.json").read_text())
    tok["model"]["vocab"] = dict(reversed(list(tok["model"]["vocab"].items())))
    (other / "tokenizer.json").write_text(json.dumps(tok))
    meta = load_meta(other)
    meta.tokenizer_sha256 = sha256_file(other / "tokenizer.json")
    meta.save(other)
    return other


@pytest.mark.parametrize(
    "case",
    [
        "unknown_domain",
        "unknown_in_file",
        "negative",
        "nan",
        "all_zero",
        "empty_inhouse",
        "unreadable_inhouse",
        "missing_inhouse",
        "other_tokenizer",
        "existing_out",
        "missing_ckpt",
        "not_a_ckpt",
        "no_data",
        "refine_without_ckpt",
        "eval_nothing",
    ],
)
def test_user_errors_exit_2_with_a_clear_message(env, tmp_path, capsys, case):
    prepared, ckpt = env
    out = tmp_path / "out"
    inst = ["instantiate", ckpt, "--data", prepared, "--out", out, "--weights"]
    est = ["estimate-weights", ckpt, "--data", prepared, "--out", tmp_path / "w.json", "--texts"]
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "w_unknown.json").write_text(json.dumps({"law": 0.5, "finance": 0.5}))
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    args, expect = {
        "unknown_domain": (inst + ["finance"], "unknown domain(s) ['finance']"),
        "unknown_in_file": (inst + [tmp_path / "w_unknown.json"], "unknown domain(s) ['finance']"),
        "negative": (inst + ["law=-0.5,space=1"], "negative"),
        "nan": (inst + ["law=nan"], "NaN"),
        "all_zero": (inst + ["law=0,space=0"], "sums to 0"),
        "empty_inhouse": (est + [tmp_path / "empty.jsonl"], "no non-empty texts"),
        "unreadable_inhouse": (est + [tmp_path / "bad.jsonl"], "not UTF-8"),
        "missing_inhouse": (est + [tmp_path / "missing.jsonl"], "not found"),
        "other_tokenizer": (
            ["instantiate", ckpt, "--data", other_tokenizer(prepared, tmp_path), "--out", out, "--weights", "law"],
            "another tokenizer",
        ),
        "existing_out": (inst + ["law"], "already exists"),
        "missing_ckpt": (
            ["instantiate", tmp_path / "nope.ckpt", "--data", prepared, "--out", out, "--weights", "law"],
            "not found",
        ),
        "not_a_ckpt": (
            ["instantiate", tmp_path / "junk.ckpt", "--data", prepared, "--out", out, "--weights", "law"],
            "not a readable checkpoint",
        ),
        "no_data": (["instantiate", tmp_path / "old.ckpt", "--out", out, "--weights", "law"], "--data"),
        "refine_without_ckpt": (
            ["estimate-weights", prepared, "--texts", tmp_path / "empty.jsonl", "--refine"],
            "--refine needs a checkpoint",
        ),
        "eval_nothing": (["evaluate", "--data", prepared], "nothing to evaluate"),
    }[case]
    if case == "no_data":  # a checkpoint that does not record its data directory
        strip_data_dir(ckpt, tmp_path / "old.ckpt")
    if case == "existing_out":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    code, stdout, err = run(args, capsys)
    assert code == 2, (stdout, err)
    assert err.startswith("soe: error: ") and expect in err and "Traceback" not in err, err
    if case == "no_data":  # a checkpoint that does not record its data directory
        strip_data_dir(ckpt, tmp_path / "old.ckpt")
    if case == "existing_out":
        assert [p.name for p in out.iterdir()] == ["mine.txt"]
    else:
        assert not out.exists()  # nothing half-written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_module_entry_point_exits_nonzero_without_traceback(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "soe",
            "instantiate",
            str(tmp_path / "nope.ckpt"),
            "--weights",
            "law",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "soe: error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "soe", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "estimate-weights" in r.stdout and "instantiate" in r.stdout


def test_checkpoint_from_a_url_is_downloaded_once_into_the_hub_cache(env, tmp_path, capsys, monkeypatch):
    prepared, ckpt = env
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    out = tmp_path / "spec"
    code, stdout, err = run(
        ["instantiate", ckpt.as_uri(), "--data", prepared, "--weights", "law", "--out", out, "--format", "soe"], capsys
    )
    assert code == 0, err
    cached = list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("-last.ckpt") and cached[0].read_bytes() == ckpt.read_bytes()
    assert json.loads((out / "soe_specialist.json").read_text())["checkpoint"] == ckpt.as_uri()
