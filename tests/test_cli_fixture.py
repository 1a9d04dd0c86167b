"""Acceptance of issue 4 on the real pipeline: prepare the committed fixture, train configs/tiny.yaml
for a few steps, then estimate → instantiate → evaluate → generate from the CLI; the export loads
with transformers, matches our logits, and its tokenizer (the real byte-level BPE) round-trips."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
transformers = pytest.importorskip("transformers")


def test_fixture_end_to_end(tmp_path, monkeypatch, capsys):
    from data_prep.prepare import main as prepare
    from soe.cli import main as soe_main
    from soe.train.cli import main as train

    monkeypatch.chdir(ROOT)  # the fixture config names its sources relative to the repository
    data = tmp_path / "fixture"
    assert prepare(["--config", "data_prep/configs/fixture.yaml", "--out", str(data)]) == 0
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    train(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            f"--data.data_dir={data}",
            f"--model.net.vocab_size={vocab}",
            "--trainer.max_steps=10",
            "--trainer.val_check_interval=10",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}/runs",
            f"--trainer.callbacks.init_args.dirpath={tmp_path}/ck",
            "--trainer.callbacks.init_args.every_n_train_steps=10",
        ]
    )
    ckpt = tmp_path / "ck" / "last.ckpt"
    capsys.readouterr()

    w, spec = tmp_path / "weights.json", tmp_path / "spec"
    inhouse = data / "specialists" / "metamath" / "inhouse.jsonl"
    assert soe_main(["estimate-weights", str(ckpt), "--data", str(data), "--texts", str(inhouse), "--out", str(w)]) == 0
    weights = json.loads(w.read_text())
    assert max(weights, key=weights.get) == "math", weights  # metamath proofs look like the math domain
    assert soe_main(["instantiate", str(ckpt), "--data", str(data), "--weights", str(w), "--out", str(spec)]) == 0
    assert (
        soe_main(
            [
                "evaluate",
                "--specialist",
                str(spec),
                "--ckpt",
                str(ckpt),
                "--data",
                str(data),
                "--prior",
                "--windows",
                "16",
                "--json",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert {"austen", "go", "metamath", "math"} <= {r["set"] for r in rows}
    assert all(r["bits_per_byte"] is not None and r["bits_per_byte"] > 0 for r in rows)
    assert soe_main(["generate", str(spec), "--prompt", "theorem", "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "instantiated Θ(h)" in out and "| spec | metamath |" in out

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(spec), dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(spec))
    import soe

    ours = soe.load(spec, device="cpu")
    text = "It is a truth universally acknowledged, that a single man — 'naïve' — func main() {}"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=torch.tensor([ids])).logits, ours.model(torch.tensor([ids])), rtol=1e-4, atol=1e-4
        )
