"""From a trained soup to specialists: estimate h from in-house texts, refine it, instantiate Θ(h).

    soup = soe.load("runs/tiny/checkpoints/last.ckpt", data="data/fixture")
    est = soup.estimate_weights("inhouse.jsonl")          # CRISP histogram over the k domains
    ref = soup.refine("inhouse.jsonl", est.weights)      # optional: minimise the soup's loss in h
    spec = soup.specialist(ref.weights)                  # dense LlamaLM, one S + α·E away
    spec.save("my-specialist")                           # Hugging Face LlamaForCausalLM directory

Domain weights are accepted as a {domain: weight} dict (missing domains are 0), a list of k
numbers, a domain name, inline "a=0.3,b=0.7" pairs, "prior", or a weights.json path.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from soe.shards import Meta, check_tokenizer, load_meta
from soe.soup import SoupOfExperts, check_h

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


# ---------------------------------------------------------------------------- in-house texts
def read_texts(source: str | os.PathLike | list[str], text_field: str = "text", max_docs: int | None = None) -> list[str]:
    """Documents from a list, a .txt (blank-line-separated), .jsonl/.json/.parquet file, a saved
    `datasets` directory, or ``hf:NAME[:SPLIT]`` (datasets.load_dataset). Raises on empty input."""
    if isinstance(source, (list, tuple)):
        docs, where = [str(t) for t in source], "the given list"
    else:
        where = str(source)
        docs = _read_source(where, text_field)
    docs = [d for d in docs if d and d.strip()]
    if max_docs is not None:
        if max_docs <= 0:
            raise ValueError(f"max_docs={max_docs} must be positive")
        docs = docs[:max_docs]
    if not docs:
        raise ValueError(f"{where}: no non-empty texts found (expected documents in field {text_field!r})")
    return docs


def _read_source(src: str, field_: str) -> list[str]:
    if src.startswith("hf:"):
        import datasets

        name, _, split = src[3:].partition(":")
        return list(datasets.load_dataset(name, split=split or "train")[field_])
    path = Path(src)
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a saved `datasets` directory ({e})") from e
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return _column(ds.column_names, lambda: ds[field_], field_, path)
    if not path.is_file():
        raise FileNotFoundError(f"in-house text file {path} not found")
    if path.suffix not in TEXT_SUFFIXES:
        raise ValueError(f"{path}: unsupported suffix {path.suffix!r}; expected one of {TEXT_SUFFIXES} or a datasets dir")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ValueError(f"{path}: unreadable parquet file ({e})") from e
        return _column(table.column_names, lambda: table.column(field_).to_pylist(), field_, path)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if path.suffix == ".txt":
        return [p.strip() for p in raw.split("\n\n")]
    if path.suffix == ".json":
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of strings or objects, got {type(items).__name__}")
        return [_field(it, field_, f"{path}[{i}]") for i, it in enumerate(items)]
    docs = []
    for i, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                docs.append(_field(json.loads(line), field_, f"{path}:{i}"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: invalid JSON line ({e})") from e
    return docs


def _field(item, field_: str, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get(field_), str):
        return item[field_]
    raise ValueError(f"{where}: expected a string or an object with a string field {field_!r}")


def _column(names, get, field_: str, where) -> list[str]:
    if field_ not in names:
        raise ValueError(f"{where}: no column {field_!r}; columns are {list(names)} (use --text-field)")
    return [str(t) for t in get() if t is not None]


# ---------------------------------------------------------------------------- domain weights
def parse_weights(spec, domains: list[str], prior=None) -> torch.Tensor:
    """Domain weights from any accepted form → validated h: (k,) float32 summing to 1."""
    k = len(domains)
    where = "weights"
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s.endswith(".json") or (os.sep in s and Path(s).exists()):
            path = Path(s)
            if not path.is_file():
                raise FileNotFoundError(f"weights file {path} not found")
            try:
                spec = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"weights file {path}: invalid JSON ({e})") from e
            where = str(path)
        elif s == "prior" and "prior" not in domains:
            if prior is None:
                raise ValueError("weights 'prior' requested but no prior is known")
            return check_h(torch.as_tensor(prior, dtype=torch.float32), k, "prior")
        elif "=" in s:
            spec = {}
            for part in s.split(","):
                name, eq, val = part.partition("=")
                try:
                    spec[name.strip()] = float(val)
                except ValueError:
                    raise ValueError(f"weights {s!r}: {part!r} is not a domain=number pair") from None
        else:
            spec = {s: 1.0}
    if isinstance(spec, dict):
        unknown = [d for d in spec if d not in domains]
        if unknown:
            raise ValueError(f"{where}: unknown domain(s) {unknown}; the checkpoint's domains are {domains}")
        try:
            vals = [float(spec.get(d, 0.0)) for d in domains]
        except (TypeError, ValueError):
            raise ValueError(f"{where}: weights must be numbers, got {spec}") from None
        return check_h(torch.tensor(vals, dtype=torch.float32), k, where)
    return check_h(torch.as_tensor(spec, dtype=torch.float32), k, where)


def weights_dict(h, domains: list[str]) -> dict[str, float]:
    """{domain: weight} in meta.json's order (what weights.json holds)."""
    return {d: float(w) for d, w in zip(domains, torch.as_tensor(h).tolist())}


def save_weights(path: str | os.PathLike, h, domains: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(weights_dict(h, domains), indent=2) + "\n")
    return path


def top_domains(weights: dict[str, float], n: int = 5) -> list[tuple[str, float]]:
    return sorted(((d, w) for d, w in weights.items() if w > 0), key=lambda x: -x[1])[:n]


# ---------------------------------------------------------------------------- estimate (CRISP)
@dataclass
class Estimate:
    weights: dict[str, float]
    """Token-weighted histogram of nearest-centroid assignments, {domain: weight} in meta order."""
    tokens: dict[str, int]
    """In-house tokens assigned to each domain."""
    n_docs: int
    n_chunks: int


def estimate_weights(data_dir: str | os.PathLike, texts, *, max_docs: int | None = None, min_weight: float = 0.0,
                     text_field: str = "text", chunk_chars: int | None = None) -> Estimate:
    """Embed in-house documents with the data's embedder, assign each chunk to its nearest domain
    centroid and return the token-weighted histogram (weights below ``min_weight`` dropped)."""
    from tokenizers import Tokenizer

    from data_prep.text import chunk_text
    from soe.embed import build_embedder, nearest_centroid

    if not 0.0 <= min_weight < 1.0:
        raise ValueError(f"min_weight={min_weight} must be in [0, 1)")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    check_tokenizer(meta, data_dir)
    src = meta.domain_source or {}
    if not src.get("embedder") or not src.get("centroids_file"):
        raise ValueError(f"{data_dir}/meta.json: domain_source={src} records no embedder and centroids_file; "
                         "estimating weights needs domains made by embedding (re-run data preparation)")
    centroids = np.load(data_dir / src["centroids_file"], allow_pickle=False)
    if centroids.shape[0] != len(meta.domains):
        raise ValueError(f"{data_dir / src['centroids_file']}: {centroids.shape[0]} centroids for "
                         f"{len(meta.domains)} domains")
    docs = read_texts(texts, text_field, max_docs)
    size = int(chunk_chars or src.get("chunk_chars") or 4096)
    chunks = [c for d in docs for c in chunk_text(d, size)]
    if not chunks:
        raise ValueError(f"{texts}: documents are whitespace only")
    tok = Tokenizer.from_file(str(data_dir / meta.tokenizer_file))
    n_tok = np.array([len(e.ids) for e in tok.encode_batch(chunks)], dtype=np.float64)  # (N,)
    assign = nearest_centroid(build_embedder(src["embedder"], root=data_dir).encode(chunks), centroids)  # (N,)
    counts = np.bincount(assign, weights=n_tok, minlength=len(meta.domains))  # (k,)
    if counts.sum() <= 0:
        raise ValueError(f"{texts}: the in-house documents contain no tokens")
    h = counts / counts.sum()
    if min_weight > 0:
        keep = h >= min_weight
        keep[np.argmax(h)] = True
        h = np.where(keep, h, 0.0)
        h = h / h.sum()
    return Estimate(weights_dict(torch.from_numpy(h), meta.domains),
                    {d: int(c) for d, c in zip(meta.domains, counts)}, len(docs), len(chunks))


# ---------------------------------------------------------------------------- token windows
def token_stream(docs: list[str], tokenizer_file: str | os.PathLike, eos_id: int) -> np.ndarray:
    """Documents tokenised and joined with EOS, as in the shards: (N,) int64."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = [np.append(np.asarray(e.ids, np.int64), eos_id) for e in tok.encode_batch(docs)]
    return np.concatenate(ids)


def windows(stream: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of seq_len+1 tokens (stride seq_len): (W, T+1) int64; evenly
    spaced subset when more than max_windows."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise ValueError(f"{len(stream)} tokens cannot hold one window of seq_len+1={seq_len + 1}")
    starts = np.arange(n) * seq_len
    if max_windows is not None and n > max_windows:
        starts = starts[np.linspace(0, n - 1, max_windows).astype(np.int64)]
    return torch.from_numpy(np.asarray(stream[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64))


@torch.no_grad()
def mean_loss(forward, wins: torch.Tensor, batch_size: int = 32) -> float:
    """Token-mean next-token loss of ``forward(x, y) -> loss`` over windows (W, T+1)."""
    total, count = 0.0, 0
    for i in range(0, len(wins), batch_size):
        b = wins[i:i + batch_size]
        total += float(forward(b[:, :-1], b[:, 1:])) * b[:, 1:].numel()
        count += b[:, 1:].numel()
    return total / count


# ---------------------------------------------------------------------------- refinement
@dataclass
class Refinement:
    weights: dict[str, float]
    """The returned h: the start, or the iterate with the best held-out loss among those whose
    in-sample loss is not worse than the start's."""
    start_weights: dict[str, float]
    fit_loss_start: float
    """In-sample loss at the start h, on ≤ 256 evenly spaced windows of the fit part."""
    fit_loss: float
    holdout_loss_start: float
    holdout_loss: float
    steps: int
    fit_windows: int
    holdout_windows: int
    history: list[dict] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        return self.weights != self.start_weights


def refine(soup: SoupOfExperts, h0: torch.Tensor, stream: np.ndarray, domains: list[str], *, holdout: float = 0.2,
           steps: int = 200, lr: float = 0.05, batch_size: int = 16, eval_every: int = 10, patience: int = 5,
           seq_len: int | None = None, seed: int = 0) -> Refinement:
    """Minimise the soup's loss in h on the simplex (h = softmax(z), z from log h0) on the first
    1-holdout of the in-house token stream, early-stopping on the rest."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be in (0, 1)")
    dev = next(soup.parameters()).device
    cut = int(len(stream) * (1 - holdout))
    T = min(seq_len or soup.model_cfg.max_seq_len, soup.model_cfg.max_seq_len, cut - 1, len(stream) - cut - 1)
    if T < 8:
        raise ValueError(f"in-house data too small to refine: {len(stream)} tokens (need ≥ 8 tokens per window "
                         f"in both the fit and the {holdout:.0%} held-out part)")
    fit, held = windows(stream[:cut], T).to(dev), windows(stream[cut:], T, max_windows=256).to(dev)
    # The in-sample check evaluates at most 256 evenly spaced fit windows: evaluating all of them every
    # eval_every steps made refinement on a 300k-token sample take minutes on CPU.
    fit_eval = windows(stream[:cut], T, max_windows=256).to(dev)
    h0 = h0.to(dev)

    def loss_at(h, wins):
        params = soup.instantiate(h)
        return mean_loss(lambda x, y: soup(x, targets=y, params=params)[1], wins)

    start = (loss_at(h0, fit_eval), loss_at(h0, held))
    best = (start[1], h0, start[0])  # (holdout loss, h, fit loss)
    hist = [{"step": 0, "fit": start[0], "holdout": start[1]}]
    if soup.n == 0:  # dense: h has no effect
        steps = 0
    z = torch.log(h0.clamp_min(1e-3)).detach().requires_grad_(True)  # logits: (k,)
    opt = torch.optim.Adam([z], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    flags = [p.requires_grad for p in soup.parameters()]
    for p in soup.parameters():
        p.requires_grad_(False)
    bad, step = 0, 0
    try:
        for step in range(1, steps + 1):
            idx = torch.randperm(len(fit), generator=gen)[:batch_size].to(dev)
            b = fit[idx]
            loss = soup(b[:, :-1], targets=b[:, 1:], params=soup.instantiate(torch.softmax(z, 0)))[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % eval_every and step != steps:
                continue
            h = torch.softmax(z.detach(), 0)
            fl, hl = loss_at(h, fit_eval), loss_at(h, held)
            hist.append({"step": step, "fit": fl, "holdout": hl})
            if fl <= start[0] and hl < best[0]:
                best, bad = (hl, h.clone(), fl), 0
            else:
                bad += 1
                if bad >= patience:
                    break
    finally:
        for p, f in zip(soup.parameters(), flags):
            p.requires_grad_(f)
    return Refinement(weights_dict(best[1].cpu(), domains), weights_dict(h0.cpu(), domains), start[0], best[2],
                      start[1], best[0], step, len(fit), len(held), hist)


# ---------------------------------------------------------------------------- checkpoints
def find_checkpoint(path: str | os.PathLike) -> Path:
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
    """A trained SoupOfExperts (eval mode) from a Lightning checkpoint, loaded with weights_only=True.
    Returns (soup, hyper-parameters, checkpoint path)."""
    from soe.module import SoupModule

    path = find_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(state, dict) or "hyper_parameters" not in state or "state_dict" not in state:
        raise ValueError(f"{path}: not a soe training checkpoint (no hyper_parameters/state_dict)")
    hp = dict(state["hyper_parameters"])
    module = SoupModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    module.load_state_dict(state["state_dict"], strict=True)
    hp["data_dir"] = (state.get("datamodule_hyper_parameters") or {}).get("data_dir")
    return module.soup.to(device).eval(), hp, path


def data_for(data_dir: str | os.PathLike | None, hp: dict, where: Path) -> tuple[Path, Meta]:
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


def timed_instantiate(soup: SoupOfExperts, h: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], float]:
    """Θ(h) as detached tensors that share no memory with the soup, and the seconds it took."""
    shared = {p.untyped_storage().data_ptr() for p in soup.parameters()}
    if h is not None:
        h = h.to(next(soup.parameters()).device)
    t0 = time.perf_counter()
    with torch.no_grad():
        params = soup.instantiate(h)
        params = {k: v.clone() if v.untyped_storage().data_ptr() in shared else v for k, v in params.items()}
    if next(soup.parameters()).is_cuda:
        torch.cuda.synchronize()
    return params, time.perf_counter() - t0

