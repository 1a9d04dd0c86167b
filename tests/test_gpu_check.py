"""bench/gpu_check.py in smoke mode on CPU: every part runs and reports, its JSON and markdown are written, and a
part made to fail (or to hang past its box) is reported as such while the others still report (issue 26)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import gpu_check

ALL = list(gpu_check.PARTS)
PART_KEYS = {"status", "seconds", "box_s"}
BRANCHES = {"autocast", "fused_adamw", "pinned", "timing", "compile", "memory_probe"}


def _read(out):
    report = json.loads((out / "gpu_check.json").read_text())
    md = (out / "gpu_check.md").read_text()
    return report, md


def _check_ok(report, md, names):
    assert list(report["parts"]) == names
    for name, rec in report["parts"].items():
        assert PART_KEYS <= set(rec), (name, rec)
        assert rec["status"] == "ok", (name, rec.get("error"), rec.get("traceback"))
        assert rec["result"]["summary"], name
        assert f"| {name} | ok |" in md
    for key in ("machine", "device", "device_name", "torch", "sizes", "budget_s", "elapsed_s", "branches"):
        assert key in report, key


def test_smoke_every_part_and_branch(tmp_path, monkeypatch):
    """Every part in one process (aot_eager: torch.compile reached without inductor's C++ builds, ~50 s cold)."""
    monkeypatch.delenv(gpu_check.FAIL_ENV, raising=False)
    monkeypatch.delenv(gpu_check.HANG_ENV, raising=False)
    out = tmp_path / "out"
    gpu_check.main(
        [
            "--smoke",
            "--device",
            "cpu",
            "--no-isolate",
            "--out",
            str(out),
            "--budget-s",
            "300",
            "--compile-backend",
            "aot_eager",
        ]
    )
    report, md = _read(out)
    _check_ok(report, md, ALL)
    assert report["smoke"] and report["device"] == "cpu" and not report["isolate"]
    assert BRANCHES <= set(report["branches"]), report["branches"]
    p = report["parts"]
    assert p["dense_eager"]["result"]["tokens_per_s"] > 0 and p["dense_eager"]["result"]["mfu"] is None  # no CPU peak
    rows = p["soe_ratio"]["result"]["rows"]
    assert [(r["bank_update"], r["M"]) for r in rows] == [(u, M) for u in ("dense", "factored") for M in (1, 4, 16)]
    assert all(r["status"] == "ok" and r["ratio"] > 0 for r in rows)
    assert [r["n"] for r in p["instantiate"]["result"]["rows"]] == [16, 128]
    assert all(r["ratio"] > 0 for r in p["instantiate"]["result"]["rows"])
    bf = p["bf16_vs_fp32"]["result"]
    assert len(bf["losses"]["fp32"]) == len(bf["losses"]["bf16"]) == 20 and bf["pass"]
    assert bf["losses"]["fp32"][-1] < bf["losses"]["fp32"][0]  # the synthetic chain is learnt
    assert len(p["memory"]["result"]["rows"]) == 3
    assert [r["new_tokens"] for r in p["decode"]["result"]["rows"]] == [8, 8]
    comp = p["dense_compile"]["result"]
    assert comp["backend"] == "aot_eager" and comp["compiled"]["tokens_per_s"] > 0
    for name in ("soe_ratio", "memory", "bf16_vs_fp32", "instantiate", "decode", "dense_compile"):
        assert f"### {name}" in md


def test_failed_and_hung_parts_are_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_check.FAIL_ENV, "instantiate")
    monkeypatch.setenv(gpu_check.HANG_ENV, "bf16_vs_fp32")
    out = tmp_path / "out"
    report = gpu_check.main(
        [
            "--smoke",
            "--device",
            "cpu",
            "--no-isolate",
            "--out",
            str(out),
            "--budget-s",
            "20",
            "--parts",
            "bf16_vs_fp32,instantiate,decode",
        ]
    )
    disk, md = _read(out)
    assert disk["parts"].keys() == report["parts"].keys()
    p = report["parts"]
    assert p["bf16_vs_fp32"]["status"] == "timeout"
    assert p["instantiate"]["status"] == "failed" and "injected failure" in p["instantiate"]["error"]
    assert p["decode"]["status"] == "ok" and p["decode"]["result"]["rows"]
    assert "| instantiate | failed |" in md and "| bf16_vs_fp32 | timeout |" in md and "| decode | ok |" in md
    assert report["elapsed_s"] < 20 + 10  # the hung part was stopped at the end of its box


def test_isolated_part_failure_is_reported(tmp_path):
    """--isolate (the default on CUDA): each part in a child process; a child's failure is that part's only."""
    out = tmp_path / "out"
    env = {**__import__("os").environ, gpu_check.FAIL_ENV: "decode", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--smoke",
            "--device",
            "cpu",
            "--isolate",
            "--out",
            str(out),
            "--budget-s",
            "120",
            "--parts",
            "decode",
        ],
        cwd=gpu_check.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 1, p.stdout + p.stderr  # not every part ok
    report, md = _read(out)
    rec = report["parts"]["decode"]
    assert rec["status"] == "failed" and rec["isolated"] and "injected failure" in rec["error"]
    assert report["isolate"] and report["device_name"] == "CPU" and report["machine"]
    assert "| decode | failed |" in md


@pytest.mark.slow
def test_smoke_as_make_runs_it_isolated_with_inductor(tmp_path):
    """The smoke run exactly as `make gpu-check ARGS="--smoke --device cpu" ` runs it, but isolated and with
    inductor (gcc builds the compiled kernels): exit status 0, every part ok."""
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--device", "cpu", "--isolate", "--out", str(out)],
        cwd=gpu_check.REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    report, md = _read(out)
    _check_ok(report, md, ALL)
    assert report["parts"]["dense_compile"]["result"]["backend"] == "inductor"
