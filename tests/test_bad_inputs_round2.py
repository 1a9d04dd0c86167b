"""Bad inputs of issue 25 ("nothing silently wrong, round two") for ``soe``: raw tracebacks (devices, an
incomplete checkpoint, a mistyped config.json, a tokenizer larger than the vocabulary, invalid UTF-8, a
vanishing temperature, overflowing merge weights) and inputs that were accepted silently (duplicate keys,
'1_0', infinite merge weights, a NaN model, a model listed twice, --out equal to an input, ...). Each row
is refused with one line naming the input, and changes no file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from bad_inputs import assert_refused
from specialize_helpers import text_env

from soe.cli import main

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("round2")
    for dom in ("cooking", "law"):
        assert (
            main(["instantiate", str(ckpt), "--data", str(prepared), "--weights", dom, "--out", str(root / dom)]) == 0
        )
    bad = root / "bad"
    bad.mkdir()

    def variant(name: str, edit) -> Path:
        d = shutil.copytree(root / "law", bad / name)
        edit(d)
        return d

    def hf_only(d: Path, **config) -> None:  # a plain Hugging Face directory: config.json is the description
        (d / "soe_specialist.json").unlink()
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **config}))

    variant("eps_string", lambda d: hf_only(d, rms_norm_eps="1e-5"))
    variant("layers_float", lambda d: hf_only(d, num_hidden_layers=2.5))
    variant("vocab_bool", lambda d: hf_only(d, tie_word_embeddings="yes"))

    def big_tokenizer(d: Path) -> None:
        tok = json.loads((d / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        for i in range(400):
            vocab[f"zzextra{i}"] = len(vocab)
        (d / "tokenizer.json").write_text(json.dumps(tok))

    variant("big_tokenizer", big_tokenizer)

    def nan_model(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        st = load_file(str(d / "model.safetensors"))
        name = sorted(st)[0]
        st[name] = torch.full_like(st[name], float("nan"))
        save_file(st, str(d / "model.safetensors"), metadata={"format": "pt"})

    variant("nan_model", nan_model)
    # checkpoints with incomplete or mistyped hyper-parameters
    state = torch.load(ckpt, weights_only=True)
    for name, edit in (
        ("no_domains", lambda hp: hp.pop("domain_names")),
        ("domains_int", lambda hp: hp.__setitem__("domain_names", 3)),
        ("prior_short", lambda hp: hp.__setitem__("prior", [1.0])),
        ("eps_string_ckpt", lambda hp: hp["net"].__setitem__("norm_eps", "1e-5")),
    ):
        s = {**state, "hyper_parameters": json.loads(json.dumps(state["hyper_parameters"]))}
        edit(s["hyper_parameters"])
        torch.save(s, bad / f"{name}.ckpt")
    (bad / "dup.json").write_text('{"law": 1, "law": 0}')
    (bad / "weights.txt").write_text('{"nope": 1}')
    (bad / "short.txt").write_text("pan")
    m = [{"model": str(root / "cooking")}, {"model": str(root / "law")}]

    def merge_cfg(name, text=None, **raw):
        (bad / name).write_text(
            text if text is not None else yaml.safe_dump({"merge_method": "linear", "models": m, **raw})
        )

    merge_cfg("inf_weight.yaml", models=[{**m[0], "parameters": {"weight": float("inf")}}, m[1]])
    merge_cfg("huge_weights.yaml", models=[{**x, "parameters": {"weight": 1e308}} for x in m])
    merge_cfg(
        "inf_lambda.yaml",
        merge_method="task_arithmetic",
        base_model=str(root / "law"),
        parameters={"lambda": float("inf")},
        models=m[:1],
    )
    merge_cfg(
        "overflow_lambda.yaml",
        merge_method="task_arithmetic",
        base_model=str(root / "law"),
        parameters={"lambda": 1e308},
        models=m[:1],
    )
    merge_cfg("ok.yaml")
    merge_cfg("twice.yaml", models=[m[0], m[0]])
    merge_cfg("twice_link.yaml", models=[m[0], {"model": str(root / "cooking") + "/"}])
    merge_cfg("dup_key.yaml", text=f"merge_method: linear\nmerge_method: ties\nmodels: [{root / 'cooking'}]\n")
    merge_cfg(
        "dup_param.yaml",
        text=f"merge_method: linear\nmodels:\n  - model: {root / 'cooking'}\n"
        "    parameters: {weight: 1, weight: 2}\n",
    )
    return SimpleNamespace(prepared=prepared, ckpt=ckpt, root=root, bad=bad, cooking=root / "cooking", law=root / "law")


def gen(*extra, model="{law}"):
    return ["generate", model, "--prompt", "The court", "--max-tokens", "2", *extra]


def inst(*extra, ckpt="{ckpt}"):
    return ["instantiate", ckpt, "--data", "{prepared}", "--out", "{out}/x", *extra]


def mrg(cfg, *extra, out="{out}/m"):
    return ["merge", "--config", "{bad}/" + cfg, "--out", out, *extra]


def ev(spec, *extra):
    return [
        "evaluate",
        "--specialist",
        spec,
        "--texts",
        "{prepared}/specialists/legalfood/inhouse.jsonl",
        "--windows",
        "2",
        *extra,
    ]


ROWS = {  # id -> (argv of `soe`, fragment of the error line)
    # devices: one rule (soe/checks.py)
    "device_cuda_without_cuda": (gen("--device", "cuda"), "--device 'cuda'"),
    "device_cuda_index": (gen("--device", "cuda:7"), "--device 'cuda:7'"),
    "device_unknown": (gen("--device", "tpu9"), "--device 'tpu9'"),
    "device_garbage": (gen("--device", "cpu:x"), "--device 'cpu:x'"),
    "device_instantiate": (inst("--weights", "law", "--device", "tpu9"), "--device 'tpu9'"),
    "device_evaluate": (ev("{law}", "--device", "meta"), "--device 'meta'"),
    # checkpoints whose hyper-parameters are incomplete or mistyped
    "ckpt_without_domain_names": (inst("--weights", "law", ckpt="{bad}/no_domains.ckpt"), "domain_names"),
    "ckpt_domain_names_not_a_list": (inst("--weights", "law", ckpt="{bad}/domains_int.ckpt"), "domain_names=3"),
    "ckpt_prior_short": (inst("--weights", "law", ckpt="{bad}/prior_short.ckpt"), "prior"),
    "ckpt_norm_eps_string": (inst("--weights", "law", ckpt="{bad}/eps_string_ckpt.ckpt"), "norm_eps='1e-5'"),
    # specialist directories whose parts disagree
    "config_eps_string": (gen(model="{bad}/eps_string"), "rms_norm_eps"),
    "config_layers_float": (gen(model="{bad}/layers_float"), "num_hidden_layers"),
    "config_tie_string": (gen(model="{bad}/vocab_bool"), "tie_word_embeddings"),
    "tokenizer_larger_than_vocab": (gen(model="{bad}/big_tokenizer"), "more tokens"),
    "tokenizer_larger_evaluate": (ev("{bad}/big_tokenizer"), "more tokens"),
    # generate
    "prompt_invalid_utf8": (["generate", "{law}", "--prompt", "caf\udce9"], "--prompt"),
    "temperature_subnormal": (gen("--temperature", "1e-45"), "--temperature"),
    "temperature_inf": (gen("--temperature", "inf"), "--temperature"),
    "max_tokens_huge": (gen("--max-tokens", "100000000000"), "--max-tokens"),
    "max_tokens_exponent": (gen("--max-tokens", "1e11"), "--max-tokens"),
    "max_tokens_underscore": (gen("--max-tokens", "1_0"), "--max-tokens"),
    "generate_seed_overflow": (gen("--seed", str(2**64)), "--seed"),
    "generate_seed_negative": (gen("--seed", "-1"), "--seed"),
    "generate_export_with_weights": (gen("--weights", "law"), "--weights"),
    "generate_nan_model": (gen(model="{bad}/nan_model"), "non-finite"),
    # weights
    "weights_file_duplicate_key": (inst("--weights", "{bad}/dup.json"), "appears twice"),
    "weights_inline_duplicate": (inst("--weights", "law=1,law=0"), "twice"),
    "weights_inline_underscore": (inst("--weights", "law=1_0,cooking=1"), "'_'"),
    "weights_inline_empty_name": (inst("--weights", "=1"), "domain=number"),
    "weights_inline_nan": (inst("--weights", "law=nan"), "contains nan"),
    "weights_file_without_json": (inst("--weights", "{bad}/weights.txt"), "weights.txt: unknown domain(s) ['nope']"),
    "weights_file_path_missing": (inst("--weights", "{bad}/nope.txt"), "weights file"),
    "weights_missing_file": (inst("--weights", "{bad}/nope.json"), "nope.json not found"),
    "windows_underscore": (ev("{law}", "--windows", "1_0"), "--windows"),
    "top_k_underscore": (gen("--top-k", "5_0"), "--top-k"),
    # evaluate
    "evaluate_nan_model": (ev("{bad}/nan_model"), "non-finite"),
    "evaluate_sets_empty": (["evaluate", "--specialist", "{law}", "--data", "{prepared}", "--sets", ",,,"], "--sets"),
    "evaluate_sets_unknown": (["evaluate", "--specialist", "{law}", "--data", "{prepared}", "--sets", "vall"], "vall"),
    "evaluate_json_in_a_file": (ev("{law}", "--json", "{bad}/short.txt/x.json"), "short.txt"),
    "evaluate_too_few_tokens": (
        ["evaluate", "--specialist", "{law}", "--texts", "{bad}/short.txt"],
        "evaluation set short: 4 tokens",
    ),
    # merge
    "merge_weight_inf": (mrg("inf_weight.yaml"), "not finite"),
    "merge_weights_overflow": (mrg("huge_weights.yaml"), "sum to inf"),
    "merge_lambda_inf": (mrg("inf_lambda.yaml"), "parameters.lambda"),
    "merge_lambda_overflow": (mrg("overflow_lambda.yaml"), "non-finite"),
    "merge_model_twice": (mrg("twice.yaml"), "models[0] again"),
    "merge_model_twice_spelled_otherwise": (mrg("twice_link.yaml"), "again"),
    "merge_duplicate_key": (mrg("dup_key.yaml"), "'merge_method' appears twice"),
    "merge_duplicate_param": (mrg("dup_param.yaml"), "'weight' appears twice"),
    "merge_out_is_an_input": (
        mrg("ok.yaml", "--overwrite", out="{cooking}"),
        "is (or contains, or is inside) models[0]",
    ),
    "merge_out_contains_an_input": (mrg("ok.yaml", "--overwrite", out="{root}"), "models[0]"),
    "merge_out_parent_is_a_file": (mrg("ok.yaml", out="{bad}/short.txt/m"), "short.txt is a file"),
}


@pytest.fixture
def snapshot_dirs(w):
    return (w.prepared, w.ckpt.parent, w.bad, w.cooking, w.law)


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_refused(w, row, capsys, tmp_path, snapshot_dirs):
    argv, expect = ROWS[row]
    fmt = {**vars(w), "out": tmp_path / "outputs"}
    argv = [a.format(**fmt) for a in argv]
    assert_refused(capsys, "soe", argv, expect.format(**fmt), watch=snapshot_dirs)
    assert not (tmp_path / "outputs").exists()


def test_what_the_rules_still_accept(w, tmp_path, capsys):
    """The boundaries are not tighter than they say: a weights file named .txt, inline pairs with spaces, the
    largest seed, the smallest temperature, greedy decoding, a short text with a warning naming its tokens."""
    (tmp_path / "w.txt").write_text('{"law": 3, "cooking": 1}')
    base = ["instantiate", str(w.ckpt), "--data", str(w.prepared), "--format", "soe"]
    assert main(base + ["--weights", str(tmp_path / "w.txt"), "--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--weights", " law = 0.75 , cooking=0.25", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "soe_specialist.json").read_text())["weights"] for d in "ab")
    assert a == b and a["law"] == 0.75
    for extra in (["--seed", str(2**63 - 1)], ["--temperature", "1e-4"], ["--temperature", "0"]):
        assert main(["generate", str(w.law), "--prompt", "The court", "--max-tokens", "2", *extra]) == 0
    (tmp_path / "t.txt").write_text("the court and the law of the land")
    capsys.readouterr()
    assert main(["evaluate", "--specialist", str(w.law), "--texts", str(tmp_path / "t.txt")]) == 0
    assert "less than one window" in capsys.readouterr().err
