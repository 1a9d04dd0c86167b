"""The streaming merge: one tensor name at a time from every input, never all state dicts at once.

Inputs are specialist directories (``model.safetensors`` + ``soe_specialist.json`` and/or HF ``config.json``,
``tokenizer.json``). safetensors files are memory-mapped and read tensor by tensor, so peak memory is the
output model plus one tensor per input (TIES over the whole model adds one pass that keeps one float32
magnitude per parameter of the model being scanned). The output directory is the base's (or the first
model's) files with the merged weights and a ``merge`` record in soe_specialist.json; it is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soe.merging import datamerge as D
from soe.merging import methods as M
from soe.merging.config import DATA_METHODS, MergeConfig
from soe.merging.features import Features, collect, exemplar_windows
from soe.merging.soupbase import bank_coordinates, soup_base
from soe.specialists.export import SOE_FILE, WEIGHTS_FILE, atomic_dir


@dataclass
class MergeResult:
    out: str
    method: str
    tensors: int
    parameters: int
    bytes_read: int
    bytes_written: int
    seconds: float
    in_span_share: list[float] | None = None
    """With a soup base: ‖part of τ_u in the bank's span‖ / ‖τ_u‖ per model."""


class _Tensors:
    """An in-memory base (a soup's Θ) with the interface of `_Weights`."""

    def __init__(self, tensors: dict[str, torch.Tensor], role: str, tokenizer_sha256: str | None):
        self.t, self.role, self.dir, self.tok = tensors, role, None, tokenizer_sha256
        self.names, self.bytes = list(tensors), 0

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.t[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self.t[name]


class _Weights:
    """Lazy, memory-mapped access to one specialist directory's model.safetensors."""

    def __init__(self, directory: str, role: str):
        from safetensors import safe_open

        self.dir = Path(directory)
        path = self.dir / WEIGHTS_FILE
        if not self.dir.is_dir():
            raise FileNotFoundError(f"{role} {self.dir}: not a directory (expected a specialist directory)")
        if not path.is_file():
            raise FileNotFoundError(f"{role} {self.dir}: no {WEIGHTS_FILE} (expected a specialist directory)")
        try:
            self.f = safe_open(str(path), framework="pt")
            self.names = list(self.f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{role} {path}: not a readable safetensors file ({e})") from None
        self.role, self.bytes = role, path.stat().st_size
        self.tok = _tokenizer_hash(self.dir)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.f.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self.f.get_tensor(name).float()


def _tokenizer_hash(d: Path) -> str | None:
    p = d / "tokenizer.json"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def _check_compatible(base: _Weights, models: list[_Weights]) -> list[str]:
    """The common tensor names, after checking every input has the same names, shapes and tokenizer."""
    names = base.names
    for m in models:
        if set(m.names) != set(names):
            diff = sorted(set(m.names) ^ set(names))[:3]
            raise ValueError(f"{m.role} {m.dir}: its tensors differ from {base.role} {base.dir} (e.g. {diff}): "
                             "expected specialists of the same architecture")
        for n in names:
            if m.shape(n) != base.shape(n):
                raise ValueError(f"{m.role} {m.dir}: tensor {n} has shape {m.shape(n)}, {base.role} has "
                                 f"{base.shape(n)}: expected specialists of the same architecture")
        if base.tok is not None and m.tok != base.tok:
            raise ValueError(f"{m.role} {m.dir}: its tokenizer.json differs from {base.role}'s "
                             f"({base.dir or 'the soup'}): merged models must share one tokenizer")
    return names


def _model_thresholds(cfg: MergeConfig, base: _Weights, models: list[_Weights], names: list[str]) -> list[float]:
    """TIES over the whole model: each model's magnitude threshold for its density (one model at a time)."""
    out = []
    for spec, m in zip(cfg.models, models):
        mags = torch.cat([(m.get(n) - base.get(n)).abs().reshape(-1) for n in names])
        out.append(M.model_threshold(mags, spec.density))
        del mags
    return out


def model_features(cfg: MergeConfig, log=print) -> list[Features]:
    """Each model's layer-input statistics on its own exemplars (one model in memory at a time)."""
    from soe.specialists.export import load_specialist

    feats = []
    for i, spec in enumerate(cfg.models):
        net, info = load_specialist(spec.model)
        d = Path(spec.model)
        eos = info.get("eos_id")
        if eos is None and (d / "config.json").is_file():
            eos = json.loads((d / "config.json").read_text()).get("eos_token_id")
        if eos is None or not (d / "tokenizer.json").is_file():
            raise ValueError(f"models[{i}] {d}: needs tokenizer.json and an eos id to tokenize its exemplars")
        seq = min(net.cfg.max_seq_len, 256)
        wins = exemplar_windows(spec.exemplars, d / "tokenizer.json", int(eos), seq, int(cfg.knob("exemplar_tokens")))
        feats.append(collect(net, wins))
        if log:
            log(f"  models[{i}]: layer inputs of {feats[-1].tokens} exemplar tokens from {spec.exemplars}")
        del net
    return feats


def _data_tensor(cfg: MergeConfig, name: str, base, thetas, feats: list[Features]) -> torch.Tensor:
    """RegMean / LOT / CAT for one tensor; tensors with no layer statistics use the weighted mean (module doc)."""
    method, lam = cfg.merge_method, cfg.lam
    weights = [m.weight for m in cfg.models]
    if method == "regmean":
        if name in feats[0].gram:
            return D.regmean(thetas, [f.gram[name] for f in feats], cfg.knob("alpha"))
        return M.linear(thetas, weights)
    taus = [t - base for t in thetas]
    if name in feats[0].gram:
        grams = [f.gram[name] for f in feats]
        if method == "lot":
            return D.lot_linear(base, taus, grams, lam, cfg.knob("ridge"))
        taus = D.cat_linear(taus, grams, int(cfg.knob("rank")), cfg.knob("conflict_lambda"))
    elif name in feats[0].energy:
        energies = [f.energy[name] for f in feats]
        if method == "lot":
            return D.lot_gain(base, taus, energies, lam)
        taus = D.cat_gain(taus, energies, cfg.knob("norm_share"), cfg.knob("conflict_lambda"))
    elif method == "lot":
        return M.combine(base, taus, weights, lam, normalize=True)
    return M.combine(base, taus, weights, lam)


def merge_tensor(cfg: MergeConfig, name: str, base: torch.Tensor | None, thetas: list[torch.Tensor],
                 thresholds: list[float] | None = None, feats: list[Features] | None = None,
                 bank: torch.Tensor | None = None, delta: torch.Tensor | None = None) -> torch.Tensor:
    """One merged tensor by ``cfg.merge_method`` (float32). With ``bank`` (n, *S) and the task vectors' bank
    coordinates ``delta`` (m, n): the in-span parts are combined in α-space, the residuals by the method."""
    weights = [m.weight for m in cfg.models]
    method = cfg.merge_method
    if bank is not None:
        span = [torch.tensordot(d.float(), bank, dims=1) for d in delta]  # Σ_j δ_uj E_j, each (*S)
        moved = M.combine(torch.zeros_like(base), span, weights, cfg.lam, normalize=cfg.normalize)
        resid = merge_tensor(cfg, name, base, [t - s for t, s in zip(thetas, span)], thresholds, feats)
        return resid + moved
    if method in DATA_METHODS:
        return _data_tensor(cfg, name, base, thetas, feats)
    if method == "linear":
        return M.linear(thetas, weights, cfg.normalize)
    taus = [t - base for t in thetas]
    if method == "ties":
        if cfg.parameters.get("trim", "tensor") == "model":
            taus = [M.trim_threshold(t, thr) for t, thr in zip(taus, thresholds)]
        else:
            taus = [M.trim_topk(t, m.density) for t, m in zip(taus, cfg.models)]
    elif method.startswith("dare_"):
        seed, rescale = int(cfg.parameters.get("seed", 0)), cfg.parameters.get("rescale", "l1")
        taus = [M.dare_drop(t, m.density, torch.Generator().manual_seed(M.tensor_seed(seed, name, u)), rescale)
                for u, (t, m) in enumerate(zip(taus, cfg.models))]
    consensus = method in ("ties", "dare_ties")
    return M.combine(base, taus, weights, cfg.lam, consensus=consensus, normalize=cfg.normalize)


def _write_info(tmp: Path, cfg: MergeConfig, result: dict) -> None:
    """soe_specialist.json / config.json of the template, with the merge recorded and the dtype updated."""
    record = {"method": cfg.merge_method, "base_model": cfg.base_model, "parameters": cfg.parameters,
              "models": [asdict(m) for m in cfg.models], **result}
    for fname in (SOE_FILE, "config.json"):
        p = tmp / fname
        if not p.is_file():
            continue
        info = json.loads(p.read_text())
        if fname == SOE_FILE:
            info["dtype"] = cfg.dtype
            info["merge"] = record
        else:
            info["torch_dtype"] = info["dtype"] = cfg.dtype
        p.write_text(json.dumps(info, indent=2) + "\n")


def bank_projection(base, models: list[_Weights], bank: dict[str, torch.Tensor], names: list[str]):
    """(δ (m, n), in-span share per model): the task vectors' least-squares coordinates in the expert bank."""
    n = next(iter(bank.values())).shape[0]
    gram, dots, norms = torch.zeros(n, n, dtype=torch.float64), torch.zeros(len(models), n, dtype=torch.float64), []
    sq = torch.zeros(len(models), dtype=torch.float64)
    for name in names:
        e = bank[name].reshape(n, -1).double()
        gram += e @ e.T
        b = base.get(name).reshape(-1).double()
        for u, m in enumerate(models):
            tau = m.get(name).reshape(-1).double() - b
            dots[u] += e @ tau
            sq[u] += tau @ tau
    delta = bank_coordinates(dots, gram)
    span = torch.einsum("un,nm,um->u", delta, gram, delta).clamp_min(0).sqrt()
    norms = (span / sq.sqrt().clamp_min(1e-30)).tolist()
    return delta, norms


def merge(cfg: MergeConfig, out: str | os.PathLike, overwrite: bool = False, log=print) -> MergeResult:
    """Merge ``cfg.models`` into a specialist directory ``out`` (atomic; see module docstring)."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    models = [_Weights(m.model, f"models[{i}]") for i, m in enumerate(cfg.models)]
    sb, delta, in_span = None, None, None
    if isinstance(cfg.base_model, dict):
        infos = [_specialist_info(m.dir) for m in models]
        sb = soup_base(cfg.base_model, infos, [m.weight for m in cfg.models], with_bank=True)
        base = _Tensors(sb.tensors, "base_model (soup)", sb.tokenizer_sha256)
    else:
        base = _Weights(cfg.base_model, "base_model") if cfg.base_model else None
    ref = base or models[0]
    names = _check_compatible(ref, models if base else models[1:])
    if sb is not None:
        delta, in_span = bank_projection(base, models, sb.bank, names)
        if log:
            log("  in-span share of each task vector: " + ", ".join(f"models[{u}] {s:.3f}" for u, s in enumerate(in_span)))
        if not cfg.parameters.get("bank_projection"):
            sb.bank, delta = {}, None
    thresholds = None
    if cfg.merge_method == "ties" and cfg.parameters.get("trim") == "model":
        thresholds = _model_thresholds(cfg, base, models, names)
    feats = model_features(cfg, log) if cfg.merge_method in DATA_METHODS else None
    dtype = getattr(torch, cfg.dtype)
    merged, n_params = {}, 0
    for i, name in enumerate(names):
        b = base.get(name) if base else None
        bank = sb.bank.get(name) if sb is not None and delta is not None else None
        merged[name] = merge_tensor(cfg, name, b, [m.get(name) for m in models], thresholds, feats, bank,
                                    delta).to(dtype).contiguous()
        n_params += merged[name].numel()
        if log and (i + 1) % max(len(names) // 4, 1) == 0:
            log(f"  merged {i + 1}/{len(names)} tensors")
    template = ref.dir or models[0].dir
    with atomic_dir(out, overwrite) as tmp:
        for f in template.iterdir():
            if f.is_file() and f.name != WEIGHTS_FILE:
                shutil.copyfile(f, tmp / f.name)
        save_file(merged, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        written = (tmp / WEIGHTS_FILE).stat().st_size
        seconds = time.perf_counter() - t0
        extra = {"seconds": round(seconds, 3)}
        if sb is not None:
            extra.update(soup_base=sb.info, in_span_share=[round(x, 6) for x in in_span])
        _write_info(tmp, cfg, extra)
    read = sum(m.bytes for m in models) + (base.bytes if base else 0)
    return MergeResult(str(out), cfg.merge_method, len(names), n_params, read, written, seconds, in_span)


def _specialist_info(d: Path) -> dict:
    p = d / SOE_FILE
    return json.loads(p.read_text()) if p.is_file() else {}
