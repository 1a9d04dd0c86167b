"""What a training run's result depends on: the key that decides whether a finished run may be reused.

Comparing only the step count and the run's own arguments reused runs after their training YAML changed
(``d_model``, ``lr``, ...) and reported old numbers. The key is the run's resolved configuration (what
LightningCLI would run: config files, arguments and defaults), flattened to dotted keys, without the settings
that only say where or how verbosely it logs, plus the prepared data's manifest (meta.json, which carries
the corpus lock when data_prep wrote one) and the soe version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import soe
from soe.fileio import read_json

# Settings that do not change the trained model: where it logs and checkpoints (the runs directory may be
# shared or moved), progress output, and the path of the data (its content is keyed by its manifest).
IGNORED = (
    "config",
    "trainer.logger",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
    "data.data_dir",
    "take_from_checkpoint",
)
IGNORED_SUFFIXES = (".init_args.dirpath",)  # the checkpoint callback's directory


# Settings added after runs were keyed, with the value that reproduces what runs trained before them did: a key
# without such a setting is read as having that value, so adding a setting never retrains finished runs.
ADDED_SETTINGS = {"model.optim.bank_update": "dense"}


def with_added_settings(key: dict[str, Any]) -> dict[str, Any]:
    """A stored run key completed with the `ADDED_SETTINGS` it predates."""
    return {**{k: v for k, v in ADDED_SETTINGS.items() if k not in key}, **key}


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [{"d": 2}]} -> {"a.b": 1, "c.0.d": 2}; lists of plain values stay values."""
    if isinstance(obj, dict) and obj:
        items = obj.items()
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {prefix: obj}
    flat: dict[str, Any] = {}
    for k, v in items:
        flat.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return flat


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in IGNORED) or key.endswith(IGNORED_SUFFIXES)


def data_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The prepared data's identity: sha256 of its meta.json (timings left out: re-preparing the same corpus
    takes another few seconds but gives the same tokens) and its corpus lock when it has one."""
    path = Path(data_dir) / "meta.json"
    meta = read_json(path, "prepared-data manifest")
    if isinstance(meta.get("extra"), dict):
        meta["extra"] = {k: v for k, v in meta["extra"].items() if not k.endswith("seconds")}
    manifest = {"prepared_data.meta_sha256": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()}
    lock = meta.get("corpus_lock")  # data_prep's corpus lock: {"id": ..., "packages": [...]}, or only its id
    lock_id = lock.get("id") if isinstance(lock, dict) else lock
    if lock_id:
        manifest["prepared_data.corpus_lock"] = str(lock_id)
    return manifest


def run_key(config) -> dict[str, Any]:
    """The key of a resolved train.py configuration (a jsonargparse Namespace from runs.resolve)."""
    resolved = json.loads(json.dumps(config.as_dict(), default=str))  # Paths and the like as strings
    key = {k: v for k, v in flatten(resolved).items() if not _ignored(k)}
    key.update(data_manifest(config.data.data_dir))
    key["code.soe_version"] = soe.__version__
    return dict(sorted(key.items()))


def describe_changes(old: dict[str, Any], new: dict[str, Any], most: int = 4) -> str:
    """'model.net.d_model 64 -> 128, model.optim.lr 0.003 -> 0.001' (the first ``most``, then a count)."""
    unset = "(unset)"
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k, unset) != new.get(k, unset)]
    shown = [f"{k} {_short(old.get(k, unset))} -> {_short(new.get(k, unset))}" for k in changed[:most]]
    more = f" and {len(changed) - most} more" if len(changed) > most else ""
    return ", ".join(shown) + more


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    return s[:12] + "…" if len(s) > 40 else s
