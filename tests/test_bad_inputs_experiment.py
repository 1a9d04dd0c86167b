"""Bad inputs of ``python -m studies.experiments``: each refused in one line naming it, before anything trains.

A row is (id, experiment YAML or a patch of the valid one, extra arguments, expected fragment of the error).
The valid config trains two tiny runs; every row must be refused while nothing under the config directory,
the output directory or the prepared data changes (no run directory, no report).
"""

from pathlib import Path

import pytest
import yaml
from bad_inputs import assert_refused

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny.yaml")

ROWS = [
    ("missing config", None, [], "experiment config"),
    ("config is a directory", "DIR", [], "it is a directory"),
    ("YAML syntax error", "data_dir: [unclosed\n", [], "not valid YAML"),
    ("not a mapping", "- data_dir\n- max_steps\n", [], "expected a mapping"),
    ("unknown key", {"steps": 3}, [], "unknown keys ['steps']; expected some of"),
    ("word for a number", {"eval_windows": "lots"}, [], "eval_windows='lots': expected a positive integer"),
    ("zero windows", {"eval_windows": 0}, [], "eval_windows=0: expected a positive integer"),
    ("negative steps", {"max_steps": -5}, [], "max_steps=-5: expected a positive integer or null"),
    ("string for a boolean", {"dedicated": "yes please"}, [], "dedicated='yes please': expected true or false"),
    ("boolean for an integer", {"bootstrap": True}, [], "bootstrap=True: expected an integer"),
    ("too few resamples", {"bootstrap": 10}, [], "bootstrap=10: expected an integer ≥ 100"),
    ("learning rate out of range", {"finetune_lr": 5}, [], "finetune_lr=5: expected a learning rate in (0, 1)"),
    (
        "YAML 1.1 reads 3e-4 as a string",
        "RAW:finetune_lr: 3e-4\n",
        [],
        "finetune_lr='3e-4': expected a learning rate in (0, 1) (YAML reads 3e-4 as text: write it with a dot, e.g. 3.0e-04)",
    ),
    (
        "budgets not increasing",
        {"budgets": [3, 2]},
        [],
        "budgets=[3, 2]: expected a list of positive, strictly increasing",
    ),
    ("budget not below max_steps", {"budgets": [2, 4]}, [], "budgets: expected step counts below max_steps=4"),
    (
        "budget not below the config's steps",
        {"max_steps": None, "budgets": [40]},
        [],
        "exp.yaml: budgets: expected step counts below the runs' 40 steps",
    ),
    (
        "overrides not a list",
        {"overrides": "--trainer.max_steps=3"},
        [],
        "overrides='--trainer.max_steps=3': expected a list of train.py arguments",
    ),
    ("override without --", {"soe_overrides": ["model.soup.n_experts=2"]}, [], "starting with '--'"),
    ("override train.py refuses", {"overrides": ["--model.net.d_modl=3"]}, [], "train.py would refuse"),
    (
        "missing data_dir",
        {"data_dir": "/nonexistent/prepared"},
        [],
        "data_dir: /nonexistent/prepared is not a prepared",
    ),
    ("missing soe_config", {"soe_config": "/nonexistent/soe.yaml"}, [], "soe_config: training config /nonexistent"),
    ("--out is a file", {}, ["--out", "FILE"], "exists and is not a directory"),
    ("--runs missing", {}, ["--runs", "/nonexistent/runs"], "--runs /nonexistent/runs is not a directory"),
]


@pytest.mark.parametrize("case, config, extra, expect", ROWS, ids=[r[0] for r in ROWS])
def test_bad_experiment_input_is_refused_before_training(
    fixture_prepared, tmp_path, capsys, case, config, extra, expect
):
    cfg_dir, out = tmp_path / "cfg", tmp_path / "out"
    cfg_dir.mkdir()
    path = cfg_dir / "exp.yaml"
    base = {
        "data_dir": str(fixture_prepared),
        "soe_config": TINY,
        "generic_config": TINY,
        "max_steps": 4,
        "eval_windows": 4,
        "dedicated": False,
        "refine": False,
        "overrides": ["--trainer.enable_progress_bar=false", "--model.net.n_layer=1"],
    }
    if config == "DIR":
        path.mkdir()
    elif isinstance(config, str) and config.startswith("RAW:"):  # a line added to the valid config, as typed
        path.write_text(yaml.safe_dump(base) + config[4:])
    elif isinstance(config, str):
        path.write_text(config)
    elif isinstance(config, dict):
        path.write_text(yaml.safe_dump({**base, **config}))
    (cfg_dir / "a-file").write_text("not a directory\n")
    extra = [str(cfg_dir / "a-file") if a == "FILE" else a for a in extra]
    argv = ["--config", str(path), "--out", str(out), *extra]
    assert_refused(capsys, "experiment", argv, expect, watch=(cfg_dir, out, fixture_prepared))
    assert not out.exists()


def test_debug_raises_with_the_traceback(tmp_path):
    from studies.experiments.experiment import main

    with pytest.raises(FileNotFoundError, match="experiment config .* not found"):
        main(["--config", str(tmp_path / "missing.yaml"), "--debug"])


ABLATION_ROWS = [
    ("no variants", {"variants": []}, "variants=[]: expected a non-empty list"),
    ("duplicate variant names", {"variants": [{"name": "a"}, {"name": "a"}]}, "names must be unique"),
    (
        "variant name with a slash",
        {"variants": [{"name": "../x"}]},
        "variants[0].name='../x': expected a non-empty directory",
    ),
    (
        "unknown variant key",
        {"variants": [{"name": "a", "override": ["--x"]}]},
        "variants[0]: unknown keys ['override']",
    ),
    ("bad experiment field", {"experiment": {"eval_windows": -1}}, "experiment.eval_windows=-1: expected a positive"),
]


@pytest.mark.parametrize("case, patch, expect", ABLATION_ROWS, ids=[r[0] for r in ABLATION_ROWS])
def test_bad_ablation_config_is_refused(tmp_path, capsys, case, patch, expect):
    from studies.experiments.ablate import main

    cfg = {
        "out": str(tmp_path / "out"),
        "experiment": {"soe_config": TINY, "generic_config": TINY},
        "variants": [{"name": "a"}],
    }
    path = tmp_path / "ablate.yaml"
    path.write_text(yaml.safe_dump({**cfg, **patch}))
    assert main(["--config", str(path), "--table", str(tmp_path / "t.md")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("studies.experiments.ablate: error: ") and expect in last and str(path) in last, last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablate.yaml"]
