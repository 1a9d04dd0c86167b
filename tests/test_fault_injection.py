"""Kill -9 inside the write windows (issue 25, item 6): `soe instantiate` (new and --overwrite), `soe merge`,
`soe finetune` and `train.py fit` are killed at their n-th file operation (tests/faults.py) and then:

- nothing half-written looks finished: --out is absent or complete (its marker, tensors equal to an
  uninterrupted run's, or for --overwrite the previous model's); every other directory holding a model (the
  hidden temporaries beside --out) is refused by the loader; every *.ckpt a training left is loadable;
- the same command run again succeeds, and leaves no temporary behind.

The default suite kills each command at a few points spread over its trace; the full sweep (every operation)
is marked slow (`make test-all`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from bad_inputs import call
from conftest import make_prepared
from faults import run_killed, sample
from specialize_helpers import make_docs, text_env

from soe.specialists.export import SOE_FILE, WEIGHTS_FILE, load_specialist

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]
FT = [
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--first-checkpoint",
    "2",
    "--batch-size",
    "2",
    "--warmup",
    "1",
    "--format",
    "soe",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    prepared, ckpt = text_env(tmp_path_factory)
    src = tmp_path_factory.mktemp("faults_src")
    for dom in ("cooking", "law"):
        assert (
            call(
                "soe",
                [
                    "instantiate",
                    str(ckpt),
                    "--data",
                    str(prepared),
                    "--weights",
                    dom,
                    "--format",
                    "soe",
                    "--out",
                    str(src / dom),
                ],
            )
            == 0
        )
    (src / "cooking.txt").write_text("\n\n".join(make_docs("cooking", 60, seed=7)))
    (src / "merge.yaml").write_text(
        yaml.safe_dump(
            {"merge_method": "linear", "models": [{"model": str(src / "cooking")}, {"model": str(src / "law")}]}
        )
    )
    return SimpleNamespace(prepared=prepared, ckpt=ckpt, src=src, ids=make_prepared(src / "ids"), traces={})


def _train(e, root: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"--data.data_dir={e.ids}",
        "--model.net.vocab_size=64",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        f"--trainer.callbacks.init_args.dirpath={root / 'ck'}",
        "--trainer.callbacks.init_args.every_n_train_steps=2",
    ]


# case -> (entry, argv from (env, root), whether --out exists before: the previous model an --overwrite replaces)
CASES = {
    "instantiate": (
        "soe",
        lambda e, r: [
            "instantiate",
            str(e.ckpt),
            "--data",
            str(e.prepared),
            "--weights",
            "law",
            "--out",
            str(r / "out"),
        ],
        False,
    ),
    "instantiate_overwrite": (
        "soe",
        lambda e, r: [
            "instantiate",
            str(e.ckpt),
            "--data",
            str(e.prepared),
            "--weights",
            "law",
            "--out",
            str(r / "out"),
            "--overwrite",
        ],
        True,
    ),
    "merge": ("soe", lambda e, r: ["merge", "--config", str(e.src / "merge.yaml"), "--out", str(r / "out")], False),
    "finetune": (
        "soe",
        lambda e, r: [
            "finetune",
            str(e.src / "cooking"),
            "--texts",
            str(e.src / "cooking.txt"),
            "--out",
            str(r / "out"),
            *FT,
        ],
        False,
    ),
    "train": ("train", _train, False),
    "train_tmp_elsewhere": ("train", _train, False),  # the system temp dir on another file system (tmpfs /tmp)
}


def _tempdir(case: str, tmp_path: Path):
    if case != "train_tmp_elsewhere":
        return None
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no writable file system other than the test's for the system temp dir")
    d = shm / f"soe-faults-{os.getpid()}"
    d.mkdir(exist_ok=True)
    return str(d)


def _fresh(e, case: str, root: Path) -> tuple[str, list[str]]:
    root.mkdir(parents=True)
    entry, argv, previous = CASES[case]
    if previous:
        shutil.copytree(e.src / "cooking", root / "out")
    return entry, argv(e, root)


def _tensors(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(d / WEIGHTS_FILE))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _models(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("*") if p.name in (SOE_FILE, "config.json", WEIGHTS_FILE)})


def check_nothing_half_written(e, case: str, root: Path, reference: Path) -> None:
    out = root / "out"
    if case.startswith("train"):
        from soe.train.resume import check_file

        for p in sorted(root.rglob("*.ckpt")):
            check_file(str(p), str(p))  # raises (naming it) on a truncated or empty checkpoint
        return
    finished = (
        [out] if case != "finetune" else [out / d.name for d in (out.iterdir() if out.is_dir() else []) if d.is_dir()]
    )
    if os.path.lexists(out):
        marker = out / ("finetune.json" if case == "finetune" else SOE_FILE)
        assert marker.is_file(), f"{case}: {out} exists without its marker {marker.name}: {sorted(os.listdir(out))}"
        if case != "finetune":
            ok = [_tensors(reference)] + ([_tensors(e.src / "cooking")] if CASES[case][2] else [])
            assert any(_same(_tensors(out), t) for t in ok), f"{case}: {out} holds other tensors than a finished run"
        for d in finished:
            load_specialist(d)
    for d in _models(root):
        if d in finished:
            continue
        with pytest.raises((ValueError, OSError)):
            load_specialist(d)
            pytest.fail(f"{case}: {d} (left by the killed run) loads as a finished model")


def check_rerun(e, case: str, root: Path, entry: str, argv: list[str], reference: Path) -> None:
    if case.startswith("train"):
        assert call(entry, argv + (["--ckpt_path=last"] if (root / "ck" / "last.ckpt").exists() else [])) == 0
        state = torch.load(root / "ck" / "last.ckpt", weights_only=True)
        assert state["global_step"] == 4
        return
    assert call(entry, argv + (["--overwrite"] if case == "finetune" and (root / "out").exists() else [])) == 0
    out = root / "out"
    if case == "finetune":
        assert (out / "finetune.json").is_file() and _same(_tensors(out / "last"), _tensors(reference / "last"))
    else:
        assert _same(_tensors(out), _tensors(reference))
    assert not [p.name for p in root.iterdir() if p.name.startswith(".out.")], "temporaries left beside --out"


def trace(e, case: str, tmp_path: Path) -> tuple[list[str], Path]:
    """The operations of an uninterrupted run (in its own root, kept as the reference output)."""
    if case not in e.traces:
        root = Path(tmp_path.parent) / f"reference-{case}"
        entry, argv = _fresh(e, case, root)
        code, ops = run_killed(entry, argv, root, 0, tempdir=_tempdir(case, tmp_path))
        assert code == 0 and ops, f"{case}: the uninterrupted run failed ({code})"
        e.traces[case] = (ops, root / "out")
    return e.traces[case]


def kill_and_check(e, case: str, at: int, tmp_path: Path) -> None:
    ops, reference = trace(e, case, tmp_path)
    root = tmp_path / f"kill-{at}"
    entry, argv = _fresh(e, case, root)
    code, _ = run_killed(entry, argv, root, at, tempdir=_tempdir(case, tmp_path))
    assert code == -9 or (case.startswith("train") and code == 0), (
        f"{case}: killed at operation {at} ({ops[at - 1] if at <= len(ops) else '?'}) exited {code}"
    )
    check_nothing_half_written(e, case, root, reference)
    check_rerun(e, case, root, entry, argv, reference)


@pytest.mark.parametrize("case", list(CASES))
def test_killed_at_a_few_points(env, case, tmp_path):
    ops, _ = trace(env, case, tmp_path)
    for at in sample(len(ops), 3)[1:]:  # the middle and the last operation
        kill_and_check(env, case, at, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_killed_at_every_operation(env, case, tmp_path):
    ops, _ = trace(env, case, tmp_path)
    for at in sample(len(ops), 60):  # every operation (at most 60, evenly spread)
        kill_and_check(env, case, at, tmp_path)
