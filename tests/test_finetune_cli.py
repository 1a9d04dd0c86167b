"""`soe finetune`: geometric checkpoints, best/last, LoRA merged or kept as a peft adapter, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from bad_inputs import assert_refused
from safetensors.torch import load_file
from specialize_helpers import make_docs, text_env

from soe import api
from soe.cli import main
from soe.specialists.finetune import geometric_steps

COMMON = ["--steps", "20", "--eval-every", "5", "--batch-size", "4", "--warmup", "2", "--format", "soe"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("ft")
    (root / "cooking.txt").write_text("\n\n".join(make_docs("cooking", 60, seed=7)))
    return ckpt, root


def _w(d):
    return load_file(str(d / "model.safetensors"))


def test_geometric_schedule():
    assert geometric_steps(20) == [4, 8, 16, 20] and geometric_steps(16) == [4, 8, 16]
    assert geometric_steps(3) == [3] and geometric_steps(100, first=8) == [8, 16, 32, 64, 100]


def test_full_finetune_keeps_geometric_checkpoints_best_and_last(env, capsys):
    ckpt, root = env
    out = root / "full"
    assert main(["finetune", f"{ckpt}@cooking", "--texts", str(root / "cooking.txt"), "--out", str(out), *COMMON]) == 0
    rec = json.loads((out / "finetune.json").read_text())
    steps = [c["step"] for c in rec["checkpoints"] if c["dir"].startswith("step-")]
    assert steps == [4, 8, 16, 20]
    for s in steps:  # every checkpoint is a loadable specialist recording its step
        spec = api.load(out / f"step-{s:06d}")
        assert spec.info["finetune"]["step"] == s and spec.weights["cooking"] == pytest.approx(1.0)
    assert all(torch.equal(a, b) for a, b in zip(_w(out / "last").values(), _w(out / "step-000020").values()))
    best = min(rec["history"], key=lambda r: r["holdout"])
    assert rec["best_step"] == best["step"] and rec["holdout_loss"] == pytest.approx(best["holdout"])
    assert rec["holdout_loss"] < rec["holdout_loss_start"]  # fine-tuning on the topic helps
    start = api.load(ckpt).specialist("cooking").model.state_dict()
    assert not torch.equal(
        _w(out / "step-000004")["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"]
    )
    # rerun: refused without --overwrite, replaced with it
    assert_refused(
        capsys,
        "soe",
        ["finetune", f"{ckpt}@cooking", "--texts", str(root / "cooking.txt"), "--out", str(out), *COMMON],
        "already exists",
        watch=(out,),
    )


def test_lora_merged_and_kept_adapter_agree_and_load_in_peft(env):
    ckpt, root = env
    args = ["--texts", str(root / "cooking.txt"), *COMMON, "--lora-rank", "2"]
    assert main(["finetune", str(ckpt), "--weights", "cooking", "--out", str(root / "lora"), *args]) == 0
    assert (
        main(["finetune", f"{ckpt}@cooking", "--out", str(root / "adapter"), *args, "--keep-adapter", "--format", "hf"])
        == 0
    )
    rec = json.loads((root / "lora" / "finetune.json").read_text())
    assert rec["holdout_loss"] < rec["holdout_loss_start"] and rec["mode"] == "LoRA r=2"  # LoRA reduces the loss
    start = api.load(ckpt).specialist("cooking").model.state_dict()
    merged = _w(root / "lora" / "step-000020")
    for name, w in merged.items():
        d = w - start[name]
        if name.endswith(("q_proj.weight", "down_proj.weight")):
            assert 0 < torch.linalg.matrix_rank(d) <= 2, name  # a rank-2 update
        elif not name.endswith("_proj.weight"):
            assert torch.equal(w, start[name]), name  # embeddings and norms frozen
    kept = root / "adapter" / "step-000020"
    assert (kept / "adapter_config.json").is_file() and (kept / "adapter_model.safetensors").is_file()
    assert all(torch.equal(_w(kept)[k], start[k]) for k in start)  # base weights stored unchanged
    ours = api.load(kept).model  # soe folds the adapter in on load
    folded = ours.state_dict()
    assert all(torch.allclose(folded[k], merged[k], atol=1e-6) for k in merged)
    # the adapter is peft's standard format: transformers + peft load the same model
    transformers, peft = pytest.importorskip("transformers"), pytest.importorskip("peft")
    hf = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(str(kept)), str(kept)).eval()
    x = torch.randint(0, ours.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, ours(x), atol=1e-4)


def test_an_adapter_on_another_base_is_refused(env, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    ckpt, root = env
    kept = root / "adapter" / "step-000004"
    if not kept.exists():
        pytest.skip("needs the LoRA test's output")
    bad = tmp_path / "bad-adapter"
    shutil.copytree(kept, bad)
    ad = load_file(str(bad / "adapter_model.safetensors"))
    save_file(
        {k: torch.cat([v, v], dim=1) if ".lora_A." in k else v for k, v in ad.items()},
        str(bad / "adapter_model.safetensors"),
    )
    assert_refused(
        capsys, "soe", ["generate", str(bad), "--max-tokens", "2"], "does not match its base weight", watch=(bad,)
    )


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["{ckpt}@cooking", "--keep-adapter"], "--keep-adapter needs --lora-rank"),
        (["{ckpt}@nosuchdomain"], "nosuchdomain"),
        (["{ckpt}@cooking", "--lora-rank", "0"], "--lora-rank"),
        (["{ckpt}@cooking", "--lora-rank", "2", "--lora-targets", "qproj"], "LoRA targets"),
        (["{ckpt}@cooking", "--holdout", "1.5"], "--holdout"),
        (["{ckpt}@cooking", "--steps", "0"], "--steps"),
        (["{root}/cooking.txt"], "cooking.txt"),
    ],
)
def test_finetune_bad_inputs(env, capsys, argv, expect):
    ckpt, root = env
    argv = [a.format(ckpt=ckpt, root=root) for a in argv]
    assert_refused(
        capsys,
        "soe",
        ["finetune", *argv, "--texts", str(root / "cooking.txt"), "--out", str(root / "bad")],
        expect,
        watch=(root,),
    )
    assert not (root / "bad").exists()


def test_python_api_finetune_then_merge(env, tmp_path):
    import soe
    from soe.specialists.lora import LoRA

    ckpt, root = env
    rec = soe.finetune(
        f"{ckpt}@cooking",
        root / "cooking.txt",
        tmp_path / "ft",
        steps=8,
        batch_size=4,
        warmup=1,
        eval_every=4,
        lora=LoRA(rank=2),
        fmt="soe",
        log=None,
    )
    assert [c["step"] for c in rec["checkpoints"]] == [4, 8, rec["best_step"]]
    res = soe.merge(
        {
            "merge_method": "linear",
            "models": [str(tmp_path / "ft" / "step-000004"), str(tmp_path / "ft" / "step-000008")],
        },
        tmp_path / "m",
    )
    assert res.tensors > 0 and soe.load(tmp_path / "m").info["merge"]["method"] == "linear"


# ---------------------------------------------------------------- issue 25: a refusal leaves --out as it was

FAST = ["--steps", "4", "--eval-every", "4", "--batch-size", "2", "--warmup", "1", "--format", "soe"]


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    """A finished run directory, and a text too short to fine-tune on."""
    ckpt, root = env
    d = tmp_path_factory.mktemp("finished")
    (d / "short.txt").write_text("cooking pan")
    assert (
        main(["finetune", f"{ckpt}@cooking", "--texts", str(root / "cooking.txt"), "--out", str(d / "run"), *FAST]) == 0
    )
    return d


@pytest.mark.parametrize(
    "extra,expect",
    [
        (["--texts", "{d}/short.txt"], "too small to fine-tune"),
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "-1"], "--seed"),
    ],
)
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_refused_input_leaves_out_as_it_was(env, finished, capsys, extra, expect, overwrite):
    """Old code: --overwrite deleted the finished run before the inputs were checked; without it, an empty
    --out was left behind."""
    ckpt, root = env
    out = finished / "run" if overwrite else finished / "new"
    argv = [
        "finetune",
        f"{ckpt}@cooking",
        "--texts",
        str(root / "cooking.txt"),
        "--out",
        str(out),
        *FAST,
        *(["--overwrite"] if overwrite else []),
    ]
    argv += [a.format(d=finished) for a in extra]
    assert_refused(capsys, "soe", argv, expect, watch=(finished,))
    assert not (finished / "new").exists()
    assert sorted(p.name for p in finished.iterdir()) == ["run", "short.txt"]  # no temporary directory left


def test_overwrite_replaces_a_finished_run_whole(env, finished, tmp_path):
    ckpt, root = env
    out = tmp_path / "run"
    import shutil

    shutil.copytree(finished / "run", out)
    assert (
        main(
            [
                "finetune",
                f"{ckpt}@cooking",
                "--texts",
                str(root / "cooking.txt"),
                "--out",
                str(out),
                *FAST,
                "--steps",
                "8",
                "--overwrite",
            ]
        )
        == 0
    )
    rec = json.loads((out / "finetune.json").read_text())
    assert rec["steps"] == 8 and (out / "step-000008").is_dir() and (out / "last").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_weights_given_twice_is_named(env, capsys, tmp_path):
    ckpt, root = env
    assert_refused(
        capsys,
        "soe",
        [
            "finetune",
            f"{ckpt}@cooking",
            "--weights",
            "law",
            "--texts",
            str(root / "cooking.txt"),
            "--out",
            str(tmp_path / "o"),
        ],
        "gives them again",
        watch=(tmp_path,),
    )
