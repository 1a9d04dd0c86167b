"""``soe serve CKPT``: the command line (the server itself: soe/serve/); FastAPI and uvicorn load only when it runs.

    soe serve runs/demo/last.ckpt --port 8000 --specialist legal=legal.json --cache-mb 512 --max-batch 8
    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
         -d '{"model": "prior", "prompt": "The", "max_tokens": 20, "temperature": 0}'

The request's ``model`` names the specialist: a domain of the checkpoint (one-hot h), ``prior``, a name given by
--specialist, or ``soup`` with ``weights: {domain: weight}``. docs/serving.md.
"""

from __future__ import annotations

import argparse

from soe.cli.types import common, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve one soup as any number of specialists (OpenAI-compatible HTTP)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ckpt", help="checkpoint, run directory, or http(s):// URL of a checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: a free one, printed)")
    p.add_argument(
        "--specialist",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="register a name for domain weights (weights.json, 'a=0.3,b=0.7', a domain, 'prior'); repeatable",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=1024.0,
        help="bytes of instantiated specialists the LRU cache keeps, in MiB (default: 1024; 0: none)",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=8,
        help="requests decoded together per step (default: 8); the others wait in a FIFO queue",
    )
    p.add_argument(
        "--max-queue", type=positive_int, default=256, help="requests waiting at most; beyond, 503 (default: 256)"
    )
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    common(p)


def cmd_serve(a) -> None:
    import logging
    import math

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"soe serve needs the 'serve' extra ({e.name} is not installed): pip install -e '.[serve]'"
        ) from None
    from soe.serve.app import serve
    from soe.serve.server import load_server

    if not (math.isfinite(a.cache_mb) and a.cache_mb >= 0):
        raise ValueError(f"--cache-mb {a.cache_mb}: expected a number of MiB ≥ 0")
    if not 0 <= a.port <= 65535:
        raise ValueError(f"--port {a.port}: expected 0..65535")
    logging.basicConfig(level=a.log_level.upper(), format="soe serve: %(levelname)s %(message)s")
    srv = load_server(
        a.ckpt,
        data=a.data,
        device=a.device,
        specialists=a.specialist,
        cache_mb=a.cache_mb,
        max_batch=a.max_batch,
        max_queue=a.max_queue,
    )
    serve(srv, a.host, a.port, a.log_level)
