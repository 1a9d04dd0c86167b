"""Progress bars of the long steps outside training: ``soe prepare``, ``soe estimate-weights``, ``soe evaluate``.

`bar` is tqdm on stderr: the count of its total with an ETA where the total is known, e.g.

    embed:  45%|████▌     | 9216/20480 chunks [00:04<00:05 ETA, 2210.43 chunk/s]

and the count with the rate where it is not (the documents of a streamed source). A bar is drawn only on a
terminal (tqdm's ``disable=None``) and erased when its step ends; each step then says what it did in one
line of its own, so CI logs hold the summary lines only, and stdout, which scripts parse, never gets a bar.
``SOE_PROGRESS=0`` turns the bars off, ``SOE_PROGRESS=1`` draws them on any stderr (a log one tails), and a
command's ``--quiet`` turns them off. The training bar is soe/train/progress.py.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable

import numpy as np
from tqdm import tqdm

ENV = "SOE_PROGRESS"
KNOWN = (
    "{desc}: {percentage:3.0f}%|{bar:10}| {n_fmt}/{total_fmt}{unit}s [{elapsed}<{remaining} ETA, {rate_fmt}{postfix}]"
)
UNKNOWN = "{desc}: {n_fmt}{unit}s [{elapsed}, {rate_fmt}{postfix}]"


def disable(quiet: bool = False) -> bool | None:
    """tqdm's ``disable``: True (off) with ``quiet`` or SOE_PROGRESS=0, False (on) with SOE_PROGRESS=1, else
    None (on where stderr is a terminal)."""
    value = os.environ.get(ENV, "").strip().lower()
    if quiet or value in ("0", "false", "no", "off"):
        return True
    return False if value in ("1", "true", "yes", "on") else None


def bar(iterable: Iterable | None = None, *, desc: str, unit: str, total: int | None = None, quiet: bool = False):
    """A tqdm bar over ``iterable`` (or updated by hand) counting ``unit``s of ``total`` (len(iterable) if it has
    one); ``unit`` is singular ("chunk"), the count reads "3/9 chunks"."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=" " + unit,  # "3/9 chunks", "12.5 chunk/s"
        disable=disable(quiet),
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        unit_scale=False,
        bar_format=KNOWN if total else UNKNOWN,
    )


def encode(embedder, texts: list[str], desc: str = "embed", block: int = 1024, quiet: bool = False) -> np.ndarray:
    """``embedder.encode(texts)`` (N, d), called on blocks of ``block`` texts in order under a bar over the
    texts. Blocks are the same whether the bar shows or not, so the numbers never depend on the terminal (an
    embedder that embeds text by text, tf-idf or model2vec, gives the bits of one call for any ``block``)."""
    if not texts:
        return embedder.encode(texts)
    out = []
    with bar(total=len(texts), desc=desc, unit="chunk", quiet=quiet) as b:
        for i in range(0, len(texts), block):
            out.append(embedder.encode(texts[i : i + block]))
            b.update(len(out[-1]))
    return out[0] if len(out) == 1 else np.concatenate(out)
