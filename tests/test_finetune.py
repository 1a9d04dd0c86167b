"""Brief fine-tuning (soe/specialists/finetune.py): it learns, it ends at its best held-out state, it refuses bad input."""

import numpy as np
import pytest
import torch

from soe.core.model import LlamaLM, ModelConfig
from soe.data.windows import eval_windows
from soe.specialists.evaluate import mean_loss
from soe.specialists.finetune import finetune


def _model(seed=0):
    torch.manual_seed(seed)
    net = LlamaLM(ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=2, max_seq_len=16))
    net.reset_parameters(torch.Generator().manual_seed(seed))
    return net


def _stream(n=4000, seed=0):
    # a learnable stream: a fixed cyclic pattern with a little noise
    rng = np.random.default_rng(seed)
    s = np.tile(np.arange(0, 64, 3), n // 22 + 1)[:n]
    flip = rng.random(n) < 0.05
    s[flip] = rng.integers(0, 64, flip.sum())
    return s.astype(np.int64)


def _held_loss(net, stream, holdout=0.1):
    cut = int(len(stream) * (1 - holdout))
    return mean_loss(lambda x, y: net(x, targets=y)[1], eval_windows(stream[cut:], 16, max_windows=256))


def test_finetune_learns_and_ends_at_its_best_state():
    net, stream = _model(), _stream()
    ft = finetune(net, stream, steps=60, lr=3e-3, batch_size=8, eval_every=10)
    assert ft.holdout_loss < ft.holdout_loss_start - 1.0  # the pattern is learnt
    assert ft.best_step > 0 and ft.steps == 60 and ft.tokens == 60 * 8 * 16
    assert not net.training
    assert _held_loss(net, stream) == pytest.approx(ft.holdout_loss, abs=1e-6)  # left at the reported state
    assert min(h["holdout"] for h in ft.history) == ft.holdout_loss


def test_finetune_that_only_hurts_leaves_the_model_unchanged():
    net, stream = _model(), _stream()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ft = finetune(net, stream, steps=5, lr=1e3, batch_size=8, eval_every=1)  # diverges at once
    assert ft.best_step == 0 and ft.holdout_loss == ft.holdout_loss_start
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_finetune_is_deterministic_given_the_seed():
    a, b = _model(), _model()
    fa = finetune(a, _stream(), steps=8, lr=1e-3, batch_size=4, eval_every=4, seed=3)
    fb = finetune(b, _stream(), steps=8, lr=1e-3, batch_size=4, eval_every=4, seed=3)
    assert fa.history == fb.history


@pytest.mark.parametrize(
    "kwargs, match", [({"holdout": 0.0}, "holdout"), ({"lr": 0.0}, "lr > 0"), ({"steps": -1}, "steps ≥ 0")]
)
def test_finetune_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        finetune(_model(), _stream(), **kwargs)


def test_finetune_refuses_a_stream_too_small():
    with pytest.raises(ValueError, match="too small to fine-tune: 100 tokens"):
        finetune(_model(), _stream(100), steps=1)
