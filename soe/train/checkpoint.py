"""Reading training checkpoints back: the trained soup, its hyper-parameters, and its prepared data.

A Lightning checkpoint of `soe.train.module.SoupModule` holds plain-dict hyper-parameters (the dense
network ``net``, the ``soup``, ``optim``, k, domain names, prior, tokenizer hash) and the module's state
dict, whose soup tensors are named ``soup.<name>``. Loading rebuilds `SoupOfExperts` from those alone,
with ``torch.load(weights_only=True)``: no pickled code runs and no Lightning object is built.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

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


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SoupOfExperts, dict, Path]:
    """A trained SoupOfExperts (eval mode) from a training checkpoint, loaded with weights_only=True.
    Returns (soup, hyper-parameters plus the recorded ``data_dir``, checkpoint path)."""
    path = find_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(state, dict) or "hyper_parameters" not in state or "state_dict" not in state:
        raise ValueError(f"{path}: not a soe training checkpoint (no hyper_parameters/state_dict)")
    hp = dict(state["hyper_parameters"])
    try:
        soup = SoupOfExperts(ModelConfig(**hp["net"]), int(hp["n_domains"]), SoupConfig(**hp["soup"]))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: hyper-parameters do not describe a soup ({type(e).__name__}: {e})") from e
    weights = {k[len(PREFIX):]: v for k, v in state["state_dict"].items() if k.startswith(PREFIX)}
    try:
        soup.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match its hyper-parameters ({str(e)[:300]})") from e
    hp["data_dir"] = (state.get("datamodule_hyper_parameters") or {}).get("data_dir")
    return soup.to(device).eval(), hp, path


def prepared_data(data_dir: str | os.PathLike | None, hp: dict, where: Path) -> tuple[Path, Meta]:
    """The prepared directory of a checkpoint, checked against it (tokenizer, vocabulary, domains)."""
    if data_dir is None:
        raise ValueError(f"{where}: the checkpoint does not record its prepared-data directory; "
                         "pass it with --data DIR (data=...)")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    check_tokenizer(meta, data_dir, expected_sha256=hp.get("tokenizer_sha256"), expected_vocab=hp["net"]["vocab_size"])
    if list(meta.domains) != list(hp["domain_names"]):
        raise ValueError(f"{data_dir}: domains {meta.domains} differ from the checkpoint's {hp['domain_names']}")
    return data_dir, meta
