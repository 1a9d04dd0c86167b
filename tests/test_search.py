"""python -m studies.experiments.search: variants scored on validation targets, one table row each.

End to end on the committed fixture prepared with validation targets (tests/test_targets.py's settings), with
two variants of a few training steps; plus the table, interval and nonlinearity helpers, and the refusals.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import bad_inputs
import numpy as np
import pytest
import torch
import yaml
from bad_inputs import assert_refused
from test_targets import TARGETS, fixture_raw, prepare

from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from studies.experiments.config import ExperimentConfig
from studies.experiments.search import HEADER, append_row, main, mean_interval, nonlinearity, variant_config

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny.yaml")
HEAD = HEADER.splitlines()[0]
OTHER_TABLE = "| other | table |\n|---|---|\n| x | y |\n"


@pytest.fixture(scope="module")
def targets_prepared(tmp_path_factory) -> Path:
    """The fixture prepared with validation targets; its specialist sets moved away (search never reads them)."""
    out = tmp_path_factory.mktemp("search") / "prepared"
    prepare(fixture_raw(targets=TARGETS), out)
    (out / "specialists").rename(out.parent / "specialists-away")
    return out


def search_yaml(path: Path, data_dir: Path, out: Path, variants: list[dict] | None = None) -> Path:
    raw = {
        "out": str(out),
        "experiment": {
            "data_dir": str(data_dir),
            "soe_config": TINY,
            "generic_config": TINY,
            "max_steps": 3,
            "dedicated": False,
            "refine": False,
            "finetune": False,
            "eval_windows": 4,
            "bootstrap": 200,
            "overrides": [
                "--trainer.enable_progress_bar=false",
                "--trainer.val_check_interval=100",
                "--trainer.enable_model_summary=false",
                "--model.net.n_layer=1",
                "--model.soup.experts_from_step=1",
            ],
        },
        "variants": variants
        if variants is not None
        else [
            {"name": "base", "change": "tiny recipe", "overrides": []},
            {"name": "affine", "change": "φ a single linear map", "overrides": ["--model.soup.router_depth=0"]},
            {"name": "lr", "change": "not run", "shared_overrides": ["--model.optim.lr=1.0e-3"]},
        ],
    }
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def search_rows(text: str) -> list[str]:
    lines = text.splitlines()
    i = lines.index(HEAD) + 2
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append(lines[i])
        i += 1
    return rows


def test_search_end_to_end(targets_prepared, tmp_path, capsys):
    cfg = search_yaml(tmp_path / "search.yaml", targets_prepared, tmp_path / "out")
    table = tmp_path / "RECIPE.md"
    table.write_text("# Recipe\n\n" + HEADER + "| old | row |\n\n" + OTHER_TABLE + "\nprose after\n")
    capsys.readouterr()
    assert main(["--config", str(cfg), "--only", "base,affine", "--table", str(table)]) == 0
    log = capsys.readouterr().out
    # the generic model is trained once, for the first variant, and reused by the second
    assert log.count("training generic ") == 1 and log.count("generic: reusing") == 1, log
    assert log.count("training soe-base ") == 1 and log.count("training soe-affine ") == 1
    runs = tmp_path / "out" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["generic", "soe-affine", "soe-base"]  # "lr" not run
    text = table.read_text()
    rows = search_rows(text)
    assert len(rows) == 3 and rows[0] == "| old | row |"
    assert rows[1].startswith("| base | tiny recipe | 0 | 3 |") and rows[2].startswith(
        "| affine | φ a single linear map | 0 | 3 |"
    )
    assert text.endswith("\n" + OTHER_TABLE + "\nprose after\n")  # the table after it untouched
    for r in rows[1:]:
        assert len(r.split("|")) == len(HEAD.split("|")), r
        assert re.search(r"\| \d/9 \(\d\) \|", r), r
        assert "--only " in r and str(cfg) in r
    scores = {}
    for name in ("base", "affine"):
        s = json.loads((tmp_path / "out" / name / "score.json").read_text())
        scores[name] = s
        assert sorted(s["targets"]) == sorted(TARGETS_EXPECTED)
        for t, v in s["targets"].items():
            assert v["windows"] > 0 and v["ci"][0] <= v["delta"] <= v["ci"][1]
            assert v["delta"] == pytest.approx(v["soe"] - v["generic"], abs=1e-6)
        assert 0 <= s["won"] + s["lost"] <= 9
        assert s["won"] == sum(v["ci"][1] < 0 for v in s["targets"].values())
        lo, hi = s["mean_ci"]
        assert lo <= s["mean_delta"] <= hi
        assert s["mean_delta"] == pytest.approx(np.mean([v["delta"] for v in s["targets"].values()]))
        assert s["nonlinearity"] >= 0 and s["n_domains"] == 9
        assert set(s["weights"]) == set(TARGETS_EXPECTED)
        for h in s["weights"].values():
            assert sum(h.values()) == pytest.approx(1, abs=1e-5)
        assert s["runs"]["generic"]["checkpoint"] == str(runs / "generic" / "checkpoints" / "last.ckpt")
    # both variants are scored against the same generic model
    for t in TARGETS_EXPECTED:
        assert scores["base"]["targets"][t]["generic"] == scores["affine"]["targets"][t]["generic"]
    assert scores["affine"]["nonlinearity"] < 1e-4 < scores["base"]["nonlinearity"]  # φ affine ⇒ 0
    # a rerun reuses every run and adds one more row (rows are never rewritten)
    mtime = (runs / "generic" / "run.json").stat().st_mtime_ns
    assert main(["--config", str(cfg), "--only", "affine", "--table", str(table)]) == 0
    log = capsys.readouterr().out
    assert "training" not in log and log.count("reusing") == 2, log
    assert (runs / "generic" / "run.json").stat().st_mtime_ns == mtime
    assert search_rows(table.read_text())[:3] == rows and len(search_rows(table.read_text())) == 4


TARGETS_EXPECTED = [
    "python_stdlib",
    "licensedcode_en",
    "licensedcode_intl",
    "shakespeare",
    "kjv",
    "reference",
    "python_docs",
    "setmm",
    "python_changelog",
]


# ---------------------------------------------------------------------------------------------- refusals
@pytest.fixture
def entries(monkeypatch):
    monkeypatch.setitem(bad_inputs.ENTRIES, "search", ("studies.experiments.search", "main"))


def refused(capsys, cfg: Path, extra: list[str], expect: str, tmp_path: Path, data_dir: Path) -> None:
    table = tmp_path / "RECIPE.md"
    table.write_text("# Recipe\n")
    assert_refused(
        capsys, "search", ["--config", str(cfg), "--table", str(table), *extra], expect, watch=(tmp_path, data_dir)
    )
    assert not (tmp_path / "out").exists(), "nothing may be written before a refusal"


def test_unknown_variant_is_refused(entries, targets_prepared, tmp_path, capsys):
    cfg = search_yaml(tmp_path / "search.yaml", targets_prepared, tmp_path / "out")
    refused(
        capsys,
        cfg,
        ["--only", "nosuch"],
        "--only 'nosuch': expected comma-separated variant names",
        tmp_path,
        targets_prepared,
    )
    refused(capsys, cfg, ["--only", "base,nosuch"], "['base', 'affine', 'lr']", tmp_path, targets_prepared)


def test_negative_seed_is_refused(entries, targets_prepared, tmp_path, capsys):
    cfg = search_yaml(tmp_path / "search.yaml", targets_prepared, tmp_path / "out")
    refused(capsys, cfg, ["--seed", "-1"], "--seed -1: expected a non-negative integer", tmp_path, targets_prepared)


def test_data_without_targets_is_refused(entries, tmp_path, capsys):
    from conftest import make_prepared

    data = make_prepared(tmp_path / "plain")
    cfg = search_yaml(tmp_path / "search.yaml", data, tmp_path / "out")
    refused(capsys, cfg, [], "has no validation targets", tmp_path, data)


@pytest.mark.parametrize(
    "variant, expect",
    [
        (
            {"name": "a", "generic_overrides": "--model.optim.lr=1e-3"},
            "variants[0].generic_overrides='--model.optim.lr=1e-3': expected a list",
        ),
        (
            {"name": "a", "shared_overrides": ["model.optim.lr=1e-3"]},
            "variants[0].shared_overrides[0]='model.optim.lr=1e-3': expected a train.py argument",
        ),
        ({"name": "a", "dense_overrides": []}, "unknown keys ['dense_overrides']"),
    ],
)
def test_bad_variant_is_refused(entries, targets_prepared, tmp_path, capsys, variant, expect):
    cfg = search_yaml(tmp_path / "search.yaml", targets_prepared, tmp_path / "out", [variant])
    refused(capsys, cfg, [], expect, tmp_path, targets_prepared)


def test_plain_ablation_refuses_search_keys(tmp_path):
    from studies.experiments.ablate import load_ablation
    from studies.experiments.config import SearchFile

    cfg = search_yaml(tmp_path / "a.yaml", tmp_path, tmp_path / "out", [{"name": "a", "shared_overrides": []}])
    with pytest.raises(ValueError, match=r"unknown keys \['shared_overrides'\]"):
        load_ablation(str(cfg))
    assert load_ablation(str(cfg), SearchFile)[2] == [{"name": "a", "shared_overrides": []}]


# ---------------------------------------------------------------------------------------------- helpers
def test_variant_config_shares_the_generic_run_per_budget(tmp_path):
    base = ExperimentConfig(
        data_dir="d", soe_config=TINY, generic_config=TINY, overrides=["--a=1"], generic_overrides=["--g=0"]
    )
    soup_only, suffix = variant_config(base, {"name": "x", "overrides": ["--s=1"]}, None)
    assert suffix == "" and soup_only.soe_overrides == ["--s=1"] and soup_only.overrides == ["--a=1"]
    assert soup_only.generic_overrides == ["--g=0"]
    shared, s1 = variant_config(base, {"name": "y", "shared_overrides": ["--lr=2"]}, None)
    gen, s2 = variant_config(base, {"name": "z", "generic_overrides": ["--lr=2"]}, None)
    assert shared.overrides == ["--a=1", "--lr=2"] and gen.generic_overrides == ["--g=0", "--lr=2"]
    assert s1 and s2 and s1 != s2  # another baseline: another generic run
    assert variant_config(base, {"name": "w", "shared_overrides": ["--lr=2"], "overrides": ["--q"]}, None)[1] == s1
    seeded, s3 = variant_config(base, {"name": "x"}, 2)
    assert seeded.seed == 2 and s3 == "-seed2"


def test_append_row():
    line = "| new | row |\n"
    # no search table yet: started at the end
    assert append_row("", line) == HEADER + line
    assert append_row("# Title\n", line) == "# Title\n\n" + HEADER + line
    assert append_row("# Title\n\n", line) == "# Title\n\n" + HEADER + line
    # another table follows the search table: the row goes into the search table
    text = "intro\n\n" + HEADER + "| a | 1 |\n\n" + OTHER_TABLE
    assert append_row(text, line) == "intro\n\n" + HEADER + "| a | 1 |\n" + line + "\n" + OTHER_TABLE
    # another table before it, and a last row without a newline
    text = OTHER_TABLE + "\n" + HEADER + "| a | 1 |"
    assert append_row(text, line) == OTHER_TABLE + "\n" + HEADER + "| a | 1 |\n" + line
    # an empty search table (header and separator only)
    assert append_row(HEADER + "\nmore\n", line) == HEADER + line + "\nmore\n"
    # the header quoted inside prose is not the table: a table is started
    quoted = f"see `{HEAD}`\n"
    assert append_row(quoted, line) == quoted + "\n" + HEADER + line


def test_mean_interval():
    # the mean over targets of each target's mean, not the mean over all windows
    assert mean_interval([np.ones(100), np.zeros(2)], 500, 0) == (pytest.approx(0.5), pytest.approx(0.5))
    rng = np.random.default_rng(0)
    deltas = [rng.normal(m, 1.0, n) for m, n in ((-0.5, 40), (0.2, 60), (0.1, 30))]
    lo, hi = mean_interval(deltas, 2000, 0)
    centre = np.mean([d.mean() for d in deltas])
    assert lo < centre < hi and hi - lo < 1.0
    assert mean_interval(deltas, 2000, 0) == (lo, hi)  # seeded
    wider = mean_interval([d * 3 for d in deltas], 2000, 0)
    assert wider[1] - wider[0] > 2 * (hi - lo)


NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32)


def test_nonlinearity():
    hs = [torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.7, 0.3, 0.0]), torch.full((3,), 1 / 3)]
    torch.manual_seed(0)

    def soup(**kw):
        return SoupOfExperts(NET, 3, SoupConfig(n_experts=4, expert_init="normal", router_hidden=8, **kw))

    affine = soup(router_depth=0)
    with torch.no_grad():  # a bias makes φ affine, not linear: still Θ(h) = Σ h_i Θ(e_i) on the simplex
        affine.router.net[0].bias.normal_()
    assert nonlinearity(affine, hs) < 1e-5
    assert nonlinearity(soup(router_depth=0, expert_rank=2), hs) < 1e-5  # low-rank experts are linear in α too
    assert nonlinearity(soup(router_depth=0, router_output="scaled"), hs) < 1e-5
    assert nonlinearity(soup(router_depth=0, router_output="softmax"), hs) > 1e-3
    assert nonlinearity(soup(router_depth=0, router_input="log"), hs) > 1e-3
    deep = soup(router_depth=2, router_input="times_k")
    assert nonlinearity(deep, hs) > 1e-3
    assert nonlinearity(SoupOfExperts(NET, 3, SoupConfig(n_experts=0)), hs) == 0.0
    # one-hot h: every soup is exactly its one-hot specialist
    assert nonlinearity(deep, [torch.eye(3)[1]]) < 1e-5
