"""Cross-check with mergekit (optional dependency, installed by the dev extra): the same config on the same
Hugging Face directories gives the same tensors for linear, task_arithmetic, ties and dare_linear (density 1)."""

from __future__ import annotations

import glob

import pytest
import torch
from safetensors.torch import load_file

from soe.merging.config import parse_config
from soe.merging.merge import merge

mergekit = pytest.importorskip("mergekit")


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    from specialize_helpers import NET, make_docs, perturbed_specialists, train_tokenizer

    root = tmp_path_factory.mktemp("mk")
    train_tokenizer(make_docs("cooking", 10, 0) + make_docs("law", 10, 1), root / "tokenizer.json")
    return perturbed_specialists(root, NET, root / "tokenizer.json", scale=0.02, fmt="hf")


def _mergekit(raw: dict, out) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(raw), out_path=str(out), options=MergeOptions(copy_tokenizer=False))
    tensors = {}
    for f in glob.glob(str(out / "*.safetensors")):
        tensors.update(load_file(f))
    return tensors


@pytest.mark.parametrize(
    "method,density,params",
    [
        ("linear", 1.0, {}),
        ("task_arithmetic", 1.0, {"lambda": 0.7}),
        ("ties", 0.4, {}),
        ("ties", 0.6, {"lambda": 0.8, "normalize": False}),
        ("dare_linear", 1.0, {}),
    ],
)
def test_same_tensors_as_mergekit(hf_models, tmp_path, method, density, params):
    raw = {
        "merge_method": method,
        "dtype": "float32",
        "parameters": params,
        "models": [
            {"model": str(hf_models[u]), "parameters": {"weight": w, "density": density}}
            for u, w in (("a", 1.0), ("b", 0.5), ("c", 1.0))
        ],
    }
    if method != "linear":
        raw["base_model"] = str(hf_models["base"])
    ours = merge(parse_config(raw), tmp_path / "ours", log=None)
    got = load_file(str(tmp_path / "ours" / "model.safetensors"))
    theirs = _mergekit(raw, tmp_path / "mergekit")
    theirs.pop("lm_head.weight", None)  # tied: mergekit may write the shared copy
    assert set(theirs) == set(got)
    for k in got:
        assert torch.allclose(got[k], theirs[k], atol=1e-6), (method, k, (got[k] - theirs[k]).abs().max())
    assert ours.tensors == len(got)
