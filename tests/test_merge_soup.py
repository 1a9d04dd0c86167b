"""Soup-aware merging: the soup's bases and the bank projection (soe/merging/soupbase.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from specialize_helpers import text_env

from soe import api
from soe.merging.config import parse_config
from soe.merging.merge import merge
from soe.specialists.export import save_specialist


@pytest.fixture(scope="module")
def soup_specialists(tmp_path_factory):
    """Two specialists of one soup 'fine-tuned' by planted task vectors: cooking's is a pure change of α
    (0.3·E_0), law's a random direction (almost all outside the bank's span)."""
    prepared, ckpt = text_env(tmp_path_factory)
    soup = api.load(ckpt)
    root = tmp_path_factory.mktemp("soupmerge")
    m = soup.model
    with torch.no_grad():
        bank0 = {
            k: (a - b)
            for k, a, b in zip(
                m.instantiate(alpha=torch.eye(m.n)[0]).keys(),
                m.instantiate(alpha=torch.eye(m.n)[0]).values(),
                m.instantiate(alpha=torch.zeros(m.n)).values(),
            )
        }
    dirs = {}
    for dom, planted in (("cooking", "bank"), ("law", "random")):
        spec = soup.specialist(dom)
        g = torch.Generator().manual_seed(5)
        params = {
            k: v.detach() + (0.3 * bank0[k] if planted == "bank" else 0.01 * torch.randn(v.shape, generator=g))
            for k, v in spec.model.named_parameters()
        }
        dirs[dom] = save_specialist(
            root / dom,
            params,
            spec.model.cfg,
            tokenizer_file=spec.tokenizer_file,
            eos_id=spec.eos_id,
            info=spec.info,
            fmt="soe",
        )
    return soup, ckpt, dirs


def _cfg(ckpt, dirs, method, h="alpha-mean", **params):
    return parse_config(
        {
            "merge_method": method,
            "base_model": {"soup": str(ckpt), "h": h},
            "models": [str(dirs["cooking"]), str(dirs["law"])],
            "parameters": params,
        }
    )


def test_soup_bases_are_the_soups_models(soup_specialists, tmp_path):
    soup, ckpt, dirs = soup_specialists
    m = soup.model
    hs = torch.stack([soup.weights("cooking"), soup.weights("law")])
    with torch.no_grad():
        want = {
            "alpha-mean": m.instantiate(alpha=m.coefficients(hs).mean(0)),
            "mean": m.instantiate(hs.mean(0)),
            "prior": m.instantiate(soup.prior),
        }
    for mode, theta in want.items():
        merge(_cfg(ckpt, dirs, "task_arithmetic", h=mode, **{"lambda": 0.0}), tmp_path / mode, log=None)
        got = load_file(str(tmp_path / mode / "model.safetensors"))
        assert all(torch.allclose(got[k], theta[k], atol=1e-6) for k in got), mode
    a, b = (
        load_file(str(tmp_path / "mean" / "model.safetensors")),
        load_file(str(tmp_path / "alpha-mean" / "model.safetensors")),
    )
    assert not all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # φ is nonlinear: Θ(h̄) ≠ S + ᾱ·E


def test_in_span_share_and_bank_projection(soup_specialists, tmp_path):
    _, ckpt, dirs = soup_specialists
    res = merge(_cfg(ckpt, dirs, "task_arithmetic"), tmp_path / "ta", log=None)
    share = res.in_span_share
    assert share[0] > 0.999 and share[1] < 0.5, share  # cooking: a pure α change; law: mostly a residual
    # task arithmetic is linear: splitting each τ into span + residual changes nothing
    proj = merge(_cfg(ckpt, dirs, "task_arithmetic", bank_projection=True), tmp_path / "ta-p", log=None)
    a, b = (
        load_file(str(tmp_path / "ta" / "model.safetensors")),
        load_file(str(tmp_path / "ta-p" / "model.safetensors")),
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a) and proj.in_span_share == pytest.approx(share)
    # TIES trims what it merges; with the projection the in-span part bypasses the trim
    merge(_cfg(ckpt, dirs, "ties"), tmp_path / "ties", log=None)
    merge(_cfg(ckpt, dirs, "ties", bank_projection=True), tmp_path / "ties-p", log=None)
    t, tp = (
        load_file(str(tmp_path / "ties" / "model.safetensors")),
        load_file(str(tmp_path / "ties-p" / "model.safetensors")),
    )
    assert not all(torch.allclose(t[k], tp[k], atol=1e-5) for k in t)


def test_bank_projection_reconstructs_a_task_vector_in_the_span_exactly(soup_specialists, tmp_path):
    # cooking's task vector lies in span(E): with the projection, TIES (density 0.3) no longer trims it and
    # the merge of cooking alone is cooking itself; without it, TIES keeps only 30 % of its entries
    _, ckpt, dirs = soup_specialists
    raw = {
        "merge_method": "ties",
        "base_model": {"soup": str(ckpt), "h": "prior"},
        "models": [{"model": str(dirs["cooking"]), "parameters": {"density": 0.3}}],
    }
    merge(parse_config({**raw, "parameters": {"bank_projection": True}}), tmp_path / "p", log=None)
    merge(parse_config(raw), tmp_path / "t", log=None)
    want = load_file(str(dirs["cooking"] / "model.safetensors"))
    got, trimmed = (
        load_file(str(tmp_path / "p" / "model.safetensors")),
        load_file(str(tmp_path / "t" / "model.safetensors")),
    )
    assert all(torch.allclose(got[k], want[k], atol=1e-5) for k in want)
    assert not all(torch.allclose(trimmed[k], want[k], atol=1e-5) for k in want)


def test_bank_projection_config_errors():
    with pytest.raises(ValueError, match="bank_projection needs base_model"):
        parse_config(
            {"merge_method": "ties", "base_model": "dir", "models": ["a"], "parameters": {"bank_projection": True}}
        )
    with pytest.raises(ValueError, match="base_model.h"):
        parse_config({"merge_method": "ties", "base_model": {"soup": "c", "h": True}, "models": ["a"]})
