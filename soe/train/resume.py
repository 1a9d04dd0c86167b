"""Resuming a run with ``train.py fit --ckpt_path CK``: where CK is, whether it is safe to read, and whether
it is the run the configuration describes.

Lightning restores a checkpoint's weights, optimizer and data position into whatever the configuration
built, and LightningCLI (2.6) even overwrites the parsed model settings with the checkpoint's when CK is a
file. Either way a changed setting was dropped without a word (``--model.net.d_model=128`` trained the
checkpoint's 64-wide model; a new ``lr`` was replaced by the optimizer state's). So before anything trains,
the resolved model and data settings are compared with the checkpoint's hyper-parameters and a difference is
refused, one line listing the keys, unless ``--take_from_checkpoint=true`` asks for the checkpoint's values.

Settings that may change on resume (``trainer.max_steps``, logging, checkpoint frequency, loader workers,
validation size, ``optim.warmup_steps``/``min_lr_ratio``/``fused``/``compile``, where the data lives) are
not compared.
"""

from __future__ import annotations

import math
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

from soe.train.checkpoint import read_state

# Optimizer settings that Lightning silently replaces with the optimizer state's on resume.
OPTIM_RESTORED = (
    "lr",
    "lr_bank",
    "lr_router",
    "weight_decay",
    "weight_decay_bank",
    "weight_decay_router",
    "beta1",
    "beta2",
    "eps",
)
# Model settings linked from the prepared data (train.py links them; they cannot be taken from a checkpoint).
FROM_DATA = ("n_domains", "domain_names", "prior", "tokenizer_sha256")
# Data settings that define the training stream (data_dir, workers and validation size may change).
DATA_DEFINING = ("seq_len", "batch_size", "seed", "mixture", "rank_h", "h_per_step")
DOWNLOADED = ("http://", "https://", "ftp://", "file://")


def _flat(d: dict, prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings(model_hp: dict, data_hp: dict) -> dict[str, Any]:
    """The compared settings as config keys: {'model.net.d_model': 64, 'data.seq_len': 64, ...}."""
    out = {}
    for group in ("net", "soup"):
        out.update(_flat(dict(model_hp.get(group) or {}), f"model.{group}."))
    optim = model_hp.get("optim") or {}
    out.update({f"model.optim.{k}": optim[k] for k in OPTIM_RESTORED if k in optim})
    out.update({f"model.{k}": model_hp[k] for k in FROM_DATA if k in model_hp})
    out.update(_flat({k: data_hp[k] for k in DATA_DEFINING if k in data_hp}, "data."))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):  # the prior is recomputed from token counts
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-6)
    return a == b


def differences(now: dict[str, Any], state: dict, fitting: bool = True) -> dict[str, tuple[Any, Any]]:
    """{key: (configured value, checkpoint's value)} for the compared keys the checkpoint records
    (an older checkpoint without a key is not refused for it); the training stream only when ``fitting``."""
    ck = settings(state.get("hyper_parameters") or {}, state.get("datamodule_hyper_parameters") or {})
    return {
        k: (now.get(k), v) for k, v in ck.items() if not _same(now.get(k), v) and (fitting or not k.startswith("data."))
    }


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def from_data(key: str) -> bool:
    return key.split(".")[-1] in FROM_DATA


def refusal(diffs: dict[str, tuple[Any, Any]], ckpt: str) -> str:
    """'--ckpt_path CK: ... differ from the checkpoint's: model.net.d_model: 128 on the command line/config,
    64 in the checkpoint; ...' and what to do."""
    listed = "; ".join(
        f"{k}: {_short(a)} {'from data.data_dir' if from_data(k) else 'on the command line/config'}, "
        f"{_short(b)} in the checkpoint"
        for k, (a, b) in diffs.items()
    )
    hint = (
        "resume with the prepared data the checkpoint was trained on (data.data_dir)"
        if any(map(from_data, diffs))
        else "change them back, or pass --take_from_checkpoint=true to resume with the checkpoint's values"
    )
    return f"--ckpt_path {ckpt}: the run's settings differ from the checkpoint's: {listed}; {hint}"


def localize(ckpt_path: str, tmpdir: tempfile.TemporaryDirectory) -> str:
    """A local file for ``ckpt_path``: URLs are downloaded into ``tmpdir`` (Lightning would load an http(s)
    checkpoint with weights_only=False, i.e. run its pickled code), other remote schemes are refused."""
    if ckpt_path.startswith(DOWNLOADED):
        import torch.hub

        dst = Path(tmpdir.name) / "checkpoint.ckpt"
        try:
            torch.hub.download_url_to_file(ckpt_path, str(dst), progress=False)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise OSError(f"--ckpt_path {ckpt_path}: could not download it ({type(e).__name__}: {e})") from e
        return str(dst)
    if "://" in ckpt_path:
        raise ValueError(
            f"--ckpt_path {ckpt_path}: only local files and http(s)/ftp/file URLs can be resumed "
            "from; copy the checkpoint to a local file first"
        )
    return ckpt_path


def check_file(path: str, shown: str) -> dict:
    """The checkpoint's contents (tensors memory-mapped), refused with one line if it is not a readable soe
    training checkpoint; ``shown`` names it in messages (what the user passed, or what it resolved to)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--ckpt_path {shown}: no such checkpoint file")
    try:
        return read_state(p, mmap=True)
    except ValueError as e:
        raise ValueError(f"--ckpt_path {shown}: {str(e).removeprefix(f'{p}: ')}") from e
