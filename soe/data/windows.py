"""Evaluation windows: the one rule for which tokens a reported loss is measured on.

Every loss the project reports — validation during training (``loss/val/<domain>``), experiments and
ablations, ``soe evaluate``, and the held-out checks of refinement and fine-tuning — is the token-mean
next-token loss over the windows chosen here:

    windows of seq_len + 1 tokens at stride seq_len, so each target token is scored at most once;
    all of them, or ``max_windows`` of them spread evenly over the array when there are more.

The same model on the same array with the same (seq_len, max_windows) therefore gets the same number
from every tool (tests/test_experiment.py checks the report against ``soe evaluate``).
"""

from __future__ import annotations

import numpy as np
import torch


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``tokens`` (1-D, any integer dtype): (W, seq_len + 1) int64, with
    W = min(max_windows, (len(tokens) - 1) // seq_len), evenly spaced when subsampled."""
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be positive")
    if max_windows is not None and max_windows <= 0:
        raise ValueError(f"max_windows={max_windows} must be positive (or None for all windows)")
    n = (len(tokens) - 1) // seq_len
    if n < 1:
        raise ValueError(f"{len(tokens)} tokens cannot hold one window of seq_len+1={seq_len + 1} tokens")
    starts = np.arange(n, dtype=np.int64) * seq_len
    if max_windows is not None and n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).astype(np.int64)]
    return torch.from_numpy(np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64))
