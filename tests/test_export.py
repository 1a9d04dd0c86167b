"""Export: HF directories load with transformers and match our forward; tokenizer round-trips;
config values; own format; atomic writes (no half-written export, existing dirs refused)."""

import json

import pytest
import torch
from specialize_helpers import text_env

import soe
from soe.core.model import LlamaLM, ModelConfig
from soe.data.shards import sha256_file
from soe.specialists import export

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return text_env(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(env, tmp_path_factory):
    prepared, ckpt = env
    soup = soe.load(ckpt, data=prepared, device="cpu")
    out = tmp_path_factory.mktemp("export") / "spec"
    spec = soup.instantiate({"law": 0.7, "cooking": 0.3}, out)
    return soup, spec, out


def test_hf_logits_match_our_forward(exported):
    soup, spec, out = exported
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, soup.model.net_cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = soup.model(idx, h=soup.weights({"law": 0.7, "cooking": 0.3}))
        theirs = hf(input_ids=idx).logits
        mine = spec.model(idx)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine, ours, rtol=0, atol=0)
    assert ours.std() > 0  # a trained, non-trivial model


def test_hf_config_values(exported):
    soup, _, out = exported
    cfg = soup.model.net_cfg
    raw = json.loads((out / "config.json").read_text())
    assert raw["rope_theta"] == cfg.rope_theta and raw["rms_norm_eps"] == cfg.norm_eps
    assert raw["tie_word_embeddings"] is cfg.tie_embeddings and raw["vocab_size"] == cfg.vocab_size
    hc = transformers.AutoConfig.from_pretrained(str(out))
    assert hc.model_type == "llama"
    assert hc.rope_parameters["rope_theta"] == cfg.rope_theta and hc.rms_norm_eps == cfg.norm_eps
    assert hc.tie_word_embeddings == cfg.tie_embeddings and hc.vocab_size == cfg.vocab_size
    assert hc.max_position_embeddings == cfg.max_seq_len and hc.head_dim == cfg.head_dim
    assert hc.num_key_value_heads == cfg.kv_heads and hc.intermediate_size == cfg.ff_dim
    assert hc.hidden_size == cfg.d_model and hc.num_hidden_layers == cfg.n_layer
    assert hc.eos_token_id == spec_eos(out) and hc.bos_token_id == spec_eos(out)
    assert export.config_from_hf(raw) == ModelConfig(
        **{**cfg.to_dict(), "d_ff": cfg.ff_dim, "n_kv_head": cfg.kv_heads, "init_std": 0.02}
    )


def spec_eos(out):
    return json.loads((out / export.SOE_FILE).read_text())["eos_id"]


def test_tokenizer_round_trips(exported, env):
    prepared, _ = env
    _, spec, out = exported
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert sha256_file(out / "tokenizer.json") == sha256_file(prepared / "tokenizer.json")
    text = "The court ruled on the oven's flour — naïve café 😀\n\twith  spaces"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    from tokenizers import Tokenizer

    assert ids == Tokenizer.from_file(str(prepared / "tokenizer.json")).encode(text).ids  # same ids as the shards
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == spec_eos(out)


def test_own_format_round_trip_and_weights_recorded(exported, tmp_path):
    soup, spec, _ = exported
    out = spec.save(tmp_path / "own", fmt="soe")
    assert not (out / "config.json").exists() and (out / "tokenizer.json").is_file()
    back = soe.load(out, device="cpu")
    assert isinstance(back, soe.Specialist)
    for name, p in spec.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[name], p), name
    assert back.weights == pytest.approx({"cooking": 0.3, "law": 0.7, "space": 0.0})
    assert back.tokenizer_sha256 == soup.hp["tokenizer_sha256"]


def test_export_refuses_existing_dir_and_overwrites_on_request(exported, tmp_path):
    _, spec, _ = exported
    out = tmp_path / "taken"
    spec.save(out, fmt="soe")
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        spec.save(out)
    assert (out / "keep.txt").is_file() and not (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary directory left behind
    spec.save(out, overwrite=True)  # ours (it holds soe_specialist.json): replaced
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


@pytest.mark.parametrize("existing", [False, True])
def test_failed_export_leaves_nothing_half_written(exported, tmp_path, monkeypatch, existing):
    _, spec, _ = exported
    out = tmp_path / "spec"
    if existing:
        spec.save(out, fmt="soe")
    before = sorted(p.name for p in out.iterdir()) if existing else None

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "_hf_tokenizer_files", boom)  # fails after the weights were written
    with pytest.raises(RuntimeError, match="disk full"):
        spec.save(out, overwrite=True)
    if existing:
        assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == (["spec"] if existing else [])


def test_tied_and_untied_gqa_models_export(tmp_path, env):
    prepared, _ = env
    for tie in (True, False):
        cfg = ModelConfig(
            vocab_size=320,
            n_layer=2,
            n_head=4,
            n_kv_head=2,
            d_model=32,
            max_seq_len=16,
            tie_embeddings=tie,
            rope_theta=5e5,
            norm_eps=1e-6,
        )
        net = LlamaLM(cfg)
        net.reset_parameters(torch.Generator().manual_seed(1))
        out = export.save_specialist(
            tmp_path / f"m{tie}",
            dict(net.named_parameters()),
            cfg,
            tokenizer_file=prepared / "tokenizer.json",
            eos_id=0,
            info={},
        )
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        idx = torch.randint(0, 320, (1, 16))
        with torch.no_grad():
            torch.testing.assert_close(hf(input_ids=idx).logits, net(idx), rtol=1e-4, atol=1e-4)
        loaded, _ = export.load_specialist(out)
        assert loaded.cfg == cfg


def test_save_rejects_mismatched_params(tmp_path, env):
    prepared, _ = env
    cfg = ModelConfig(vocab_size=320, n_layer=1, n_head=2, d_model=32, max_seq_len=16)
    params = dict(LlamaLM(cfg).named_parameters())
    params.pop("model.norm.weight")
    with pytest.raises(ValueError, match="missing"):
        export.save_specialist(
            tmp_path / "x", params, cfg, tokenizer_file=prepared / "tokenizer.json", eos_id=0, info={}
        )
    assert not (tmp_path / "x").exists()


def test_plain_hf_directory_loads_without_soe_metadata(exported, tmp_path):
    import shutil

    _, spec, out = exported
    plain = shutil.copytree(out, tmp_path / "plain")
    (plain / export.SOE_FILE).unlink()
    back = soe.load(plain, device="cpu")
    assert back.eos_id == spec.eos_id and back.weights is None
    idx = torch.randint(0, spec.model.cfg.vocab_size, (1, 16))
    with torch.no_grad():
        assert torch.equal(back.model(idx), spec.model(idx))
    assert all((plain / f).stat().st_mode & 0o044 for f in ("model.safetensors", "config.json"))  # readable by others
