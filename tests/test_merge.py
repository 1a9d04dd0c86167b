"""`soe.merging.merge`: the streaming merge of specialist directories against per-tensor references."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from specialize_helpers import perturbed_specialists

from soe.core.model import LlamaLM, ModelConfig
from soe.merging import methods as M
from soe.merging.config import load_config, parse_config
from soe.merging.merge import merge, merge_tensors
from soe.specialists.export import load_specialist, save_specialist

CFG = ModelConfig(vocab_size=48, n_layer=2, n_head=2, d_model=16, max_seq_len=32)


@pytest.fixture(scope="module")
def specialists(tmp_path_factory):
    """A base specialist and three 'fine-tuned' ones (base + a random task vector), format soe."""
    root = tmp_path_factory.mktemp("merge")
    tok = root / "tokenizer.json"
    tok.write_text(json.dumps({"stand-in": True}))
    return root, perturbed_specialists(root, CFG, tok, info={"weights": {"x": 1.0}})


def _cfg(dirs, method, **params):
    models = [
        {"model": str(dirs[u]), "parameters": {"weight": w, "density": 0.5}}
        for u, w in (("a", 1.0), ("b", 0.5), ("c", 1.0))
    ]
    return parse_config(
        {"merge_method": method, "base_model": str(dirs["base"]), "models": models, "parameters": params}
    )


@pytest.mark.parametrize(
    "method,params",
    [
        ("linear", {}),
        ("task_arithmetic", {"lambda": 0.7}),
        ("ties", {}),
        ("ties", {"trim": "model"}),
        ("dare_linear", {"seed": 3}),
        ("dare_ties", {"rescale": "inverse"}),
    ],
)
def test_streaming_merge_equals_the_per_tensor_rule(specialists, tmp_path, method, params):
    _, dirs = specialists
    cfg = _cfg(dirs, method, **params)
    res = merge(cfg, tmp_path / "out", log=None)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    sd = {u: load_file(str(dirs[u] / "model.safetensors")) for u in ("base", "a", "b", "c")}
    w = [1.0, 0.5, 1.0]
    thr = None
    if params.get("trim") == "model":
        thr = [
            M.model_threshold(torch.cat([(sd[u][n] - sd["base"][n]).abs().reshape(-1) for n in sd["base"]]), 0.5)
            for u in "abc"
        ]
    for n, t in got.items():
        b, th = sd["base"][n], [sd[u][n] for u in "abc"]
        taus = [x - b for x in th]
        if method == "linear":
            want = sum(wi * x for wi, x in zip(w, th)) / sum(w)
        elif method == "task_arithmetic":
            want = b + 0.7 * sum(wi * x for wi, x in zip(w, taus))
        elif method == "ties":
            kept = [M.trim_threshold(x, thr[u]) if thr else M.trim_topk(x, 0.5) for u, x in enumerate(taus)]
            want = M.combine(b, kept, w, consensus=True, normalize=True)
        else:
            gens = [torch.Generator().manual_seed(M.tensor_seed(params.get("seed", 0), n, u)) for u in range(3)]
            kept = [M.dare_drop(x, 0.5, g, params.get("rescale", "l1")) for x, g in zip(taus, gens)]
            want = M.combine(b, kept, w, consensus=method == "dare_ties")
        assert torch.allclose(t, want, atol=1e-6), (method, n)
    assert res.tensors == len(got) and res.bytes_written > 0
    # the in-memory merge the merging experiment uses gives the same tensors as the streaming merge
    mem = merge_tensors(cfg, sd["base"], [sd[u] for u in "abc"])
    assert all(torch.equal(mem[n], got[n]) for n in got), method
    net, info = load_specialist(tmp_path / "out")  # a loadable specialist, with the merge recorded
    assert info["merge"]["method"] == method and len(info["merge"]["models"]) == 3
    assert sum(p.numel() for p in net.parameters()) == res.parameters


def test_merging_identical_specialists_returns_the_specialist(specialists, tmp_path):
    _, dirs = specialists
    import shutil

    copies = [str(shutil.copytree(dirs["a"], tmp_path / f"a{i}")) for i in range(3)]  # one path twice is refused
    for method in ("linear", "ties", "task_arithmetic"):
        cfg = parse_config(
            {
                "merge_method": method,
                "base_model": str(dirs["base"]),
                "models": copies,
                "parameters": {"lambda": 1 / 3} if method == "task_arithmetic" else {},
            }
        )
        merge(cfg, tmp_path / method, log=None)
        got, want = (
            load_file(str(tmp_path / method / "model.safetensors")),
            load_file(str(dirs["a"] / "model.safetensors")),
        )
        assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want), method


def test_incompatible_inputs_are_refused_naming_them(specialists, tmp_path):
    root, dirs = specialists
    other = ModelConfig(vocab_size=48, n_layer=1, n_head=2, d_model=16, max_seq_len=32)
    small = save_specialist(
        root / "small",
        {k: v.detach() for k, v in LlamaLM(other).named_parameters()},
        other,
        tokenizer_file=root / "tokenizer.json",
        eos_id=0,
        info={},
        fmt="soe",
        overwrite=True,
    )
    cfg = parse_config({"merge_method": "linear", "models": [str(dirs["a"]), str(small)]})
    with pytest.raises(ValueError, match=r"models\[1\].*small.*tensors differ"):
        merge(cfg, tmp_path / "x", log=None)
    cfg = parse_config({"merge_method": "linear", "models": [str(dirs["a"]), str(tmp_path / "nope")]})
    with pytest.raises(FileNotFoundError, match=r"models\[1\]"):
        merge(cfg, tmp_path / "y", log=None)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"merge_method": "soup", "models": ["a"]}, "merge_method='soup'"),
        ({"merge_method": "ties", "models": ["a"]}, "needs base_model"),
        ({"merge_method": "linear", "models": []}, "non-empty list"),
        (
            {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": True}}]},
            "weight=True: expected a number",
        ),
        (
            {"merge_method": "linear", "models": [{"model": "a", "parameters": {"density": 0}}]},
            "density=0: expected a number in",
        ),
        (
            {"merge_method": "linear", "models": [{"model": "a", "parameters": {"densty": 0.5}}]},
            r"unknown keys \['densty'\]",
        ),
        ({"merge_method": "ties", "base_model": "b", "models": ["a"], "parameters": {"trim": "layer"}}, "trim='layer'"),
        (
            {"merge_method": "dare_linear", "base_model": "b", "models": ["a"], "parameters": {"rescale": "l2"}},
            "rescale='l2'",
        ),
        ({"merge_method": "linear", "models": ["a"], "dtype": "int8"}, "dtype='int8'"),
        ({"merge_method": "linear", "models": ["a"], "tokenizer_source": "x"}, "unknown key"),
    ],
)
def test_config_errors_name_the_key(raw, match):
    with pytest.raises(ValueError, match=match):
        parse_config(raw, "merge.yaml")


def test_config_paths_resolve_relative_to_the_file(tmp_path):
    (tmp_path / "m.yaml").write_text("merge_method: linear\nmodels:\n  - model: a\n  - model: b\n")
    cfg = load_config(tmp_path / "m.yaml")
    assert [m.model for m in cfg.models] == [str(tmp_path / "a"), str(tmp_path / "b")]
    (tmp_path / "bad.yaml").write_text("merge_method: [linear\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.fixture(scope="module")
def text_specialists(tmp_path_factory):
    """Two 'fine-tuned' specialists with a real tokenizer and exemplar texts of their own topic."""
    from specialize_helpers import NET, make_docs, train_tokenizer

    root = tmp_path_factory.mktemp("merge_text")
    docs = {d: make_docs(d, 12, seed=i) for i, d in enumerate(["cooking", "law"])}
    train_tokenizer(docs["cooking"] + docs["law"], root / "tokenizer.json")
    torch.manual_seed(1)
    base = {k: v.detach().clone() for k, v in LlamaLM(NET).named_parameters()}
    dirs = {
        "base": save_specialist(
            root / "base", base, NET, tokenizer_file=root / "tokenizer.json", eos_id=0, info={}, fmt="soe"
        )
    }
    for i, d in enumerate(docs):
        g = torch.Generator().manual_seed(10 + i)
        p = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        dirs[d] = save_specialist(
            root / d, p, NET, tokenizer_file=root / "tokenizer.json", eos_id=0, info={}, fmt="soe"
        )
        (root / f"{d}.txt").write_text("\n\n".join(docs[d]))
    return root, dirs


@pytest.mark.parametrize("method", ["regmean", "lot", "cat"])
def test_data_aware_merge_uses_each_models_exemplar_features(text_specialists, tmp_path, method):
    from soe.merging import datamerge as D
    from soe.merging.features import collect, exemplar_windows

    root, dirs = text_specialists
    cfg = parse_config(
        {
            "merge_method": method,
            "base_model": str(dirs["base"]),
            "parameters": {"exemplar_tokens": 256},
            "models": [
                {"model": str(dirs[d]), "parameters": {"exemplars": str(root / f"{d}.txt")}} for d in ("cooking", "law")
            ],
        }
    )
    merge(cfg, tmp_path / "out", log=None)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    feats, thetas = [], []
    for d in ("cooking", "law"):
        net, _ = load_specialist(dirs[d])
        feats.append(collect(net, exemplar_windows(root / f"{d}.txt", root / "tokenizer.json", 0, 32, 256)))
        thetas.append(load_file(str(dirs[d] / "model.safetensors"))[name])
    base = load_file(str(dirs["base"] / "model.safetensors"))[name]
    grams = [f.gram[name] for f in feats]
    want = {
        "regmean": lambda: D.regmean(thetas, grams, 0.9),
        "lot": lambda: D.lot_linear(base, [t - base for t in thetas], grams),
        "cat": lambda: base + sum(D.cat_linear([t - base for t in thetas], grams, 4)),
    }[method]()
    assert torch.allclose(got[name], want, atol=1e-5)
    assert not torch.allclose(got[name], sum(thetas) / 2, atol=1e-4)  # not plain averaging


def test_data_aware_merge_needs_exemplars():
    with pytest.raises(ValueError, match=r"models\[0\].parameters.exemplars: merge_method cat needs"):
        parse_config({"merge_method": "cat", "base_model": "b", "models": ["a"]}, "merge.yaml")


@pytest.mark.parametrize(
    "weight,match",
    [(-1.0, "weight=-1.0: expected a number ≥ 0"), (float("nan"), "weight=nan is not finite"), (0.0, "sum to 0")],
)
def test_negative_nan_or_zero_weights_are_refused(weight, match):
    with pytest.raises(ValueError, match=match):
        parse_config({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": weight}}]}, "m.yaml")


def test_other_tokenizer_or_vocab_is_refused_and_nothing_written(specialists, tmp_path):
    root, dirs = specialists
    other_tok = tmp_path / "tok.json"
    other_tok.write_text(json.dumps({"another": "tokenizer"}))
    base = load_file(str(dirs["a"] / "model.safetensors"))
    odd = save_specialist(tmp_path / "odd-tok", base, CFG, tokenizer_file=other_tok, eos_id=0, info={}, fmt="soe")
    with pytest.raises(ValueError, match=r"models\[1\].*tokenizer.json differs"):
        merge(parse_config({"merge_method": "linear", "models": [str(dirs["a"]), str(odd)]}), tmp_path / "o1", log=None)
    cfg64 = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=32)
    big = save_specialist(
        tmp_path / "vocab64",
        {k: v.detach() for k, v in LlamaLM(cfg64).named_parameters()},
        cfg64,
        tokenizer_file=root / "tokenizer.json",
        eos_id=0,
        info={},
        fmt="soe",
    )
    with pytest.raises(ValueError, match=r"base_model .* has shape|models\[0\].*has shape"):
        merge(
            parse_config({"merge_method": "task_arithmetic", "base_model": str(big), "models": [str(dirs["a"])]}),
            tmp_path / "o2",
            log=None,
        )
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_too_few_exemplar_tokens_is_refused(text_specialists, tmp_path):
    root, dirs = text_specialists
    (tmp_path / "tiny.txt").write_text("oven")
    cfg = parse_config(
        {
            "merge_method": "regmean",
            "models": [
                {"model": str(dirs["cooking"]), "parameters": {"exemplars": str(tmp_path / "tiny.txt")}},
                {"model": str(dirs["law"]), "parameters": {"exemplars": str(root / "law.txt")}},
            ],
        }
    )
    with pytest.raises(ValueError, match="tiny.txt"):
        merge(cfg, tmp_path / "o", log=None)
    cfg = parse_config(
        {
            "merge_method": "cat",
            "base_model": str(dirs["base"]),
            "parameters": {"exemplar_tokens": 8},
            "models": [
                {"model": str(dirs[d]), "parameters": {"exemplars": str(root / f"{d}.txt")}} for d in ("cooking", "law")
            ],
        }
    )
    with pytest.raises(ValueError, match="exemplar token budget 8 is below one window"):
        merge(cfg, tmp_path / "o", log=None)
    assert not (tmp_path / "o").exists()


def test_semantic_merge_of_disjoint_layer_changes_keeps_both(specialists, tmp_path):
    # a changed only block 0, b only block 1: the data-free merge gives each block to the model that changed it
    root, dirs = specialists
    base = load_file(str(dirs["base"] / "model.safetensors"))
    a = {k: v + (0.3 * torch.randn_like(v) if k.startswith("model.layers.0.mlp") else 0) for k, v in base.items()}
    b = {k: v + (0.3 * torch.randn_like(v) if k.startswith("model.layers.1.mlp") else 0) for k, v in base.items()}
    da = save_specialist(tmp_path / "a", a, CFG, tokenizer_file=root / "tokenizer.json", eos_id=0, info={}, fmt="soe")
    db = save_specialist(tmp_path / "b", b, CFG, tokenizer_file=root / "tokenizer.json", eos_id=0, info={}, fmt="soe")
    cfg = parse_config({"merge_method": "semantic", "base_model": str(dirs["base"]), "models": [str(da), str(db)]})
    merge(cfg, tmp_path / "out", log=None)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for k in got:
        want = a[k] if k.startswith("model.layers.0.mlp") else b[k] if k.startswith("model.layers.1.mlp") else base[k]
        assert torch.allclose(got[k], want, atol=1e-5), k  # task arithmetic's average would halve each change


def test_shipped_merge_configs_parse():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "merge").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.models and cfg.merge_method, path
