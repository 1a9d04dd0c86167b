"""Soup-of-Experts: pretrain once, instantiate a dense specialist for any domain mixture.

Importing ``soe`` is cheap; torch and friends load on first use of the API:

    import soe
    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    spec = soup.specialist(soup.estimate_weights("inhouse.jsonl").weights)
    spec.save("my-specialist")     # AutoModelForCausalLM.from_pretrained("my-specialist") works
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "Soup", "Specialist", "read_texts", "parse_weights"]


def load(path, data=None, device=None):
    """A checkpoint (file or run directory) → `soe.api.Soup`; an exported directory → `soe.api.Specialist`."""
    from soe.api import load as _load

    return _load(path, data=data, device=device)


def __getattr__(name):
    if name in ("Soup", "Specialist"):
        import soe.api

        return getattr(soe.api, name)
    if name in ("read_texts", "parse_weights"):
        import soe.specialize

        return getattr(soe.specialize, name)
    raise AttributeError(f"module 'soe' has no attribute {name!r}")
