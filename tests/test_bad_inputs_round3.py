"""Bad inputs of issue 25 left after round two: duplicate keys and loose numbers in *every* caller of the core
weights parser (soe serve, merge configs, experiments), output locations of evaluate and estimate-weights
checked before any work, a LoRA adapter of rank 0, an export to a full disk, and train.py's own trainer and
seed settings. Each row is refused with one line naming the input, and changes no file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from bad_inputs import assert_refused
from conftest import make_prepared
from specialize_helpers import make_docs, text_env

from soe.cli import main
from soe.core import weights as core
from soe.train import trainer_checks as T

pytest.importorskip("transformers")
DOMAINS = ["cooking", "law", "space"]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("round3")
    assert (
        main(["instantiate", str(ckpt), "--data", str(prepared), "--weights", "law", "--out", str(root / "law")]) == 0
    )
    bad = root / "bad"
    bad.mkdir()
    (bad / "file.txt").write_text("not a directory")
    shutil.copyfile(prepared / "specialists" / "legalfood" / "inhouse.jsonl", bad / "texts.jsonl")
    shutil.copyfile(ckpt, bad / "last.ckpt")
    (bad / "cooking.txt").write_text("\n\n".join(make_docs("cooking", 60, seed=7)))
    assert (
        main(
            [
                "finetune",
                f"{ckpt}@cooking",
                "--texts",
                str(bad / "cooking.txt"),
                "--out",
                str(root / "ft"),
                "--steps",
                "2",
                "--eval-every",
                "2",
                "--first-checkpoint",
                "2",
                "--batch-size",
                "2",
                "--warmup",
                "1",
                "--lora-rank",
                "2",
                "--keep-adapter",
            ]
        )
        == 0
    )
    for name, edit in (
        ("rank0", {"r": 0}),
        ("rank_string", {"r": "2"}),
        ("rank_other", {"r": 3}),
        ("alpha0", {"lora_alpha": 0}),
        ("no_rank", {"r": None}),
    ):
        d = shutil.copytree(root / "ft" / "last", bad / name)
        cfg = json.loads((d / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps({k: v for k, v in {**cfg, **edit}.items() if v is not None}))
    return SimpleNamespace(
        prepared=prepared,
        ckpt=ckpt,
        root=root,
        bad=bad,
        law=root / "law",
        adapter=root / "ft" / "last",
        ids=make_prepared(root / "ids"),
    )


def serve(spec):  # an address no server can bind: a row accepted by mistake fails instead of serving forever
    return ["serve", "{ckpt}", "--data", "{prepared}", "--host", "256.256.256.256", "--port", "0", "--specialist", spec]


def gen(model):
    return ["generate", model, "--prompt", "The court", "--max-tokens", "2"]


def ev(*extra):
    return ["evaluate", "--specialist", "{law}", "--texts", "{bad}/texts.jsonl", "--windows", "2", *extra]


def est(*extra):
    return ["estimate-weights", "{bad}/last.ckpt", "--data", "{prepared}", "--texts", "{bad}/texts.jsonl", *extra]


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
    # output files checked before any work: parent, kind, not an input
    "evaluate_json_parent_is_a_file": (
        ev("--json", "{bad}/file.txt/x.json"),
        "--json {bad}/file.txt/x.json: {bad}/file.txt is a file",
    ),
    "evaluate_md_parent_is_a_file": (ev("--md", "{bad}/file.txt/sub/x.md"), "--md {bad}/file.txt/sub/x.md"),
    "evaluate_md_is_a_directory": (ev("--md", "{bad}"), "--md {bad} is a directory"),
    "evaluate_json_is_the_texts": (ev("--json", "{bad}/texts.jsonl"), "would replace the input --texts[0]"),
    "evaluate_json_is_the_ckpt": (
        [
            "evaluate",
            "--ckpt",
            "{bad}/last.ckpt",
            "--data",
            "{prepared}",
            "--sets",
            "val",
            "--windows",
            "1",
            "--json",
            "{bad}/last.ckpt",
        ],
        "would replace the input --ckpt",
    ),
    "evaluate_md_inside_a_specialist": (
        ev("--md", "{law}/config.json"),
        "would replace a file of the input --specialist[0]",
    ),
    "evaluate_json_and_md_the_same": (ev("--json", "{out}.json", "--md", "{out}.json"), "the same file"),
    "estimate_out_is_a_directory": (est("--out", "{bad}"), "--out {bad} is a directory"),
    "estimate_out_parent_is_a_file": (
        est("--out", "{bad}/file.txt/w.json"),
        "--out {bad}/file.txt/w.json: {bad}/file.txt is a file",
    ),
    "estimate_out_is_the_texts": (est("--out", "{bad}/texts.jsonl"), "would replace the input --texts"),
    "estimate_out_is_the_checkpoint": (est("--out", "{bad}/last.ckpt"), "would replace the input SOURCE"),
    "estimate_out_in_the_data": (est("--out", "{prepared}/meta.json"), "would replace a file of the input --data"),
    # LoRA adapters kept beside their base (soe finetune --keep-adapter) with a config that cannot be folded
    "lora_rank_zero": (gen("{bad}/rank0"), "LoRA rank r=0; expected an integer ≥ 1"),
    "lora_rank_string": (gen("{bad}/rank_string"), "LoRA rank r='2'"),
    "lora_rank_missing": (gen("{bad}/no_rank"), "LoRA rank r=None"),
    "lora_rank_disagrees_with_tensors": (gen("{bad}/rank_other"), "says r=3"),
    "lora_alpha_zero": (gen("{bad}/alpha0"), "lora_alpha=0"),
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


@pytest.mark.parametrize(
    "spec, expect",
    [
        ("law=1,law=0", "domain 'law' is given twice"),
        (" law=1 , law = 0", "domain 'law' is given twice"),
        ("law=1_0", "'_' is not allowed"),
        ("law=0x10", "domain=number"),
        ("=1", "domain=number"),
        ("law", None),
        ("law=1,space=3", None),
        ("weights.json", "weights.json not found"),
        ("my.weights", "weights file my.weights not found"),
    ],
)
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


def _train(w, root: Path, *extra) -> list[str]:
    return [
        "fit",
        "--config",
        str(Path(__file__).resolve().parents[1] / "configs/tiny.yaml"),
        f"--data.data_dir={w.ids}",
        "--model.net.vocab_size=64",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        f"--trainer.callbacks.init_args.dirpath={root / 'ck'}",
        *extra,
    ]


TRAIN_ROWS = {  # train.py's own settings (soe/train/trainer_checks.py); devices > 1 only as unit checks below
    "seed_negative": (["--seed_everything=-1"], "seed_everything=-1: expected an integer in [0, 4294967295]"),
    "seed_overflow": ([f"--seed_everything={2**64}"], f"seed_everything={2**64}"),
    "seed_past_numpy": ([f"--seed_everything={2**32}"], "numpy's seed range"),
    "seed_underscore": (["--seed_everything=1_0"], "--seed_everything='1_0': '_' is not allowed"),
    "seed_underscore_spaced": (["--seed_everything", "4_2"], "'_' is not allowed"),
    "max_steps_underscore": (["--trainer.max_steps=1_0"], "--trainer.max_steps='1_0'"),
    "accelerator_unknown": (["--trainer.accelerator=tpu9"], "trainer.accelerator='tpu9': expected one of auto, cpu"),
    "accelerator_tpu": (["--trainer.accelerator=tpu"], "soe does not train on TPUs"),
    "accelerator_cuda_without_cuda": (
        ["--trainer.accelerator=cuda"],
        "trainer.accelerator='cuda': this torch sees no CUDA",
    ),
    "accelerator_gpu_without_cuda": (["--trainer.accelerator=gpu"], "trainer.accelerator='gpu'"),
    "devices_zero": (["--trainer.devices=0"], "trainer.devices='0': expected 'auto', a number of devices ≥ 1"),
    "devices_negative": (["--trainer.devices=-5"], "trainer.devices='-5'"),
    "devices_all_gpus_on_cpu": (["--trainer.devices=-1"], "-1 only with a GPU accelerator"),
    "devices_word": (["--trainer.devices=abc"], "trainer.devices='abc'"),
}


@pytest.mark.parametrize("row", list(TRAIN_ROWS))
def test_bad_train_setting_is_refused(w, row, capsys, tmp_path):
    if T._cuda_count():
        pytest.skip("rows written for a machine without CUDA")
    extra, expect = TRAIN_ROWS[row]
    assert_refused(capsys, "train", _train(w, tmp_path, *extra), expect, watch=(w.ids,))
    assert not (tmp_path / "ck").exists() and not (tmp_path / "runs").exists()


def test_device_counts_are_checked_without_starting_processes(monkeypatch):
    """trainer.devices larger than the machine (99 on 2 CPU cores once started 99 DDP processes)."""
    cores = os.cpu_count() or 1
    monkeypatch.setattr(T, "_cuda_count", lambda: 0)
    for devices, acc, expect in (
        (cores + 1, "cpu", f"expected at most {cores}"),
        (str(cores + 1), "cpu", "at most"),
        (cores + 1, "auto", "at most"),
        (-1, "auto", "-1 only with a GPU"),
        ([0, 1], "cpu", "needs a GPU accelerator"),
        (True, "cpu", "expected 'auto'"),
    ):
        with pytest.raises(ValueError, match=expect):
            T.check_devices(devices, acc)
    T.check_devices(1, "cpu"), T.check_devices("auto", "cpu"), T.check_devices(None, "cpu")
    monkeypatch.setattr(T, "_cuda_count", lambda: 2)
    (
        T.check_devices(-1, "cuda"),
        T.check_devices([0, 1], "cuda"),
        T.check_devices("0,1", "cuda"),
        T.check_devices(2, "cuda"),
    )
    for devices, expect in (
        (3, "only 2 CUDA"),
        ([0, 0], "distinct GPU indices"),
        ([2], r"indices 0\.\.1"),
        ("0,5", "only 2 CUDA"),
        (-2, "expected 'auto'"),
    ):
        with pytest.raises(ValueError, match=expect):
            T.check_devices(devices, "cuda")
    T.check_devices(-1, "auto"), T.check_devices(2, "auto")
    with pytest.raises(ValueError, match="only 2 CUDA"):
        T.check_devices(3, "auto")
    assert T.check_accelerator("gpu") == "cuda" and T.check_accelerator("auto") == "auto"


def test_a_gpu_configuration_still_parses_here(monkeypatch):
    """Only building the trainer needs the GPU: --print_config and experiment plans of GPU configs work anywhere."""
    T.check_settings({"seed_everything": 0, "trainer": {"accelerator": "gpu", "devices": 8}}, ["--trainer.devices=8"])
    monkeypatch.setattr(T, "_cuda_count", lambda: 0)
    with pytest.raises(ValueError, match="sees no CUDA device"):
        T.check_machine({"trainer": {"accelerator": "gpu", "devices": 8}})
    T.check_seed(True), T.check_seed(False), T.check_seed(0), T.check_seed(2**32 - 1)


def test_a_valid_adapter_still_loads(w):
    from soe.specialists.export import load_specialist

    net, _ = load_specialist(w.adapter)
    assert sum(p.numel() for p in net.parameters()) > 0


# ---------------------------------------------------------------- a full disk
def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_export_to_a_full_disk_subprocess(w, tmp_path):
    """`ulimit -f` (RLIMIT_FSIZE): the tensors file cannot be written. One line naming --out, exit 2, nothing
    left, and with --overwrite the previous export unchanged."""
    (tmp_path / "prev").mkdir()
    prev = shutil.copytree(w.law, tmp_path / "prev" / "out")
    before = {p.name: p.read_bytes() for p in prev.iterdir()}
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000)); from soe.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    for out, extra in ((tmp_path / "new" / "out", []), (prev, ["--overwrite"])):
        out.parent.mkdir(exist_ok=True)
        r = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "instantiate",
                str(w.ckpt),
                "--data",
                str(w.prepared),
                "--weights",
                "cooking",
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=300,
        )
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert last.startswith("soe: error: output ") and f"{out} (--out): cannot be written (File too large)" in last
        assert _leftovers(out.parent) == []
    assert not (tmp_path / "new" / "out").exists()
    assert {p.name: p.read_bytes() for p in prev.iterdir()} == before


def test_disk_full_while_writing_tensors_or_a_json_file(w, tmp_path, capsys, monkeypatch):
    """ENOSPC from the tensors writer (instantiate, merge, finetune share it) and from the JSON writer
    (evaluate --json, estimate-weights --out): one line naming the output, nothing half-written."""
    import safetensors.torch

    import soe.fileio

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "spec"
    last = assert_refused(
        capsys,
        "soe",
        ["instantiate", str(w.ckpt), "--data", str(w.prepared), "--weights", "law", "--out", str(out)],
        f"output {out} (--out): cannot be written (No space left",
    )
    assert "nothing was written" in last and not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.setattr(soe.fileio.os, "fsync", full)
    js = tmp_path / "eval.json"
    assert_refused(
        capsys,
        "soe",
        [a.format(**vars(w)) for a in ev("--json", str(js))],
        f"{js}: cannot be written (No space left on device)",
    )
    assert not js.exists() and _leftovers(tmp_path) == []
