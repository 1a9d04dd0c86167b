"""The merging experiment at test size: every report section with numbers, selection never reads the evaluation
split, resume, markers, the greedy stopping rule and `soe finetune --stop-for-merge`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import assert_refused
from specialize_helpers import make_docs, text_env

from soe.cli import main as soe_main
from soe.data.windows import eval_windows
from soe.merging.stopping import greedy_checkpoints
from studies.merging import __main__ as entry
from studies.merging import evaluate as E
from studies.merging import study as ST
from studies.merging import teams as TM
from studies.merging.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"[-+]?\d+\.\d+")


@pytest.fixture(scope="module")
def tiny(fixture_prepared, tmp_path_factory):
    """One run of experiments/merging-tiny.yaml, recording when evaluation splits are read relative to selection."""
    cfg = load_config(ROOT / "experiments/merging-tiny.yaml")
    cfg.data_dir = str(fixture_prepared)
    out = tmp_path_factory.mktemp("merging") / "out"
    events: list[str] = []
    real_select, real_windows = ST.Study.select, TM.evaluation_windows

    def select(self, seed):
        events.append(f"select-start {seed}")
        try:
            return real_select(self, seed)
        finally:
            events.append(f"select-end {seed}")

    def windows(*a, **k):
        events.append("evaluation-read")
        return real_windows(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setattr(ST.Study, "select", select)
        mp.setattr(TM, "evaluation_windows", windows)
        mp.setattr(E, "evaluation_windows", windows)
        result = entry.run(cfg, out, source="experiments/merging-tiny.yaml")
    return cfg, out, result, events


def test_report_has_every_section_with_numbers(tiny):
    cfg, out, result, _ = tiny
    text = (out / "report.md").read_text()
    sections = [
        "## Predictions (written before the runs)",
        "## 1. Which method, which base",
        "### LoRA fine-tunes from the soup",
        "### Control: full fine-tunes from the generic model",
        "## 2. Undertraining and mergeability",
        "Mergeability-aware stopping",
        "Difficulty buckets",
        "## 3. Sequential vs parallel: planted markers",
    ]
    parts = re.split(r"\n(?=##)", text)
    for s in sections:
        assert s in text, s
    for part in parts[1:]:  # every section carries numbers
        assert len(NUMBER.findall(part)) >= 4, part[:80]
    for label in (
        "task_arithmetic/alpha-mean",
        "task_arithmetic/alpha-mean+proj",
        "ties/mean",
        "cat/mean",
        "lot/mean",
        "regmean/none",
        "semantic/mean",
        "dare_ties/mean",
        "linear/none",
    ):  # every method × base
        assert f"| {label} |" in text, label
    for ref in ("| individual |", "| multitask |", "| ensemble |", "| tuned TA |"):
        assert ref in text, ref
    for pid in cfg.predictions:  # each prediction with a verdict
        assert cfg.predictions[pid] in text
    assert re.search(r"\*\*(held|did not hold|mixed)", text)
    assert (out / "predictions.md").read_text().startswith("# Predictions, written")
    assert (out / "undertraining.png").is_file()
    res = json.loads((out / "results.json").read_text())
    for seed in map(str, cfg.seeds):
        full = res["seeds"][seed]["kinds"]["soup-full"]
        assert full["best"] in full["rows"] and np.isfinite(full["rows"][full["best"]]["mean"])
        lo, hi = full["ci_best_vs_ta"]
        delta = full["rows"][full["best"]]["mean"] - full["rows"][full["ta"]]["mean"]
        assert lo - 1e-9 <= delta <= hi + 1e-9
        assert len(res["seeds"][seed]["markers"]["sequential"]) == len(cfg.teams)


def test_evaluation_split_is_never_read_during_selection(tiny):
    _, _, _, events = tiny
    reads = [i for i, e in enumerate(events) if e == "evaluation-read"]
    last_selection = max(i for i, e in enumerate(events) if e.startswith("select-end"))
    assert reads, "the evaluation split was never read"
    assert min(reads) > last_selection, events
    # and selection itself never reads it: no read between any select-start and its select-end
    depth = 0
    for e in events:
        depth += e.startswith("select-start") - e.startswith("select-end")
        assert not (depth and e == "evaluation-read")


def test_choices_are_the_validation_argmin(tiny):
    _, out, result, _ = tiny
    for seed, sel in result["selections"].items():
        full = sel["kinds"]["soup-full"]
        for label, lab in full["labels"].items():
            pts = {k: v for k, v in full["rows"].items() if k.startswith(label + " ")}
            assert lab["best_val"] == pytest.approx(min(pts.values()))
        assert full["best"] == min(full["labels"], key=lambda k: full["labels"][k]["best_val"])


def test_rerun_reuses_everything_and_changed_settings_move_results_aside(tiny, capsys):
    cfg, out, result, _ = tiny
    ft = out / "finetunes" / f"seed-{cfg.seeds[0]}" / "soup-full" / cfg.teams[0] / "run.json"
    before = ft.stat().st_mtime_ns
    again = entry.run(cfg, out, source="experiments/merging-tiny.yaml")
    assert ft.stat().st_mtime_ns == before
    same = json.dumps(again["results"], sort_keys=True) == json.dumps(result["results"], sort_keys=True)
    assert same  # from the cached evaluation (compared as JSON: NaN of an empty bucket equals itself there)
    cfg2 = load_config(ROOT / "experiments/merging-tiny.yaml")
    cfg2.data_dir, cfg2.seeds, cfg2.steps = cfg.data_dir, cfg.seeds[:1], 4
    cfg2.sequential = cfg2.multitask = cfg2.generic_control = False
    cfg2.lora_rank = 0
    entry.run(cfg2, out, source="changed")
    assert (out / "stale-1" / "finetunes").is_dir() and "steps" in capsys.readouterr().out


def test_markers_are_planted_whole_in_fine_tuning_windows(fixture_prepared):
    tok = fixture_prepared / "tokenizer.json"
    markers = TM.make_markers(["a", "b"], 2, 1, seed=3, tokenizer_file=tok)
    assert [m.kind for m in markers] == ["specific"] * 4 + ["shared"] and len({m.text for m in markers}) == 5
    tokens = np.arange(5000, dtype=np.int64) % 50 + 10
    planted = TM.plant(tokens, markers, copies=3, seq_len=32, eos_id=0, seed=1)
    wins = eval_windows(planted, 32).tolist()
    for m in markers:  # every copy lies whole inside one window
        seq = [0] + m.prompt + m.answer + [0]
        found = sum(any(w[i : i + len(seq)] == seq for i in range(len(w) - len(seq) + 1)) for w in wins)
        assert found == 3, m.text
    with pytest.raises(ValueError, match="lower marker_copies"):
        TM.plant(tokens[:400], markers, copies=10, seq_len=32, eos_id=0, seed=1)


def test_greedy_checkpoints_finds_what_individual_stopping_misses():
    # the merge is best when model 0 stops early (step 4) although it is individually best at 16
    def value(c):
        return {4: 0.0, 8: 0.5, 16: 1.0}[c[0]] + {4: 0.3, 8: 0.2, 16: 0.1}[c[1]]

    calls = []
    choice, hist = greedy_checkpoints([[4, 8, 16], [4, 8, 16]], [16, 16], lambda c: calls.append(c) or value(c))
    assert choice == [4, 16] and len(hist) == 1 + 2 + 2 and hist[0]["choice"] == [16, 16]
    with pytest.raises(ValueError, match="must be one of its options"):
        greedy_checkpoints([[4, 8]], [16], value)


@pytest.mark.parametrize(
    "patch,expect",
    [
        ({"predictions": {"nonsense": "x"}}, "predictions: expected claim ids"),
        ({"grids": {"task_arithmetic": [{"lambda": 1.0}], "ties": [{"density": 2.0}]}}, "grids.ties[0]"),
        ({"grids": {"magic": [{}]}}, "grids.magic: unknown merge method"),
        ({"grids": {"ties": [{"density": 0.5}]}}, "task_arithmetic is required"),
        ({"teams": ["go"]}, "teams=['go']: expected a list of at least 2"),
        ({"validation_share": 0.95}, "validation_share"),
        ({"steps": 4, "first_checkpoint": 8}, "first_checkpoint"),
        ({"teams": ["go", "nosuchteam"]}, "nosuchteam"),
    ],
)
def test_bad_configs_are_refused_before_anything_runs(fixture_prepared, tmp_path, capsys, patch, expect):
    import yaml

    raw = yaml.safe_load((ROOT / "experiments/merging-tiny.yaml").read_text())
    raw.update(patch, data_dir=str(fixture_prepared))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    code = entry.main(["--config", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and expect in err and "Traceback" not in err and not out.exists(), err


def test_stop_for_merge_cli_merges_at_the_chosen_checkpoints(tmp_path_factory, capsys):
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("sfm")
    runs = []
    for topic, seed in (("cooking", 1), ("law", 2)):
        (root / f"{topic}.txt").write_text("\n\n".join(make_docs(topic, 40, seed=seed)))
        out = root / topic
        assert (
            soe_main(
                [
                    "finetune",
                    f"{ckpt}@{topic}",
                    "--texts",
                    str(root / f"{topic}.txt"),
                    "--out",
                    str(out),
                    "--steps",
                    "8",
                    "--eval-every",
                    "4",
                    "--batch-size",
                    "2",
                    "--warmup",
                    "1",
                    "--format",
                    "soe",
                ]
            )
            == 0
        )
        runs.append(out)
    base = root / "base"
    assert soe_main(["instantiate", str(ckpt), "--weights", "prior", "--out", str(base), "--format", "soe"]) == 0
    cfg = root / "merge.yaml"
    cfg.write_text(
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
        + "".join(f"  - model: {r}\n" for r in runs)
        + "parameters: {lambda: 0.5}\n"
    )
    merged = root / "merged"
    assert soe_main(["finetune", "--stop-for-merge", str(cfg), "--out", str(merged)]) == 0
    rec = json.loads((merged / "stop_for_merge.json").read_text())
    assert len(rec["history"]) == 1 + sum(len(o) - 1 for o in [["step-000004", "step-000008"]] * 2)
    best = min(rec["history"], key=lambda h: h["value"])
    assert rec["choice"] == best["choice"] or best["value"] >= rec["history"][0]["value"] - 1e-12
    from safetensors.torch import load_file

    got = load_file(str(merged / "model.safetensors"))
    b = load_file(str(base / "model.safetensors"))
    ins = [load_file(str(r / c / "model.safetensors")) for r, c in zip(runs, rec["choice"])]
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(got[name], b[name] + 0.5 * sum(t[name] - b[name] for t in ins), atol=1e-6)
    assert_refused(
        capsys,
        "soe",
        ["finetune", "--stop-for-merge", str(cfg), "--texts", "x", "--out", str(root / "x")],
        "drop SOURCE and --texts",
        watch=(root,),
    )
    assert_refused(capsys, "soe", ["finetune", "--out", str(root / "y")], "needs SOURCE and --texts", watch=(root,))


def test_marker_fact_score_separates_the_fact_from_the_template(fixture_prepared):
    markers = TM.make_markers(["a", "b"], 1, 1, seed=0, tokenizer_file=fixture_prepared / "tokenizer.json")
    known = set(markers[0].answer)

    class Knows(torch.nn.Module):  # prefers marker 0's answer tokens everywhere: knows that fact only
        def forward(self, x):
            logits = torch.zeros(*x.shape, 5000)
            logits[..., sorted(known)] = 5.0
            return logits

    loss, recall, fact = TM.marker_scores(Knows(), markers, eos_id=0)
    assert fact[0] < -1 and all(f > 0 for f, m in zip(fact[1:], markers[1:]) if not set(m.answer) <= known)
    assert loss[0] < loss[1:].min()
