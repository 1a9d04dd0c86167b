"""The Python API behind ``soe.load`` (mirrors the ``soe`` command line).

    import soe
    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    h = soup.estimate_weights("inhouse.jsonl").weights      # {domain: weight}
    spec = soup.specialist(h)                                # Specialist: .model is a dense LlamaLM
    spec.save("out/my-specialist")                           # HF LlamaForCausalLM directory
    print(spec.generate("Once upon a time", max_new_tokens=50))
    print(markdown_table(soup.evaluate(weights=[h], prior=True)))   # soe.specialists.evaluate

    spec = soe.load("out/my-specialist")                     # an exported directory → Specialist

Names: a `Soup` is a trained checkpoint with its prepared data; its ``.model`` is the
`soe.core.soup.SoupOfExperts` (S, the bank, φ). A `Specialist` is one dense model with its tokenizer;
its ``.model`` is a `soe.core.model.LlamaLM`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from soe.core.model import LlamaLM
from soe.core.weights import parse_weights, weights_dict
from soe.data.text import read_texts, token_stream
from soe.specialists import evaluate as ev
from soe.specialists import export
from soe.specialists.estimate import Estimate, estimate_weights
from soe.specialists.generate import generate
from soe.specialists.refine import Refinement, refine
from soe.train.checkpoint import load_checkpoint, prepared_data


def _device(device) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class Specialist:
    """A standalone dense model with its tokenizer (from a soup, or loaded from an export)."""

    def __init__(self, model: LlamaLM, tokenizer_file: Path, eos_id: int, info: dict, instantiate_s: float | None = None):
        self.model, self.tokenizer_file, self.eos_id, self.info = model, Path(tokenizer_file), eos_id, info
        self.instantiate_s = instantiate_s
        """Seconds Θ(h) took to instantiate (None when loaded from disk)."""

    @property
    def weights(self) -> dict[str, float] | None:
        return self.info.get("weights")

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.info.get("tokenizer_sha256")

    def save(self, out: str | os.PathLike, fmt: str = "hf", overwrite: bool = False,
             dtype: torch.dtype = torch.float32) -> Path:
        """Export atomically as a Hugging Face directory ('hf') or the project's own format ('soe')."""
        return export.save_specialist(out, dict(self.model.named_parameters()), self.model.cfg,
                                      tokenizer_file=self.tokenizer_file, eos_id=self.eos_id, info=self.info,
                                      fmt=fmt, overwrite=overwrite, dtype=dtype)

    def generate(self, prompt: str = "", max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: int | None = 50, seed: int = 0) -> str:
        return generate(self.model, self.tokenizer_file, self.eos_id, prompt, max_new_tokens, temperature, top_k, seed)

    def evaluate(self, data: str | os.PathLike | None = None, sets: list[str] | None = None, split: str = "val",
                 texts=None, max_windows: int | None = ev.DEFAULT_WINDOWS, label: str = "specialist") -> list[dict]:
        """Rows of loss/perplexity/bits-per-byte on prepared sets of ``data`` and/or raw ``texts``."""
        return ev.evaluate({label: self}, _sets(data, sets, split, texts), max_windows)


def _sets(data, sets, split, texts) -> list[ev.EvalSet]:
    out = ev.eval_sets(data, sets, split) if data is not None else []
    if texts is not None:
        out.append(ev.text_set(texts))
    if not out:
        raise ValueError("nothing to evaluate on: give a prepared-data directory (data=...) and/or texts=...")
    return out


class Soup:
    """A trained Soup-of-Experts checkpoint with its prepared data (tokenizer, centroids, shards)."""

    def __init__(self, model, hp: dict, ckpt_path: Path, data: str | os.PathLike | None = None):
        self.model, self.hp, self.ckpt_path = model, hp, ckpt_path
        self.domains: list[str] = list(hp["domain_names"])
        self.prior = torch.tensor(hp["prior"], dtype=torch.float32)
        self._data = data if data is not None else hp.get("data_dir")
        self._checked: tuple[Path, object] | None = None

    @property
    def data_dir(self) -> Path:
        return self._prepared()[0]

    def _prepared(self):
        if self._checked is None:
            self._checked = prepared_data(self._data, self.hp, self.ckpt_path)
        return self._checked

    def weights(self, spec) -> torch.Tensor:
        """Any accepted form of domain weights → validated h: (k,)."""
        return parse_weights(spec, self.domains, self.prior)

    def estimate_weights(self, texts, max_docs: int | None = None, min_weight: float = 0.0,
                         text_field: str = "text") -> Estimate:
        return estimate_weights(self.data_dir, texts, max_docs=max_docs, min_weight=min_weight, text_field=text_field)

    def refine(self, texts, weights, max_docs: int | None = None, text_field: str = "text", **kw) -> Refinement:
        """Optimise h from ``weights`` on the in-house texts (see `soe.specialists.refine.refine` for options)."""
        d, meta = self._prepared()
        stream = token_stream(read_texts(texts, text_field, max_docs), d / meta.tokenizer_file, meta.eos_id)
        return refine(self.model, self.weights(weights), stream, self.domains, **kw)

    def specialist(self, weights="prior") -> Specialist:
        """The dense model Θ(h) for these domain weights (h is ignored by a dense, n = 0, checkpoint)."""
        d, meta = self._prepared()
        h = self.weights(weights)
        t0 = time.perf_counter()
        net = self.model.specialist(h)
        if next(net.parameters()).is_cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        info = {"weights": weights_dict(h, self.domains), "checkpoint": str(self.ckpt_path),
                "tokenizer_sha256": meta.tokenizer_sha256, "n_experts": self.model.n}
        return Specialist(net, d / meta.tokenizer_file, meta.eos_id, info, secs)

    def instantiate(self, weights, out: str | os.PathLike, fmt: str = "hf", overwrite: bool = False) -> Specialist:
        spec = self.specialist(weights)
        spec.save(out, fmt, overwrite)
        return spec

    def evaluate(self, weights: list | None = None, prior: bool = False, sets: list[str] | None = None,
                 split: str = "val", texts=None, max_windows: int | None = ev.DEFAULT_WINDOWS,
                 labels: list[str] | None = None) -> list[dict]:
        """Rows of loss/perplexity/bits-per-byte for Θ(h) at each of ``weights`` (and at the prior), on the
        prepared sets of this soup's data (``sets``) and/or raw ``texts``."""
        weights = list(weights or [])
        labels = list(labels or [str(w) if isinstance(w, str) else f"h{i}" for i, w in enumerate(weights)])
        models = {f"soup@{lab}": self.specialist(w) for lab, w in zip(labels, weights)}
        if prior or not models:
            models["soup@prior"] = self.specialist("prior")
        data = self.data_dir if sets is not None or texts is None else None
        return ev.evaluate(models, _sets(data, sets, split, texts), max_windows)

    def generate(self, weights="prior", prompt: str = "", **kw) -> str:
        return self.specialist(weights).generate(prompt, **kw)


def load(path: str | os.PathLike, data: str | os.PathLike | None = None, device=None) -> Soup | Specialist:
    """A training checkpoint (file, or a directory holding last.ckpt) → `Soup`; an exported specialist
    directory → `Specialist`. ``data``: the prepared directory (needed when the checkpoint lacks it)."""
    p = Path(path)
    dev = _device(device)
    if p.is_dir() and ((p / export.SOE_FILE).is_file() or (p / "config.json").is_file()):
        net, info = export.load_specialist(p, dev)
        if not (p / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{p}: no tokenizer.json in the specialist directory")
        eos = info.get("eos_id")
        if eos is None:
            eos = json.loads((p / "config.json").read_text()).get("eos_token_id")
        return Specialist(net, p / "tokenizer.json", int(eos), info)
    model, hp, ckpt = load_checkpoint(p, dev)
    return Soup(model, hp, ckpt, data)
