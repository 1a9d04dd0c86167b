"""Soup-of-Experts: pretrain once, instantiate a dense specialist for any domain mixture.

Importing ``soe`` is cheap; torch and friends load on first use of the API:

    import soe
    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    spec = soup.specialist(soup.estimate_weights("inhouse.jsonl").weights)
    spec.save("my-specialist")     # AutoModelForCausalLM.from_pretrained("my-specialist") works

The package, by concern, bottom to top (each part imports only the parts listed before it; tests/test_structure.py):
    soe.checks, .fileio, .errors, .malloc, .moved   argument checks, atomic files, one-line errors, the
                     allocator, the one line that names a moved study's new command
    soe.core         the dense model, the soup (S, bank, φ), low-rank experts, domain weights h
    soe.data         the shard format, embedders, text and windows, π and mix(h), the data module
    soe.train        the LightningModule, optimizer, checkpoint I/O, the step progress bar, the LightningCLI
    soe.specialists  estimate / refine h, evaluate, export, generate, fine-tune, loading (Soup, Specialist)
    soe.merging      merging fine-tuned specialists (soe.merge), after soe.finetune
    soe.api          the Python API (soe.load); then this package's soe.load / soe.finetune / soe.merge
    soe.serve        one soup served as specialists over HTTP
    soe.cli          the `soe` command line (`soe prepare` runs data_prep, the layer below it)
    soe.experiments, soe.merge_experiment   old names only: one line naming the studies' new commands
Above the package, in a checkout and never installed: data_prep (raw text -> shards; ``soe prepare``) and
studies/ (studies.experiments, studies.merging: comparisons, ablations, the merging study), which soe never imports.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "Soup", "Specialist", "read_texts", "parse_weights", "finetune", "merge"]

_LAZY = {"Soup": "soe.api", "Specialist": "soe.api", "read_texts": "soe.data.text", "parse_weights": "soe.weightspec"}


def finetune(source, texts, out, **kw) -> dict:
    """`soe finetune` from Python: fine-tune a specialist directory or ``CKPT@WEIGHTS`` on ``texts`` into the
    run directory ``out`` (geometric checkpoints, best/, last/); see soe/specialists/finetune_run.py."""
    from soe.specialists.finetune_run import run_finetune

    return run_finetune(source, texts, out, **kw)


def merge(config, out, overwrite: bool = False):
    """`soe merge` from Python: ``config`` a merge YAML path or a mergekit-style dict; returns a MergeResult."""
    from soe.merging.config import load_config, parse_config
    from soe.merging.merge import merge as _merge

    cfg = parse_config(config) if isinstance(config, dict) else load_config(config)
    return _merge(cfg, out, overwrite)


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
