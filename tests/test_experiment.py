"""The comparison protocol end to end at test size, and the report it writes."""

import dataclasses
import json
from pathlib import Path

import pytest

from studies.experiments.experiment import ExperimentConfig, load_config, run

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_experiment_report(fixture_prepared, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "experiments/tiny.yaml")
    cfg.data_dir, cfg.max_steps, cfg.eval_windows = str(fixture_prepared), 4, 4
    cfg.overrides = cfg.overrides + ["--trainer.val_check_interval=2", "--model.net.n_layer=1"]
    cfg.budgets, cfg.bootstrap = [2], 300
    out = tmp_path / "exp"
    results = run(cfg, out)
    sets = ["austen", "go", "metamath"]
    assert sorted(results["sets"]) == sets
    assert set(results["runs"]) == {"generic", "soe"} | {f"dedicated-{s}" for s in sets}
    # the budget curve: its own runs at 2 steps, then the main runs' 4 steps, each set with an interval
    curve = results["curve"]
    assert [p["steps"] for p in curve] == [2, 4] and (out / "runs" / "soe-2steps" / "run.json").is_file()
    assert curve[1]["sets"]["go"]["soe_hist"] == pytest.approx(results["sets"]["go"]["soe_hist"], rel=1e-6)
    for p in curve:
        for v in p["sets"].values():
            assert v["ci"][0] <= v["delta"] <= v["ci"][1] and v["delta"] == pytest.approx(v["soe_hist"] - v["generic"])
    tokens = {r["tokens"] for r in results["runs"].values()}
    assert len(tokens) == 1  # equal token budgets for every column
    for s, row in results["sets"].items():
        for key in ("generic", "soe_hist", "soe_refined", "dedicated"):
            assert 0 < row[key] < 20, (s, key, row[key])
        assert abs(sum(row["h_hist"].values()) - 1) < 1e-5
        assert row["refine_fit"][1] <= row["refine_fit"][0]  # refinement never worse in-sample
        for key in ("soe_hist", "soe_refined", "dedicated"):  # paired intervals around each difference
            lo, hi = row[f"ci_{key}"]
            assert lo <= row[key] - row["generic"] + 1e-9 and row[key] - row["generic"] <= hi + 1e-9
        for key in ("generic_ft", "soe_ft"):  # both start points fine-tuned by the same procedure
            ft = row[key + "_run"]
            assert 0 < row[key] < 20 and ft["steps"] == 6 and ft["holdout_loss"] <= ft["holdout_loss_start"]
    report = (out / "report.md").read_text()
    for heading in (
        "Held-out specialist sets",
        "against the token budget",
        "Fine-tuned on the in-house sample",
        "Pretraining domains",
        "Training cost",
        "Margin over training",
        "Commands",
    ):
        assert heading in report
    for s in sets:
        assert f"| {s} |" in report
    assert "plus N instantiations" in report and "for these 3" in report
    for png in ("loss_curves.png", "weights.png", "alpha.png", "budget_curve.png"):
        assert (out / png).stat().st_size > 10_000, png  # a real figure, not an empty canvas
    assert json.loads((out / "results.json").read_text())["sets"].keys() == results["sets"].keys()
    assert f"Every run saw the same {tokens.pop():,} training tokens (4 steps × 8 sequences × 64 tokens)" in report
    assert f"Prepared data: `{fixture_prepared}` (meta.json sha256" in report
    assert "at most 4 non-overlapping windows of 64 tokens" in report and "(90%; the other 10%" in report
    # a second run reuses the finished training runs instead of retraining
    again = run(cfg, out)
    assert again["runs"]["soe"]["wall_s"] == results["runs"]["soe"]["wall_s"]


def test_report_losses_equal_soe_evaluate(fixture_prepared, tmp_path, monkeypatch, capsys):
    """One loss function: the experiment's numbers are what `soe evaluate` prints for the same windows."""
    from soe.cli import main as soe_main

    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "experiments/tiny.yaml")
    cfg.data_dir, cfg.max_steps, cfg.eval_windows = str(fixture_prepared), 3, 5
    cfg.dedicated = cfg.refine = cfg.finetune = False
    cfg.overrides = cfg.overrides + ["--model.net.n_layer=1"]
    results = run(cfg, tmp_path / "exp")
    row = results["sets"]["austen"]
    (tmp_path / "h.json").write_text(json.dumps(row["h_hist"]))
    runs = tmp_path / "exp" / "runs"
    args = ["--data", str(fixture_prepared), "--windows", "5", "--json", str(tmp_path / "rows.json")]
    assert (
        soe_main(
            [
                "evaluate",
                "--ckpt",
                str(runs / "soe"),
                "--weights",
                str(tmp_path / "h.json"),
                "--weights",
                "code",
                "--sets",
                "austen,val",
                *args,
            ]
        )
        == 0
    )
    got = {(r["model"], r["set"]): r["loss"] for r in json.loads((tmp_path / "rows.json").read_text())}
    h = f"soup@{tmp_path / 'h.json'}"
    assert got[(h, "austen")] == pytest.approx(row["soe_hist"], rel=1e-6)
    assert got[("soup@code", "code")] == pytest.approx(results["domains"]["code"]["soe_onehot"], rel=1e-6)
    assert soe_main(["evaluate", "--ckpt", str(runs / "generic"), "--sets", "austen,val", *args]) == 0
    got = {r["set"]: r["loss"] for r in json.loads((tmp_path / "rows.json").read_text())}
    assert got["austen"] == pytest.approx(row["generic"], rel=1e-6)
    assert got["legal"] == pytest.approx(results["domains"]["legal"]["generic"], rel=1e-6)
    capsys.readouterr()


def test_runs_with_different_token_budgets_are_refused_before_training(fixture_prepared, tmp_path, monkeypatch):
    from studies.experiments.experiment import plan

    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "experiments/tiny.yaml")
    cfg.data_dir = str(fixture_prepared)
    cfg.soe_overrides = ["--data.batch_size=4"]
    with pytest.raises(ValueError, match=r"not see the same tokens(.|\n)*soe: 20 steps × 4 × 64 tokens = 5,120"):
        plan(cfg, tmp_path / "runs", "soe", {})
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    cfg.soe_overrides, cfg.max_steps = [], 7
    planned = plan(cfg, tmp_path / "runs", "soe", {})
    assert {b.tokens for _, _, b in planned.values()} == {7 * 8 * 64}


def test_bad_experiment_config(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("data_dir: d\nsteps: 3\n")
    with pytest.raises(ValueError, match=r"unknown keys \['steps'\]"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    assert ExperimentConfig().dedicated


def test_ablation_appends_rows_and_shares_the_generic_run(fixture_prepared, tmp_path, monkeypatch):
    import yaml

    from studies.experiments.ablate import main as ablate

    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load((ROOT / "experiments/recipe-tiny.yaml").read_text())
    cfg["experiment"]["data_dir"] = str(fixture_prepared)
    cfg["out"] = str(tmp_path / "out")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    table = tmp_path / "RECIPE.md"
    assert ablate(["--config", str(path), "--table", str(table)]) == 0
    rows = [r for r in table.read_text().splitlines() if r.startswith("| naive") or r.startswith("| softmax")]
    assert len(rows) == 2 and "/9 |" in rows[0] and "--only softmax" in rows[1]
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert runs == ["generic", "soe-naive", "soe-softmax"]  # one generic run for all variants
    assert ablate(["--config", str(path), "--only", "nope"]) == 2


@pytest.mark.slow
def test_demo_fixture_fallback_smoke(tmp_path, monkeypatch, capsys):
    """`make demo`'s orchestration on the committed fixture (the offline fallback), 3 steps per run."""
    from demo import main as demo

    monkeypatch.chdir(ROOT)
    assert demo(["--fixture", "--max-steps", "3", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "Held-out specialist sets" in out and "| austen |" in out and "fixture fallback" in out
    assert (tmp_path / "demo" / "report.md").is_file()


def test_interrupted_run_resumes_from_its_checkpoint(fixture_prepared, tmp_path, monkeypatch):
    """A training run killed after its last checkpoint (launch.json written, run.json not) is resumed
    from that checkpoint by the next experiment call, not retrained from step 0."""
    import torch

    from soe.train.checkpoint import load_checkpoint
    from studies.experiments.runs import budget, fit_args
    from studies.experiments.runs import train as train_run

    def train(name, config, runs, cfg, extra):
        common = [
            f"--data.data_dir={cfg.data_dir}",
            f"--seed_everything={cfg.seed}",
            f"--trainer.max_steps={cfg.max_steps}",
        ]
        args = fit_args(config, name, runs, common, cfg.overrides, extra)
        return train_run(name, runs, args, extra, budget(args))

    monkeypatch.chdir(ROOT)
    cfg = load_config(ROOT / "experiments/tiny.yaml")
    cfg.data_dir, cfg.max_steps = str(fixture_prepared), 2
    cfg.overrides = cfg.overrides + ["--model.net.n_layer=1", "--trainer.callbacks.init_args.every_n_train_steps=1"]
    runs = tmp_path / "runs"
    first = train("soe", cfg.soe_config, runs, cfg, [])
    assert "resumed" not in first and (runs / "soe" / "launch.json").is_file()
    ckpt = Path(first["checkpoint"])
    (runs / "soe" / "run.json").unlink()  # simulate the kill: the run never wrote run.json
    # mark the checkpoint: a resumed run carries the mark; a retrain from step 0 would not
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["state_dict"]["soup.shared.no_decay"] += 0.5  # the norms' flat buffer
    torch.save(state, ckpt)
    again = train("soe", cfg.soe_config, runs, cfg, [])
    assert again["resumed"] and again["steps"] == 2
    soup, _, _ = load_checkpoint(ckpt)
    assert torch.equal(soup.shared["no_decay"].detach(), state["state_dict"]["soup.shared.no_decay"])
    # a changed command (another step budget) does not resume: it trains from scratch, the old run kept aside
    (runs / "soe" / "run.json").unlink()
    cfg.max_steps = 3
    third = train("soe", cfg.soe_config, runs, cfg, [])
    assert "resumed" not in third and third["steps"] == 3
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 3  # not the stale step-2 file
    kept = list(runs.glob("soe.stale-*/checkpoints/last.ckpt"))
    assert len(kept) == 1 and torch.load(kept[0], map_location="cpu", weights_only=True)["global_step"] == 2
    # a finished run whose last.ckpt stopped short (written before soe.train.callbacks.ModelCheckpoint) is not
    # reused as if it were final: it is finished from that checkpoint
    import shutil

    info = json.loads((runs / "soe" / "run.json").read_text())
    shutil.copy(kept[0], ckpt)  # a genuine step-2 checkpoint where run.json promises step 3
    fourth = train("soe", cfg.soe_config, runs, cfg, [])
    assert (
        fourth["wall_s"] != info["wall_s"]
        and torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 3
    )


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_shipped_experiment_config_parses(path):
    import yaml

    from studies.experiments.config import SearchVariant, Variant
    from studies.experiments.search import load_search

    SEARCH_KEYS = {f.name for f in dataclasses.fields(SearchVariant)} - {f.name for f in dataclasses.fields(Variant)}
    raw = yaml.safe_load((ROOT / "experiments" / path).read_text())
    if "variants" in raw and any(k in v for v in raw["variants"] for k in SEARCH_KEYS):  # studies.experiments.search
        cfg = load_search(str(ROOT / "experiments" / path))[0]
    elif "variants" in raw:  # an ablation (studies.experiments.ablate): one experiment and named variants of it
        from studies.experiments.ablate import load_ablation

        cfg = load_ablation(str(ROOT / "experiments" / path))[0]
    elif "teams" in raw:  # the merging experiment (studies.merging)
        from studies.merging.config import load_config as load_merging

        cfg = load_merging(ROOT / "experiments" / path)
    else:
        cfg = load_config(ROOT / "experiments" / path)
    for config in (cfg.soe_config, cfg.generic_config):
        assert (ROOT / config).is_file(), config


def test_report_never_picks_the_soe_column_on_the_evaluation_split():
    from studies.experiments.report import set_table, soe_answer

    row = {"generic": 5.0, "soe_hist": 4.8, "soe_refined": 4.9, "dedicated": 4.6}  # refined worse on eval
    assert soe_answer(row) == 4.9  # the refined h is the answer when it was computed
    lines = set_table({"sets": {"x": row}}).splitlines()
    assert lines[-2].endswith("| -0.100 | 25% |"), lines[-2]
    assert lines[-1].startswith("| **mean** |") and lines[-1].endswith(" -0.100 | 25% |"), lines[-1]
    row["ci_soe_refined"] = [-0.15, -0.05]
    assert set_table({"sets": {"x": row}}).splitlines()[-2].endswith("| -0.100 [-0.150, -0.050] | 25% |")
    assert soe_answer({"generic": 5.0, "soe_hist": 4.8}) == 4.8


def test_window_losses_average_to_model_loss_and_intervals_cover_the_truth():
    import numpy as np
    import torch

    from soe.core.model import LlamaLM, ModelConfig
    from soe.specialists.evaluate import model_loss, paired_interval, window_losses

    torch.manual_seed(0)
    net = LlamaLM(ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, max_seq_len=16))
    wins = torch.randint(0, 64, (9, 17))
    per = window_losses(net, wins, batch_size=4)
    assert per.shape == (9,) and per.mean() == pytest.approx(model_loss(net, wins, batch_size=4), rel=1e-6)
    rng = np.random.default_rng(0)  # paired windows: a is b shifted by -0.1 plus noise
    b = rng.normal(3.0, 1.0, 400)
    a = b - 0.1 + rng.normal(0, 0.05, 400)
    lo, hi = paired_interval(a, b, n_boot=1000)
    assert lo < -0.1 < hi and hi < 0 and hi - lo < 0.03  # pairing removes the windows' own spread
    lo2, hi2 = paired_interval(a, rng.permutation(b), n_boot=1000)
    assert hi2 - lo2 > 5 * (hi - lo)  # unpaired, the same means are far less certain
    with pytest.raises(ValueError, match="equal-length"):
        paired_interval(a[:1], b[:1])


def _tiny_run(name, config, runs, data_dir, steps=2):
    """One experiment training run (runs.train) of ``config`` at test size, as run() would launch it."""
    from studies.experiments.runs import budget, fit_args, train

    common = [f"--data.data_dir={data_dir}", "--seed_everything=0", f"--trainer.max_steps={steps}"]
    over = ["--trainer.enable_progress_bar=false", "--model.net.n_layer=1", "--trainer.val_check_interval=2"]
    args = fit_args(str(config), name, runs, common, over, [])
    return train(name, runs, args, [], budget(args))


def test_changed_training_config_retrains_and_keeps_the_old_run(fixture_prepared, tmp_path, capsys):
    """Harmful case: a run was reused after its training YAML changed (d_model, lr), reporting old numbers."""
    from soe.train.checkpoint import load_checkpoint

    config = tmp_path / "train.yaml"
    config.write_text((ROOT / "configs/tiny.yaml").read_text())
    runs = tmp_path / "runs"
    first = _tiny_run("soe", config, runs, fixture_prepared)
    capsys.readouterr()
    assert _tiny_run("soe", config, runs, fixture_prepared)["wall_s"] == first["wall_s"]  # same config: reused
    assert "reusing" in capsys.readouterr().out

    config.write_text(config.read_text().replace("d_model: 64", "d_model: 32").replace("lr: 3.0e-3", "lr: 1.0e-3"))
    second = _tiny_run("soe", config, runs, fixture_prepared)
    out = capsys.readouterr().out
    assert "reusing" not in out and "model.net.d_model 64 -> 32" in out and "model.optim.lr 0.003 -> 0.001" in out
    assert f"kept in {runs / 'soe.stale-1'}" in out
    assert load_checkpoint(second["checkpoint"])[0].net_cfg.d_model == 32 and "resumed" not in second
    old = json.loads((runs / "soe.stale-1" / "run.json").read_text())  # the old run is kept, not lost
    assert old["wall_s"] == first["wall_s"] and (runs / "soe.stale-1" / "checkpoints" / "last.ckpt").is_file()
    assert old["key"]["model.net.d_model"] == 64 and second["key"]["model.net.d_model"] == 32


def test_prepared_data_changes_the_key_and_old_runs_without_key_retrain(fixture_prepared, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fixture_prepared, data)
    runs = tmp_path / "runs"
    first = _tiny_run("generic", ROOT / "configs/tiny.yaml", runs, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["extra"]["tokenize_seconds"] = 99.0  # a timing: same data, same key
    (data / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert _tiny_run("generic", ROOT / "configs/tiny.yaml", runs, data)["wall_s"] == first["wall_s"]
    meta["extra"]["seed"] = 1  # re-prepared differently: another manifest
    (data / "meta.json").write_text(json.dumps(meta))
    _tiny_run("generic", ROOT / "configs/tiny.yaml", runs, data)
    assert "prepared_data.meta_sha256" in capsys.readouterr().out
    info = json.loads((runs / "generic" / "run.json").read_text())  # a run.json written before runs had a key
    del info["key"]
    (runs / "generic" / "run.json").write_text(json.dumps(info))
    again = _tiny_run("generic", ROOT / "configs/tiny.yaml", runs, data)
    assert "records no configuration key" in capsys.readouterr().out and again["wall_s"] != info["wall_s"]
    assert sorted(p.name for p in runs.iterdir()) == ["generic", "generic.stale-1", "generic.stale-2"]


@pytest.mark.parametrize("state", ["run.json", "launch.json"])
def test_truncated_state_file_is_named_and_the_run_retrained(fixture_prepared, tmp_path, capsys, state):
    runs = tmp_path / "runs"
    first = _tiny_run("soe", ROOT / "configs/tiny.yaml", runs, fixture_prepared)
    if state == "launch.json":  # an interrupted run: launch.json written, run.json not
        (runs / "soe" / "run.json").unlink()
    path = runs / "soe" / state
    truncated = path.read_text()[:40]
    path.write_text(truncated)  # a crash mid-write (before state files were written atomically)
    capsys.readouterr()
    again = _tiny_run("soe", ROOT / "configs/tiny.yaml", runs, fixture_prepared)
    out = capsys.readouterr().out
    assert f"{path}: corrupt run state file" in out and "retraining from scratch" in out
    assert again["wall_s"] != first["wall_s"] and "resumed" not in again
    assert (runs / "soe.stale-1" / state).read_text() == truncated  # kept aside, not overwritten
    json.loads((runs / "soe" / "run.json").read_text())  # the new state is whole


def test_report_names_the_prepared_data_and_its_corpus_lock():
    from studies.experiments.report import data_line

    data = {"data_dir": "data/demo", "prepared_data.meta_sha256": "ab" * 32}
    assert (
        data_line({"data": data})
        == "Prepared data: `data/demo` (meta.json sha256 abababababab…, no corpus lock recorded)."
    )
    assert data_line({"data": {**data, "prepared_data.corpus_lock": "c0ffee12"}}).endswith("corpus lock c0ffee12).")
    assert data_line({}) == ""  # results.json from before the data was recorded


def test_corpus_lock_in_meta_is_part_of_the_key(tmp_path):
    from studies.experiments.runkey import data_manifest

    (tmp_path / "meta.json").write_text(json.dumps({"domains": ["a"], "corpus_lock": {"id": "9f3c", "packages": []}}))
    assert data_manifest(tmp_path)["prepared_data.corpus_lock"] == "9f3c"
    (tmp_path / "meta.json").write_text('{"domains": ')
    with pytest.raises(ValueError, match=r"meta.json: corrupt prepared-data manifest"):
        data_manifest(tmp_path)
