"""`soe merge` end to end (instantiate → merge → evaluate / load in transformers) and its bad inputs."""

from __future__ import annotations

import json

import pytest
import yaml
from bad_inputs import assert_refused
from specialize_helpers import text_env

from soe.cli import main


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    prepared, ckpt = text_env(tmp_path_factory)
    root = tmp_path_factory.mktemp("mergecli")
    for dom in ("cooking", "law"):
        assert main(["instantiate", str(ckpt), "--weights", dom, "--out", str(root / dom), "--format", "hf"]) == 0
    cfg = {
        "merge_method": "ties",
        "base_model": {"soup": str(ckpt), "h": "alpha-mean"},
        "models": [{"model": str(root / d), "parameters": {"density": 0.5}} for d in ("cooking", "law")],
    }
    (root / "merge.yaml").write_text(yaml.safe_dump(cfg))
    (root / "bad.yaml").write_text("merge_method: ties\nmodels: [a]\n")  # no base_model
    (root / "texts.txt").write_text("the oven and the court\n\nthe rocket and the dough\n")
    return prepared, ckpt, root


def test_merge_then_evaluate_and_load_in_transformers(env, capsys):
    prepared, ckpt, root = env
    out = root / "merged"
    assert main(["merge", "--config", str(root / "merge.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "in-span share" in printed and "wrote" in printed
    info = json.loads((out / "soe_specialist.json").read_text())
    assert info["merge"]["method"] == "ties" and info["merge"]["soup_base"]["h_mode"] == "alpha-mean"
    assert len(info["merge"]["in_span_share"]) == 2
    assert main(["evaluate", "--specialist", str(out), "--texts", str(root / "texts.txt"), "--windows", "2"]) == 0
    transformers = pytest.importorskip("transformers")
    import torch

    from soe import api

    m = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = api.load(out).model
    x = torch.randint(0, ours.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.allclose(m(x).logits, ours(x), atol=1e-4)  # the merged export is the same model in transformers
    assert main(["merge", "--config", str(root / "merge.yaml"), "--report"]) == 0
    assert "span of the expert bank" in capsys.readouterr().out
    # --overwrite replaces our own merge
    assert main(["merge", "--config", str(root / "merge.yaml"), "--out", str(out), "--overwrite"]) == 0


ROWS = [
    (["--config", "{root}/missing.yaml", "--out", "{root}/o"], "merge config"),
    (["--config", "{root}/bad.yaml", "--out", "{root}/o"], "needs base_model"),
    (["--config", "{root}/merge.yaml"], "--out DIR is required"),
    (["--config", "{root}/merge.yaml", "--out", "{root}/cooking"], "is (or contains, or is inside) models[0]"),
    (["--config", "{root}/merge.yaml", "--out", "{root}/law", "--overwrite"], "models[1]"),
    (["--config", "{root}/merge.yaml", "--out", "{prepared}", "--overwrite"], "was not written by soe"),
    (["--config", "{root}/texts.txt", "--out", "{root}/o"], "expected a mapping"),
]


@pytest.mark.parametrize("argv,expect", ROWS)
def test_merge_bad_inputs(env, capsys, argv, expect):
    prepared, ckpt, root = env
    argv = [a.format(root=root, prepared=prepared) for a in argv]
    assert_refused(capsys, "soe", ["merge", *argv], expect, watch=(root, prepared))
