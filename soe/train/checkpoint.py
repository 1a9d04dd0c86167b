"""Reading training checkpoints back: the trained soup, its hyper-parameters, and its prepared data.

A Lightning checkpoint of `soe.train.module.SoupModule` holds plain-dict hyper-parameters (the dense
network ``net``, the ``soup``, ``optim``, k, domain names, prior, tokenizer hash) and the module's state
dict, whose soup tensors are named ``soup.<name>``. Loading rebuilds `SoupOfExperts` from those alone,
with ``torch.load(weights_only=True)``: no pickled code runs and no Lightning object is built.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import torch

from soe.checks import check_fields
from soe.core.model import ModelConfig
from soe.core.soup import SoupConfig, SoupOfExperts
from soe.data.shards import Meta, check_tokenizer, load_meta

PREFIX = "soup."  # SoupModule.soup: the state dict's names for the soup's tensors


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or ``last.ckpt`` inside a run directory (or its ``checkpoints/``)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "last.ckpt", p / "checkpoints" / "last.ckpt"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{p}: no last.ckpt or checkpoints/last.ckpt in this directory")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} not found")
    return p


def read_state(path: Path, mmap: bool = False) -> dict:
    """A training checkpoint's contents, loaded with weights_only=True (``mmap``: tensors mapped, not read);
    ValueError naming ``path`` when it is unreadable or not a training checkpoint."""
    # mmap needs torch.save's zip format; anything else (truncated, garbage) gets the plain loader's error.
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, garbage, pickled code (refused by weights_only), old formats
        raise ValueError(_unreadable(path, e)) from e
    if not isinstance(state, dict) or "hyper_parameters" not in state or "state_dict" not in state:
        raise ValueError(f"{path}: not a soe training checkpoint (no hyper_parameters/state_dict)")
    return state


def _unreadable(path: Path, e: Exception) -> str:
    if not zipfile.is_zipfile(path):
        return f"{path}: not a readable checkpoint (not a complete torch.save zip archive: truncated, or another kind of file)"
    # torch's advice to retry with weights_only=False (" Please use ...") is left out on purpose.
    refused = [ln.strip().split(" Please")[0][:200] for ln in str(e).splitlines() if "WeightsUnpickler error" in ln]
    if refused:
        return (
            f"{path}: holds pickled objects other than tensors and plain values ({refused[0]}); "
            "refused: checkpoints are loaded with weights_only=True, which runs no pickled code"
        )
    return f"{path}: not a readable checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:200]})"


def check_hparams(hp: dict, path) -> dict:
    """A checkpoint's hyper-parameters, complete and typed: net and soup (the fields of ModelConfig and
    SoupConfig), n_domains ≥ 1, domain_names (n_domains distinct strings), prior (n_domains finite weights ≥ 0)."""
    where = f"{path}: hyper-parameters"
    for key in ("net", "soup", "n_domains", "domain_names", "prior"):
        if key not in hp:
            raise ValueError(
                f"{where} lack {key!r}; expected a checkpoint written by train.py (net, soup, n_domains, "
                "domain_names, prior)"
            )
    for key, cls in (("net", ModelConfig), ("soup", SoupConfig)):
        if not isinstance(hp[key], dict):
            raise ValueError(f"{where}: {key}={hp[key]!r}; expected a mapping of {cls.__name__} fields")
        check_fields(hp[key], cls, f"{where} {key}")
    k = hp["n_domains"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{where}: n_domains={k!r}; expected an integer ≥ 1")
    names = hp["domain_names"]
    if (
        not isinstance(names, (list, tuple))
        or len(names) != k
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != k
    ):
        raise ValueError(f"{where}: domain_names={names!r}; expected {k} distinct domain names (n_domains={k})")
    prior = hp["prior"].tolist() if torch.is_tensor(hp["prior"]) else hp["prior"]
    if (
        not isinstance(prior, (list, tuple))
        or len(prior) != k
        or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in prior
        )
    ):
        raise ValueError(f"{where}: prior={prior!r}; expected {k} finite non-negative weights (one per domain)")
    return hp


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SoupOfExperts, dict, Path]:
    """A trained SoupOfExperts (eval mode) from a training checkpoint, loaded with weights_only=True.
    Returns (soup, hyper-parameters plus the recorded ``data_dir``, checkpoint path)."""
    path = find_checkpoint(path)
    state = read_state(path)
    hp = check_hparams(dict(state["hyper_parameters"]), path)
    try:
        soup = SoupOfExperts(ModelConfig(**hp["net"]), int(hp["n_domains"]), SoupConfig(**hp["soup"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: hyper-parameters do not describe a soup ({type(e).__name__}: {e})") from e
    weights = {k[len(PREFIX) :]: v for k, v in state["state_dict"].items() if k.startswith(PREFIX)}
    try:
        soup.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its hyper-parameters ({str(e)[:300]})") from e
    data_hp = state.get("datamodule_hyper_parameters") or {}
    # data_dir as given to train.py (often relative to where it ran); newer checkpoints also record the
    # absolute path and the working directory (older ones load without them).
    for key in ("data_dir", "data_dir_resolved", "trained_in"):
        hp[key] = data_hp.get(key)
    return soup.to(device).eval(), hp, path


def prepared_data(data_dir: str | os.PathLike | None, hp: dict, where: Path) -> tuple[Path, Meta]:
    """The prepared directory of a checkpoint, checked against it (tokenizer, vocabulary, domains)."""
    if data_dir is None:
        raise ValueError(
            f"{where}: the checkpoint does not record its prepared-data directory; pass it with --data DIR (data=...)"
        )
    data_dir = _existing_data_dir(Path(data_dir), hp, where)
    meta = load_meta(data_dir)
    check_tokenizer(meta, data_dir, expected_sha256=hp.get("tokenizer_sha256"), expected_vocab=hp["net"]["vocab_size"])
    if list(meta.domains) != list(hp["domain_names"]):
        raise ValueError(f"{data_dir}: domains {meta.domains} differ from the checkpoint's {hp['domain_names']}")
    return data_dir, meta


def _existing_data_dir(data_dir: Path, hp: dict, where: Path) -> Path:
    """``data_dir``; when it is the checkpoint's own record, the absolute path recorded at training time is
    tried first, and a missing directory says what was tried and from where training ran."""
    if str(data_dir) != hp.get("data_dir"):  # given by the caller (--data): used as is
        return data_dir
    tried = [Path(p) for p in (hp.get("data_dir_resolved"), data_dir) if p]
    for cand in tried:
        if cand.is_dir():
            return cand
    ran = (
        f"training ran in {hp['trained_in']}"
        if hp.get("trained_in")
        else "the checkpoint does not record where training ran"
    )
    paths = ", ".join(dict.fromkeys(str(c.absolute()) for c in tried))
    raise FileNotFoundError(
        f"{where}: its prepared-data directory {hp['data_dir']!r} does not exist (tried {paths}; "
        f"{ran}); pass the prepared-data directory with --data DIR (data=...)"
    )
