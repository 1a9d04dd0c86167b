"""A dense Llama-style decoder LM that runs on any parameter dict.

RMSNorm, rotary position embeddings (Hugging Face convention: ``rotate_half`` on the two halves of
each head), SwiGLU MLP, no biases, optional tied embeddings, grouped-query attention through
``scaled_dot_product_attention``. Parameter names are those of Hugging Face ``LlamaForCausalLM``,
so a specialist's state dict exports without renaming.

The model holds no buffers: rotary tables are recomputed per call (T·d/2 numbers, negligible),
so ``torch.func.functional_call(model, params, (idx,))`` with a dict from the soup is all it takes
to run an instantiated Θ(h). ``soe.core.model`` knows nothing about soups.

Stacked models: every parameter may carry a leading model dimension M (a (M, out, in) matrix, a (M, d)
gain): then the batch (B, T) is M equal groups of B/M sequences, group m run by the parameters [m], in
one computation (batched matmuls; attention and everything else run on the whole batch as they are).
Logits stay (B, T, V) in batch order, the loss the mean over all tokens. Ordinary 2-D weights run the
plain dense model, exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    """Shape of the dense model Θ (shared by S, every expert and every specialist)."""

    vocab_size: int = 8192
    """Tokenizer vocabulary size (must equal the prepared data's vocab_size)."""
    n_layer: int = 4
    """Number of decoder blocks."""
    n_head: int = 4
    """Attention heads (query)."""
    n_kv_head: int | None = None
    """Key/value heads for grouped-query attention; None means n_head (multi-head attention)."""
    d_model: int = 256
    """Residual stream width; must be divisible by n_head."""
    d_ff: int | None = None
    """SwiGLU hidden width; None means Llama's rule: 8/3·d_model rounded up to a multiple of 64."""
    max_seq_len: int = 256
    """Longest context the model is trained for (exported as max_position_embeddings)."""
    rope_theta: float = 10000.0
    """Rotary base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = True
    """Share the input embedding with the output projection (no separate lm_head.weight)."""
    init_std: float = 0.02
    """Std of the normal init of linear/embedding weights; residual outputs get init_std/sqrt(2·n_layer)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_head:
            raise ValueError(f"ModelConfig.d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.kv_heads <= 0 or self.n_head % self.kv_heads:
            raise ValueError(f"ModelConfig.n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 64 * math.ceil(8 * self.d_model / 3 / 64)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count of one dense model (with tied embeddings counted once)."""
        d, L = self.d_model, self.n_layer
        kv = self.kv_heads * self.head_dim
        block = d * d * 2 + 2 * d * kv + 3 * d * self.ff_dim + 2 * d
        emb = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        total = L * block + emb + head + d
        return total - (emb if non_embedding else 0)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (fwd+bwd): 6·N for the matmuls plus 12·L·d·T for attention (PaLM)."""
        T = seq_len or self.max_seq_len
        n = self.num_params(non_embedding=True) + (self.vocab_size * self.d_model)  # lm_head matmul
        return 6 * n + 12 * self.n_layer * self.d_model * T

    def to_dict(self) -> dict:
        return asdict(self)


def group_size(B: int, M: int) -> int:
    """B/M sequences per stacked model; B must split into M equal groups."""
    if B % M:
        raise ValueError(f"batch of {B} sequences cannot be split into {M} equal groups (one per model)")
    return B // M


def groups(x: torch.Tensor, M: int) -> torch.Tensor:
    """(B, ..., d) → (M, B/M·..., d): the batch as M equal groups of sequences, one per stacked model."""
    group_size(x.shape[0], M)
    return x.reshape(M, -1, x.shape[-1])


class _StackedLinear(torch.autograd.Function):
    """x: (M, N, in) → x wᵀ: (M, N, out) for w: (M, out, in), one batched matmul, with ∂w written in w's own
    (M, out, in) layout: autograd's bmm backward gives it transposed, (M, in, out), which every consumer
    (the tied embedding's sum, the flat parameter vector it lands in) would then copy. F.linear's backward
    does this for 2-D weights by itself."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.bmm(x, w.mT)

    @staticmethod
    def backward(ctx, g):  # in g's dtype (autocast may have run the forward's bmm in bf16), ∂ in the inputs'
        x, w = ctx.saved_tensors
        gx = torch.bmm(g, w.to(g.dtype)).to(x.dtype) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.mT, x.to(g.dtype)).to(w.dtype) if ctx.needs_input_grad[1] else None
        return gx, gw


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x wᵀ for x: (B, ..., in) and w: (out, in), or M stacked models w: (M, out, in), one per group of B/M
    sequences: one batched matmul."""
    if w.ndim == 2:
        return F.linear(x, w)
    return _StackedLinear.apply(groups(x, w.shape[0]), w).view(*x.shape[:-1], w.shape[1])


class Linear(nn.Linear):
    """``nn.Linear`` without bias whose weight may be M stacked matrices (see `linear`)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose weight may be M stacked tables (M, V, d), one per group of B/M sequences."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.ndim == 2:
            return F.embedding(idx, w)
        M, B = w.shape[0], idx.shape[0]
        model = torch.arange(M, device=idx.device).repeat_interleave(group_size(B, M)).view(B, *[1] * (idx.ndim - 1))
        return w[model, idx]  # (B, ..., d): row idx of table m for the sequences of group m


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in (at least) float32 as Hugging Face does, then scale in the input dtype.
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        w = self.weight
        if w.ndim == 2:  # M stacked gains (M, d), one per group of sequences
            return (w.unsqueeze(1) * groups(xf, w.shape[0])).view(x.shape)
        return w * xf


def rotary_tables(T: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: (T, head_dim), HF layout (the frequencies repeated for the two halves)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.d_model, cfg.head_dim
        self.q_proj = Linear(d, cfg.n_head * hd)
        self.k_proj = Linear(d, cfg.kv_heads * hd)
        self.v_proj = Linear(d, cfg.kv_heads * hd)
        self.o_proj = Linear(cfg.n_head * hd, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=c.kv_heads != c.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, c.n_head * c.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.d_model, cfg.ff_dim)
        self.up_proj = Linear(cfg.d_model, cfg.ff_dim)
        self.down_proj = Linear(cfg.ff_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Named ``model`` inside `LlamaLM` to reproduce HF's ``model.layers.{i}...`` names."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class LlamaLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        # With tied embeddings there is no lm_head parameter at all (HF omits it from the state dict).
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2/Llama-style init; residual output projections scaled down by sqrt(2·n_layer)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0)  # RMSNorm gains
            else:
                s = (
                    std / math.sqrt(2 * self.cfg.n_layer)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else std
                )
                p.normal_(0.0, s, generator=generator)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx: (B, T) token ids → logits (B, T, V); with targets (B, T), also the mean next-token loss.
        With M stacked models (parameters with a leading M), group m of B/M sequences runs model m (module docstring)."""
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds ModelConfig.max_seq_len={self.cfg.max_seq_len}")
        x = self.model.embed_tokens(idx)  # (B, T, d)
        cos, sin = rotary_tables(T, self.cfg.head_dim, self.cfg.rope_theta, idx.device, x.dtype)
        for block in self.model.layers:
            x = block(x, cos, sin)
        x = self.model.norm(x)
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = linear(x, w)  # (B, T, V)
        if targets is None:
            return logits
        lf = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        loss = F.cross_entropy(lf.view(-1, lf.size(-1)), targets.reshape(-1))
        return logits, loss
