"""φ's input transform (model.soup.router_input): identity, log, times_k, layernorm."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from bad_inputs import assert_refused

from soe.core.model import ModelConfig
from soe.core.soup import ROUTER_INPUTS, Router, SoupConfig, SoupOfExperts
from soe.data.datamodule import SoupDataModule
from soe.train.module import SoupModule
from soe.train.optim import OptimConfig

ROOT = Path(__file__).resolve().parents[1]
NET = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, max_seq_len=32)
OPTIONS = ["identity", "log", "times_k", "layernorm"]
HS = [torch.tensor([0.2, 0.3, 0.5]), torch.tensor([1.0, 0.0, 0.0]), torch.full((3,), 1 / 3)]


def test_the_options_are_the_documented_ones():
    assert list(ROUTER_INPUTS) == OPTIONS


def soup_cfg(router_input: str, **kw) -> SoupConfig:
    return SoupConfig(
        n_experts=2, router_hidden=8, router_depth=1, expert_init="normal", router_input=router_input, **kw
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{option: SoupModule after 2 training steps} on the synthetic prepared data."""
    from conftest import make_prepared

    root = tmp_path_factory.mktemp("router_input")
    prepared = make_prepared(root / "prepared")
    out = {}
    for opt in OPTIONS:
        dm = SoupDataModule(str(prepared), seq_len=32, batch_size=8, seed=0, val_windows=4, val_batch_size=4)
        model = SoupModule(
            net=NET,
            soup=soup_cfg(opt),
            optim=OptimConfig(lr=1e-2, warmup_steps=1),
            n_domains=dm.num_domains,
            domain_names=dm.domain_names,
            prior=dm.prior,
            tokenizer_sha256=dm.tokenizer_sha256,
        )
        before = {k: v.detach().clone() for k, v in model.soup.router.named_parameters()}
        L.seed_everything(0)
        trainer = L.Trainer(
            max_steps=2,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=root / opt,
        )
        trainer.fit(model, dm)
        assert trainer.global_step == 2
        loss = trainer.callback_metrics["loss/train"]
        out[opt] = (model, before, float(loss))
    return out


@pytest.mark.parametrize("opt", OPTIONS)
def test_each_option_trains_with_finite_alpha(trained, opt):
    model, before, loss = trained[opt]
    assert torch.isfinite(torch.tensor(loss)), loss
    for name, p in model.soup.router.named_parameters():  # φ (the LayerNorm's gain and bias too) trained
        assert torch.isfinite(p).all() and not torch.equal(p, before[name]), name
    with torch.no_grad():
        for h in HS:
            a = model.soup.coefficients(h)
            assert a.shape == (2,) and torch.isfinite(a).all(), (opt, h, a)
        assert torch.isfinite(model.soup.coefficients(torch.stack(HS))).all()


def test_only_layernorm_adds_parameters():
    counts = {opt: SoupOfExperts(NET, 3, soup_cfg(opt)).param_counts() for opt in OPTIONS}
    for opt in ("log", "times_k"):
        assert counts[opt] == counts["identity"], opt
    assert counts["layernorm"]["router"] == counts["identity"]["router"] + 2 * 3  # LayerNorm(k): gain and bias
    assert counts["layernorm"]["shared"] == counts["identity"]["shared"]
    assert counts["layernorm"]["bank"] == counts["identity"]["bank"]


@pytest.mark.parametrize("opt", OPTIONS)
def test_specialist_equals_the_soup_forward(trained, opt):
    soup = trained[opt][0].soup
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for h in HS:
            torch.testing.assert_close(soup.specialist(h)(x), soup(x, h=h), rtol=1e-5, atol=1e-5)
        # φ's input matters: a different h gives a different specialist
        assert not torch.allclose(soup.specialist(HS[0])(x), soup.specialist(HS[1])(x))


def test_the_transform_is_applied_before_the_first_layer():
    """Each option is φ_identity applied to the transformed h (same layers, copied)."""
    k, n = 5, 3
    base = Router(k, n, hidden=8, depth=1, output="none", generator=torch.Generator().manual_seed(0))
    h = torch.tensor([[0.6, 0.3, 0.1, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    transformed = {"identity": h, "log": torch.log(h + 1e-4), "times_k": h * k}
    for opt in OPTIONS:
        r = Router(k, n, hidden=8, depth=1, output="none", generator=torch.Generator().manual_seed(0), input=opt)
        r.net.load_state_dict(base.net.state_dict())
        if opt == "layernorm":
            with torch.no_grad():
                r.norm.weight.copy_(torch.linspace(0.5, 2.0, k))
                r.norm.bias.copy_(torch.linspace(-0.1, 0.3, k))
            transformed[opt] = F.layer_norm(h, (k,), r.norm.weight, r.norm.bias)
        with torch.no_grad():
            torch.testing.assert_close(r(h), base(transformed[opt]), rtol=1e-6, atol=1e-6)
            if opt != "identity":
                assert not torch.allclose(r(h), base(h)), f"{opt}: no transform applied"


@pytest.mark.parametrize("bad", ["sqrt", "", "Log", None])
def test_bad_option_is_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match="router_input"):
        SoupConfig(router_input=bad)


def test_bad_option_is_refused_by_train_py(prepared, tmp_path, capsys):
    argv = [
        "fit",
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"--data.data_dir={prepared}",
        "--model.net.vocab_size=64",
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}/runs",
        f"--trainer.callbacks.init_args.dirpath={tmp_path}/ck",
        "--model.soup.router_input=sqrt",
    ]
    assert_refused(capsys, "train", argv, "router_input", watch=(prepared,))
    assert not (tmp_path / "ck").exists()
