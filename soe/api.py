"""The Python API behind ``soe.load`` (mirrors the ``soe`` command line).

    import soe
    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    h = soup.estimate_weights("inhouse.jsonl").weights      # {domain: weight}
    spec = soup.specialist(h)                                # Specialist: .model is a dense LlamaLM
    spec.save("out/my-specialist")                           # HF LlamaForCausalLM directory
    print(spec.generate("Once upon a time", max_new_tokens=50))
    print(soe.evaluate.markdown_table(soup.evaluate(weights=[h], prior=True)))

    spec = soe.load("out/my-specialist")                     # an exported directory → Specialist
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from soe import export
from soe import evaluate as ev
from soe import specialize as sp
from soe.model import LlamaLM


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
        return ev.generate(self.model, self.tokenizer_file, self.eos_id, prompt, max_new_tokens, temperature, top_k, seed)

    def evaluate(self, data: str | os.PathLike, sets: list[str] | None = None, split: str = "val",
                 max_tokens: int = 65536, label: str = "specialist") -> list[dict]:
        return ev.evaluate({label: (self.model, self.tokenizer_sha256)}, ev.eval_sets(data, sets, split), max_tokens)


class Soup:
    """A trained Soup-of-Experts checkpoint with its prepared data (tokenizer, centroids, shards)."""

    def __init__(self, soup, hp: dict, ckpt_path: Path, data: str | os.PathLike | None = None):
        self.soup, self.hp, self.ckpt_path = soup, hp, ckpt_path
        self.domains: list[str] = list(hp["domain_names"])
        self.prior = torch.tensor(hp["prior"], dtype=torch.float32)
        self._data = data if data is not None else hp.get("data_dir")
        self._checked: tuple[Path, object] | None = None

    @property
    def data_dir(self) -> Path:
        return self._prepared()[0]

    def _prepared(self):
        if self._checked is None:
            self._checked = sp.data_for(self._data, self.hp, self.ckpt_path)
        return self._checked

    def weights(self, spec) -> torch.Tensor:
        """Any accepted form of domain weights → validated h: (k,)."""
        return sp.parse_weights(spec, self.domains, self.prior)

    def estimate_weights(self, texts, max_docs: int | None = None, min_weight: float = 0.0,
                         text_field: str = "text") -> sp.Estimate:
        return sp.estimate_weights(self.data_dir, texts, max_docs=max_docs, min_weight=min_weight, text_field=text_field)

    def refine(self, texts, weights, max_docs: int | None = None, text_field: str = "text", **kw) -> sp.Refinement:
        """Optimise h from ``weights`` on the in-house texts (see `soe.specialize.refine` for options)."""
        d, meta = self._prepared()
        docs = sp.read_texts(texts, text_field, max_docs)
        stream = sp.token_stream(docs, d / meta.tokenizer_file, meta.eos_id)
        return sp.refine(self.soup, self.weights(weights), stream, self.domains, **kw)

    def specialist(self, weights="prior") -> Specialist:
        """The dense model Θ(h) for these domain weights."""
        d, meta = self._prepared()
        h = self.weights(weights)
        params, secs = sp.timed_instantiate(self.soup, h if self.soup.n else None)
        with torch.device("meta"):
            net = LlamaLM(self.soup.model_cfg)
        net.load_state_dict(params, strict=True, assign=True)
        info = {"weights": sp.weights_dict(h, self.domains), "checkpoint": str(self.ckpt_path),
                "tokenizer_sha256": meta.tokenizer_sha256, "n_experts": self.soup.n}
        return Specialist(net.eval(), d / meta.tokenizer_file, meta.eos_id, info, secs)

    def instantiate(self, weights, out: str | os.PathLike, fmt: str = "hf", overwrite: bool = False) -> Specialist:
        spec = self.specialist(weights)
        spec.save(out, fmt, overwrite)
        return spec

    def evaluate(self, weights: list | None = None, prior: bool = False, sets: list[str] | None = None,
                 split: str = "val", max_tokens: int = 65536, labels: list[str] | None = None) -> list[dict]:
        """Rows of loss/perplexity/bits-per-byte for Θ(h) at each of ``weights`` (and at the prior)."""
        weights = list(weights or [])
        labels = list(labels or [str(w) if isinstance(w, str) else f"h{i}" for i, w in enumerate(weights)])
        models = {f"soup@{lab}": (self.specialist(w).model, self.hp.get("tokenizer_sha256"))
                  for lab, w in zip(labels, weights)}
        if prior or not models:
            models["soup@prior"] = (self.specialist("prior").model, self.hp.get("tokenizer_sha256"))
        return ev.evaluate(models, ev.eval_sets(self.data_dir, sets, split), max_tokens)

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
            import json

            eos = json.loads((p / "config.json").read_text()).get("eos_token_id")
        return Specialist(net, p / "tokenizer.json", int(eos), info)
    soup, hp, ckpt = sp.load_checkpoint(p, dev)
    return Soup(soup, hp, ckpt, data)
