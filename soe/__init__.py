"""Soup-of-Experts: pretrain once, instantiate a dense specialist for any domain mixture.

Importing ``soe`` is cheap; torch and friends load on first use of the API:

    import soe
    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    spec = soup.specialist(soup.estimate_weights("inhouse.jsonl").weights)
    spec.save("my-specialist")     # AutoModelForCausalLM.from_pretrained("my-specialist") works

The package, by concern (each part imports only the parts listed before it):
    soe.core         the dense model, the soup (S, bank, φ), low-rank experts, domain weights h
    soe.data         the shard format, embedders, text and windows, π and mix(h), the data module
    soe.train        the LightningModule, optimizer, checkpoint I/O, the CLI behind train.py
    soe.specialists  estimate / refine h, evaluate, export, generate, fine-tune
    soe.experiments  generic vs SoE vs dedicated comparisons, ablations, reports
    soe.api, soe.cli the Python API (soe.load) and the `soe` command line
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "Soup", "Specialist", "read_texts", "parse_weights"]

_LAZY = {"Soup": "soe.api", "Specialist": "soe.api", "read_texts": "soe.data.text", "parse_weights": "soe.core.weights"}


def load(path, data=None, device=None):
    """A checkpoint (file or run directory) → `soe.api.Soup`; an exported directory → `soe.api.Specialist`."""
    from soe.api import load as _load

    return _load(path, data=data, device=device)


def __getattr__(name):
    # Deferred so that `import soe` (and `python -m soe --help`) does not pay for torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'soe' has no attribute {name!r}")
