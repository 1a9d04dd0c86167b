"""The streaming merge: one tensor name at a time from every input, never all state dicts at once.

Inputs are specialist directories (``model.safetensors`` + ``soe_specialist.json`` and/or HF ``config.json``,
``tokenizer.json``). safetensors files are memory-mapped and read tensor by tensor, so peak memory is the
output model plus one tensor per input (TIES over the whole model adds one pass that keeps one float32
magnitude per parameter of the model being scanned). The output directory is the base's (or the first
model's) files with the merged weights and a ``merge`` record in soe_specialist.json; it is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from soe.merging import datamerge as D
from soe.merging import methods as M
from soe.merging import semantic as S
from soe.merging.config import DATA_METHODS, MergeConfig
from soe.merging.features import Features, collect, exemplar_windows
from soe.merging.inputs import Tensors, Weights, open_inputs
from soe.merging.soupbase import bank_projection
from soe.specialists.atomic import atomic_dir
from soe.specialists.export import SOE_FILE, WEIGHTS_FILE


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


def _model_thresholds(cfg: MergeConfig, base, models: list[Weights], names: list[str]) -> list[float]:
    """TIES over the whole model: each model's magnitude threshold for its density (one model at a time)."""
    out = []
    for spec, m in zip(cfg.models, models):
        mags = torch.cat([(m.get(n) - base.get(n)).abs().reshape(-1) for n in names])
        out.append(M.model_threshold(mags, spec.density))
        del mags
    return out


def model_features(cfg: MergeConfig, log=print) -> list[Features]:
    """Each model's layer-input statistics on its own exemplars (one model in memory at a time)."""
    from soe.specialists.load import load

    feats = []
    for i, spec in enumerate(cfg.models):
        sp = load(spec.model, device="cpu")  # checks tokenizer.json and the eos id, names what is missing
        net = sp.model
        seq = min(net.cfg.max_seq_len, 256)
        wins = exemplar_windows(spec.exemplars, sp.tokenizer_file, sp.eos_id, seq, int(cfg.knob("exemplar_tokens")))
        feats.append(collect(net, wins))
        if log:
            log(f"  models[{i}]: layer inputs of {feats[-1].tokens} exemplar tokens from {spec.exemplars}")
        del net, sp
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


def semantic_coefficients(cfg: MergeConfig, inp) -> torch.Tensor:
    """(m, L) per-layer coefficients of the data-free ``semantic`` method, one model in memory at a time."""
    from soe.core.model import LlamaLM
    from soe.specialists.export import load_specialist

    first, _ = load_specialist(inp.models[0].dir)
    base = LlamaLM(first.cfg)
    base.load_state_dict({n: inp.base.get(n) for n in inp.names}, strict=True)
    base.eval()
    scores = []
    for m in inp.models:
        net, _ = load_specialist(m.dir)
        scores.append(S.semantic_scores(base, [net], seed=int(cfg.parameters.get("seed", 0)))[0])
        del net
    return S.layer_coefficients(torch.stack(scores), [m.weight for m in cfg.models])


def merge_tensor(
    cfg: MergeConfig,
    name: str,
    base: torch.Tensor | None,
    thetas: list[torch.Tensor],
    thresholds: list[float] | None = None,
    feats: list[Features] | None = None,
    bank: torch.Tensor | None = None,
    delta: torch.Tensor | None = None,
    coeffs: torch.Tensor | None = None,
) -> torch.Tensor:
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
    if method == "semantic":
        ell = S.block_index(name)
        c = coeffs[:, ell].tolist() if ell is not None else [w / sum(weights) for w in weights]
        return M.combine(base, [t - base for t in thetas], c, cfg.lam)
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
        taus = [
            M.dare_drop(t, m.density, torch.Generator().manual_seed(M.tensor_seed(seed, name, u)), rescale)
            for u, (t, m) in enumerate(zip(taus, cfg.models))
        ]
    consensus = method in ("ties", "dare_ties")
    return M.combine(base, taus, weights, cfg.lam, consensus=consensus, normalize=cfg.normalize)


def merge_tensors(
    cfg: MergeConfig,
    base: dict[str, torch.Tensor] | None,
    thetas: list[dict[str, torch.Tensor]],
    feats: list[Features] | None = None,
    bank: dict[str, torch.Tensor] | None = None,
    coeffs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The merge of in-memory state dicts (HF names) by the same rules as `merge`, for experiments that try many
    merges of the same inputs. ``feats``: each model's `collect` statistics (regmean, lot, cat); ``bank``: the
    expert directions (n, *S) per name when ``cfg`` asks for bank projection; ``coeffs``: `semantic`'s (m, L)."""
    names = list(thetas[0])
    b = Tensors(base, "base_model", None) if base is not None else None
    models = [Tensors(t, f"models[{u}]", None) for u, t in enumerate(thetas)]
    delta = bank_projection(b, models, bank, names)[0] if bank and cfg.parameters.get("bank_projection") else None
    thresholds = None
    if cfg.merge_method == "ties" and cfg.parameters.get("trim") == "model":
        thresholds = _model_thresholds(cfg, b, models, names)
    return {
        n: merge_tensor(
            cfg,
            n,
            None if base is None else base[n],
            [t[n] for t in thetas],
            thresholds,
            feats,
            bank[n] if delta is not None else None,
            delta,
            coeffs,
        )
        for n in names
    }


def _write_info(tmp: Path, cfg: MergeConfig, result: dict) -> None:
    """soe_specialist.json / config.json of the template, with the merge recorded and the dtype updated."""
    record = {
        "method": cfg.merge_method,
        "base_model": cfg.base_model,
        "parameters": cfg.parameters,
        "models": [asdict(m) for m in cfg.models],
        **result,
    }
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


def in_span_report(cfg: MergeConfig) -> list[float]:
    """Without merging: the share of each model's task vector in the span of the soup's expert bank."""
    if not isinstance(cfg.base_model, dict):
        raise ValueError(f"{cfg.source}: the in-span report needs base_model: {{soup: CKPT, h: ...}}")
    inp = open_inputs(cfg)
    return bank_projection(inp.base, inp.models, inp.soup.bank, inp.names)[1]


def merge(cfg: MergeConfig, out: str | os.PathLike, overwrite: bool = False, log=print) -> MergeResult:
    """Merge ``cfg.models`` into a specialist directory ``out`` (atomic; see module docstring)."""
    from safetensors.torch import save_file

    from soe.checks import check_finite
    from soe.merging.config import check_paths
    from soe.specialists.atomic import check_out, recover

    check_paths(cfg, out)
    recover(out)
    check_out(out, overwrite)  # refused before any model is read
    t0 = time.perf_counter()
    inp = open_inputs(cfg)
    models, base, names, sb = inp.models, inp.base, inp.names, inp.soup
    ref, delta, in_span = base or models[0], None, None
    if sb is not None:
        delta, in_span = bank_projection(base, models, sb.bank, names)
        if log:
            log(
                "  in-span share of each task vector: "
                + ", ".join(f"models[{u}] {s:.3f}" for u, s in enumerate(in_span))
            )
        if not cfg.parameters.get("bank_projection"):
            sb.bank, delta = {}, None
    thresholds = None
    if cfg.merge_method == "ties" and cfg.parameters.get("trim") == "model":
        thresholds = _model_thresholds(cfg, base, models, names)
    feats = model_features(cfg, log) if cfg.merge_method in DATA_METHODS else None
    coeffs = semantic_coefficients(cfg, inp) if cfg.merge_method == "semantic" else None
    if coeffs is not None and log:
        log(
            "  semantic layer coefficients (models × layers): "
            + str([[round(x, 3) for x in r] for r in coeffs.tolist()])
        )
    dtype = getattr(torch, cfg.dtype)
    merged, n_params = {}, 0
    for i, name in enumerate(names):
        b = base.get(name) if base else None
        bank = sb.bank.get(name) if sb is not None and delta is not None else None
        merged[name] = (
            merge_tensor(cfg, name, b, [m.get(name) for m in models], thresholds, feats, bank, delta, coeffs)
            .to(dtype)
            .contiguous()
        )
        n_params += merged[name].numel()
        if log and (i + 1) % max(len(names) // 4, 1) == 0:
            log(f"  merged {i + 1}/{len(names)} tensors")
    check_finite(merged, f"merge {cfg.source} ({cfg.merge_method})")  # e.g. weights or lambda large enough to overflow
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
