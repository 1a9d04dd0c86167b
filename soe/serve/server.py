"""What ``soe serve`` holds: the soup, its tokenizer, the catalog of names, the cache and the engine; and the
listening socket. Nothing here imports FastAPI or uvicorn (the app and its loop are `soe.serve.app`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from soe.serve.cache import SpecialistCache
from soe.serve.catalog import Catalog
from soe.serve.engine import Engine

MAX_BODY = 1 << 20  # bytes of a request body; a prompt longer than the context is refused anyway


@dataclass
class Server:
    catalog: Catalog
    engine: Engine
    tokenizer: object  # tokenizers.Tokenizer
    eos_id: int
    cfg: object  # soe.core.model.ModelConfig
    source: str
    n_experts: int
    max_body: int = MAX_BODY

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def parse_specialists(specs: list[str]) -> dict[str, str]:
    """``--specialist NAME=WEIGHTS`` (repeatable) → {name: weights spec}; WEIGHTS is any form `parse_weights`
    accepts (weights.json, 'a=0.3,b=0.7', a domain name, 'prior')."""
    out: dict[str, str] = {}
    for s in specs:
        name, eq, spec = s.partition("=")
        name = name.strip()
        if not eq or not name or not spec:
            raise ValueError(f"--specialist {s!r}: expected NAME=WEIGHTS (e.g. legal=weights.json)")
        if name in out:
            raise ValueError(f"--specialist {name}: registered twice")
        out[name] = spec
    return out


def load_server(
    ckpt,
    data=None,
    device=None,
    specialists: list[str] = (),
    cache_mb: float = 1024,
    max_batch: int = 8,
    max_queue: int = 256,
    max_body: int = MAX_BODY,
) -> Server:
    """The server of a soup checkpoint (its prepared data directory gives the tokenizer and the domains)."""
    from tokenizers import Tokenizer

    from soe import api
    from soe.data.shards import load_meta

    registered = parse_specialists(list(specialists))
    check_limits(cache_mb, max_batch, max_queue)
    soup = api.load(ckpt, data=data, device=device)
    if not isinstance(soup, api.Soup):
        raise ValueError(
            f"{ckpt} is an exported specialist directory; soe serve needs a training checkpoint "
            "(serve that one model with any server, e.g. transformers)"
        )
    data_dir = Path(soup.data_dir)
    meta = load_meta(data_dir)
    tok = Tokenizer.from_file(str(data_dir / meta.tokenizer_file))
    return build_server(
        soup.model,
        soup.domains,
        soup.prior,
        tok,
        meta.eos_id,
        soup.source,
        registered,
        cache_mb,
        max_batch,
        max_queue,
        max_body,
    )


def check_limits(cache_mb: float, max_batch: int, max_queue: int) -> None:
    if not cache_mb >= 0 or max_batch < 1 or max_queue < 1:
        raise ValueError(
            f"--cache-mb {cache_mb}, --max-batch {max_batch}, --max-queue {max_queue}: expected a "
            "cache ≥ 0 MB and at least 1 slot and 1 queue place"
        )


def build_server(
    model,
    domains: list[str],
    prior,
    tokenizer,
    eos_id: int,
    source: str,
    registered: dict[str, str] | None = None,
    cache_mb: float = 1024,
    max_batch: int = 8,
    max_queue: int = 256,
    max_body: int = MAX_BODY,
) -> Server:
    """The server of a `SoupOfExperts` in memory (bench/bench_serve.py serves a random one this way)."""
    check_limits(cache_mb, max_batch, max_queue)
    catalog = Catalog(domains, prior, model.n == 0, registered)
    cache = SpecialistCache(model.specialist, int(cache_mb * 2**20))
    engine = Engine(cache, model.net_cfg, max_batch, max_queue)
    return Server(catalog, engine, tokenizer, eos_id, model.net_cfg, source, model.n, max_body)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one, read back from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
