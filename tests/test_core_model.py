"""The dense model against an independent reference forward and against Hugging Face Llama."""

import math

import pytest
import torch

from soe.core.model import LlamaLM, ModelConfig


def reference_forward(sd: dict, cfg: ModelConfig, idx: torch.Tensor) -> torch.Tensor:
    """Llama written from the paper's equations with plain tensor ops and an explicit causal mask."""
    B, T = idx.shape
    H, Hkv, hd = cfg.n_head, cfg.kv_heads, cfg.head_dim

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps))

    def rope(x):  # x: (B, h, T, hd); pairs (i, i + hd/2) rotate by angle pos·θ^(-2i/hd)
        half = hd // 2
        ang = torch.arange(T, dtype=torch.float64)[:, None] * cfg.rope_theta ** (
            -torch.arange(half, dtype=torch.float64) * 2 / hd
        )
        c, s = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a * c - b * s, a * s + b * c], dim=-1)

    x = sd["model.embed_tokens.weight"][idx]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        hN = rms(x, sd[p + "input_layernorm.weight"])
        q = (hN @ sd[p + "self_attn.q_proj.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (hN @ sd[p + "self_attn.k_proj.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        v = (hN @ sd[p + "self_attn.v_proj.weight"].T).view(B, T, Hkv, hd).transpose(1, 2)
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        att = (rope(q) @ rope(k).transpose(-1, -2)) / math.sqrt(hd) + mask
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * hd)
        x = x + y @ sd[p + "self_attn.o_proj.weight"].T
        hN = rms(x, sd[p + "post_attention_layernorm.weight"])
        g = hN @ sd[p + "mlp.gate_proj.weight"].T
        u = hN @ sd[p + "mlp.up_proj.weight"].T
        x = x + (g * torch.sigmoid(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    x = rms(x, sd["model.norm.weight"])
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return x @ head.T


@pytest.mark.parametrize("tie,kv", [(True, None), (False, 2)])
def test_matches_independent_reference(tie, kv):
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=kv, d_model=32, max_seq_len=16, tie_embeddings=tie)
    net = LlamaLM(cfg).double()
    net.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():  # non-trivial norm gains so a wrong norm placement shows
        for n, p in net.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
    ref = reference_forward(dict(net.state_dict()), cfg, idx)
    torch.testing.assert_close(net(idx), ref, rtol=1e-10, atol=1e-10)
    assert ("lm_head.weight" in net.state_dict()) == (not tie)


def test_matches_hugging_face_llama():
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(
        vocab_size=101,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        d_model=32,
        max_seq_len=32,
        tie_embeddings=False,
        rope_theta=500.0,
    )
    net = LlamaLM(cfg)
    net.reset_parameters(torch.Generator().manual_seed(0))
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ff_dim,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(net(idx), hf(idx).logits, rtol=1e-4, atol=1e-4)


def test_param_count_and_flops():
    cfg = ModelConfig(vocab_size=1000, n_layer=3, n_head=4, d_model=64, tie_embeddings=False)
    assert cfg.num_params() == sum(p.numel() for p in LlamaLM(cfg).parameters())
    tied = ModelConfig(vocab_size=1000, n_layer=3, n_head=4, d_model=64)
    assert tied.num_params() == sum(p.numel() for p in LlamaLM(tied).parameters())
    assert tied.flops_per_token() > 6 * tied.num_params(non_embedding=True)


@pytest.mark.parametrize(
    "kw,msg",
    [({"d_model": 30, "n_head": 4}, "divisible"), ({"n_kv_head": 3}, "n_kv_head"), ({"vocab_size": 0}, "vocab_size")],
)
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig(**kw)


def test_too_long_sequence():
    net = LlamaLM(ModelConfig(vocab_size=10, n_layer=1, n_head=2, d_model=8, max_seq_len=4))
    with pytest.raises(ValueError, match="max_seq_len"):
        net(torch.zeros(1, 5, dtype=torch.long))
