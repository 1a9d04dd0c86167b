"""The experiment's seed sets the data stream and the initialisation of every run, not only seed_everything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from studies.experiments.config import ExperimentConfig, validate
from studies.experiments.experiment import plan
from studies.experiments.runs import resolve, train

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/tiny.yaml")


def config(data_dir, seed: int, **kw) -> ExperimentConfig:
    return validate(
        ExperimentConfig(
            data_dir=str(data_dir),
            soe_config=TINY,
            generic_config=TINY,
            max_steps=2,
            dedicated=False,
            refine=False,
            finetune=False,
            eval_windows=4,
            seed=seed,
            overrides=[
                "--trainer.enable_progress_bar=false",
                "--trainer.val_check_interval=100",
                "--model.net.n_layer=1",
            ],
            **kw,
        )
    )


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_plan_sets_data_seed_and_init_seed(fixture_prepared, tmp_path, seed):
    runs = plan(config(fixture_prepared, seed), tmp_path / "runs", "soe", {})
    assert set(runs) == {"generic", "soe"}
    for name, (args, _, _) in runs.items():
        c = resolve(args)
        assert c.seed_everything == seed and c.data.seed == seed and c.model.soup.init_seed == seed, name


def test_seeds_resolve_to_different_runs(fixture_prepared, tmp_path):
    a, b = (plan(config(fixture_prepared, s), tmp_path / "runs", "soe", {}) for s in (0, 1))
    for name in ("generic", "soe"):
        ca, cb = resolve(a[name][0]), resolve(b[name][0])
        assert (ca.data.seed, ca.model.soup.init_seed) == (0, 0)
        assert (cb.data.seed, cb.model.soup.init_seed) == (1, 1)


def test_generic_overrides_reach_only_the_dense_baselines(fixture_prepared, tmp_path):
    cfg = config(
        fixture_prepared, 0, generic_overrides=["--model.optim.lr=1.0e-3"], soe_overrides=["--model.optim.lr=2.0e-3"]
    )
    h = torch.full((9,), 1 / 9)
    runs = plan(dataclasses.replace(cfg, dedicated=True), tmp_path / "runs", "soe", {"austen": h})
    lr = {name: resolve(args).model.optim.lr for name, (args, _, _) in runs.items()}
    assert lr == {"generic": 1.0e-3, "dedicated-austen": 1.0e-3, "soe": 2.0e-3}
    assert resolve(runs["soe"][0]).model.soup.n_experts > 0 and resolve(runs["generic"][0]).model.soup.n_experts == 0


def test_another_seed_trains_another_generic_model(fixture_prepared, tmp_path):
    """Two-step generic runs: seed 1 gives other weights than seed 0; seed 1 with data.seed and init_seed put
    back to 0 gives seed 0's weights (seed_everything alone changes nothing: the old behaviour)."""

    def weights(seed: int, name: str, extra: list[str] = ()) -> dict[str, torch.Tensor]:
        cfg = config(fixture_prepared, seed)
        cfg = dataclasses.replace(cfg, generic_overrides=list(extra))
        runs = plan(cfg, tmp_path / name, "soe", {})
        info = train("generic", tmp_path / name, *runs["generic"])
        state = torch.load(info["checkpoint"], map_location="cpu", weights_only=True)
        assert state["global_step"] == 2
        return state["state_dict"]

    w0, w1 = weights(0, "s0"), weights(1, "s1")
    assert w0.keys() == w1.keys()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    back = weights(1, "s1-back", ["--data.seed=0", "--model.soup.init_seed=0"])
    assert all(torch.equal(w0[k], back[k]) for k in w0)
