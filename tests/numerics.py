"""Numerical checks shared by the gradient tests."""

import torch


def directional_derivative(loss_fn, p: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central finite difference of ``loss_fn()`` along direction v of parameter p (p is restored)."""
    with torch.no_grad():
        p += eps * v
        up = loss_fn()
        p -= 2 * eps * v
        down = loss_fn()
        p += eps * v
    return (up - down) / (2 * eps)
