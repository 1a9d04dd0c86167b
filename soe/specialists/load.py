"""Loading a checkpoint or an export: the `Soup` and `Specialist` handles behind ``soe.load`` / `soe.api`.

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

import hashlib
import os
import re
import sys
import time
import urllib.parse
from pathlib import Path

import torch

from soe.checks import check_device
from soe.core.model import LlamaLM
from soe.core.weights import weights_dict
from soe.data.text import read_texts, token_stream
from soe.fileio import read_json
from soe.specialists import atomic, export
from soe.specialists import evaluate as ev
from soe.specialists.estimate import Estimate, estimate_weights
from soe.specialists.generate import generate
from soe.specialists.refine import Refinement, refine
from soe.train.checkpoint import load_checkpoint, prepared_data
from soe.weightspec import parse_weights


def _device(device) -> torch.device:
    return check_device(device, "device")


class Specialist:
    """A standalone dense model with its tokenizer (from a soup, or loaded from an export)."""

    def __init__(
        self, model: LlamaLM, tokenizer_file: Path, eos_id: int, info: dict, instantiate_s: float | None = None
    ):
        self.model, self.tokenizer_file, self.eos_id, self.info = model, Path(tokenizer_file), eos_id, info
        self.instantiate_s = instantiate_s
        """Seconds Θ(h) took to instantiate (None when loaded from disk)."""

    @property
    def weights(self) -> dict[str, float] | None:
        return self.info.get("weights")

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.info.get("tokenizer_sha256")

    def save(
        self, out: str | os.PathLike, fmt: str = "hf", overwrite: bool = False, dtype: torch.dtype = torch.float32
    ) -> Path:
        """Export atomically as a Hugging Face directory ('hf') or the project's own format ('soe')."""
        return export.save_specialist(
            out,
            dict(self.model.named_parameters()),
            self.model.cfg,
            tokenizer_file=self.tokenizer_file,
            eos_id=self.eos_id,
            info=self.info,
            fmt=fmt,
            overwrite=overwrite,
            dtype=dtype,
        )

    def generate(
        self,
        prompt: str = "",
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int | None = 50,
        seed: int = 0,
    ) -> str:
        return generate(self.model, self.tokenizer_file, self.eos_id, prompt, max_new_tokens, temperature, top_k, seed)

    def evaluate(
        self,
        data: str | os.PathLike | None = None,
        sets: list[str] | None = None,
        split: str = "val",
        texts=None,
        max_windows: int | None = ev.DEFAULT_WINDOWS,
        label: str = "specialist",
    ) -> list[dict]:
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
        self.source = str(ckpt_path)
        """Where the checkpoint came from (its path, or the URL it was downloaded from)."""
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

    def estimate_weights(
        self,
        texts,
        max_docs: int | None = None,
        min_weight: float = 0.0,
        text_field: str = "text",
        temperature: float | None = None,
    ) -> Estimate:
        """h of in-house texts: the nearest-centroid histogram, or a soft one at ``temperature``."""
        return estimate_weights(
            self.data_dir,
            texts,
            max_docs=max_docs,
            min_weight=min_weight,
            text_field=text_field,
            temperature=temperature,
        )

    def refine(self, texts, weights, max_docs: int | None = None, text_field: str = "text", **kw) -> Refinement:
        """Optimise h from ``weights`` on the in-house texts (see `soe.specialists.refine.refine` for options)."""
        d, meta = self._prepared()
        stream = token_stream(read_texts(texts, text_field, max_docs), d / meta.tokenizer_file, meta.eos_id)
        return refine(self.model, self.weights(weights), stream, self.domains, **kw)

    def specialist(self, weights="prior") -> Specialist:
        """The dense model Θ(h) for these domain weights.

        A dense checkpoint (n = 0 experts: the generic model) is the same model for every h, so only
        ``weights="prior"`` is accepted and the result is labelled dense, with no domain weights."""
        d, meta = self._prepared()
        dense = self.model.n == 0
        if dense and not (isinstance(weights, str) and weights == "prior"):
            raise ValueError(
                f"{self.source} is a dense checkpoint (n = 0 experts, the generic model): its model "
                f"does not depend on h, so weights {_short(weights)} would label it falsely; "
                "use weights 'prior' (--weights prior) to get the generic model"
            )
        h = self.weights(weights)
        t0 = time.perf_counter()
        net = self.model.specialist(h)
        if next(net.parameters()).is_cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        info = {
            "weights": None if dense else weights_dict(h, self.domains),
            "checkpoint": self.source,
            "tokenizer_sha256": meta.tokenizer_sha256,
            "n_experts": self.model.n,
            "corpus_lock_id": self.hp.get("corpus_lock_id"),
        }
        if dense:
            info["dense"] = "the generic model of a checkpoint without experts: independent of domain weights"
        return Specialist(net, d / meta.tokenizer_file, meta.eos_id, info, secs)

    def instantiate(self, weights, out: str | os.PathLike, fmt: str = "hf", overwrite: bool = False) -> Specialist:
        spec = self.specialist(weights)
        spec.save(out, fmt, overwrite)
        return spec

    def evaluate(
        self,
        weights: list | None = None,
        prior: bool = False,
        sets: list[str] | None = None,
        split: str = "val",
        texts=None,
        max_windows: int | None = ev.DEFAULT_WINDOWS,
        labels: list[str] | None = None,
    ) -> list[dict]:
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


def _short(weights) -> str:
    text = repr(weights)
    return text if len(text) <= 80 else text[:77] + "..."


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def fetch_checkpoint(url: str) -> Path:
    """A checkpoint named by an http(s):// or file:// URL, downloaded once into torch.hub's cache
    (``torch.hub.get_dir()/checkpoints``, under a name unique to the URL); loaded like any file after."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https", "file"):
        raise ValueError(f"checkpoint {url}: unsupported URL scheme {scheme!r}; expected http://, https:// or file://")
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.ckpt"
    dst = Path(torch.hub.get_dir()) / "checkpoints" / f"soe-{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:  # writes a temporary file and renames it: an interrupted download leaves no partial checkpoint
            torch.hub.download_url_to_file(url, str(dst), progress=sys.stderr.isatty())
        except Exception as e:
            raise ValueError(f"could not download checkpoint {url}: {type(e).__name__}: {e}") from None
    return dst


def load(path: str | os.PathLike, data: str | os.PathLike | None = None, device=None) -> Soup | Specialist:
    """A training checkpoint (file, directory holding last.ckpt, or http(s)/file URL) → `Soup`; an exported
    specialist directory → `Specialist`. ``data``: the prepared directory (needed when the checkpoint lacks it).
    An export killed while replacing ``path`` is repaired first (`soe.specialists.atomic.recover`)."""
    dev = _device(device)
    if isinstance(path, str) and _URL.match(path):
        model, hp, ckpt = load_checkpoint(fetch_checkpoint(path), dev)
        soup = Soup(model, hp, ckpt, data)
        soup.source = path
        return soup
    p = Path(path)
    if not os.path.lexists(p) and atomic.interrupted(p):
        atomic.recover(p)
    if p.is_dir() and ((p / export.SOE_FILE).is_file() or (p / "config.json").is_file()):
        net, info = export.load_specialist(p, dev)
        tok = p / "tokenizer.json"
        if not tok.is_file():
            raise FileNotFoundError(f"{p}: no tokenizer.json in the specialist directory")
        try:
            from tokenizers import Tokenizer

            n_tok = Tokenizer.from_file(str(tok)).get_vocab_size()
        except Exception as e:  # the tokenizers library raises its own error type on a corrupt file
            raise ValueError(f"{tok}: not a readable tokenizer ({type(e).__name__}: {str(e)[:200]})") from None
        if n_tok > net.cfg.vocab_size:  # its ids would index past the embedding
            raise ValueError(
                f"{tok}: the tokenizer has {n_tok} tokens, more tokens than the model's vocabulary "
                f"({net.cfg.vocab_size}); expected the tokenizer the model was trained with"
            )
        eos = info.get("eos_id")
        if eos is None:
            eos = read_json(p / "config.json", "model config").get("eos_token_id")
        if not isinstance(eos, int) or isinstance(eos, bool) or not 0 <= eos < net.cfg.vocab_size:
            raise ValueError(
                f"{p}: no eos_id in {export.SOE_FILE} or eos_token_id in config.json that is an "
                f"integer in [0, {net.cfg.vocab_size})"
            )
        return Specialist(net, tok, eos, info)
    model, hp, ckpt = load_checkpoint(p, dev)
    return Soup(model, hp, ckpt, data)
