"""`soe serve` under load: N concurrent clients asking M different specialists, against the same load on one
pre-instantiated specialist (the floor), on loopback, bounded in requests and time.

    python -m bench.bench_serve                          # demo-size soup (n = 8, k = 9), 32 clients, M = 8
    python -m bench.bench_serve --clients 64 --specialists 16 --requests 256 --size tiny

The soup is the demo model's size (configs/demo-cpu.yaml: 4 layers, d = 256, vocab 8192, context 128) with random
weights and a word-level tokenizer of its vocabulary (nothing to train or download): random weights give
completions of full length, so every request is `--max-tokens` tokens. Each scenario runs the real server
(`soe.serve.background`: the app and uvicorn of `soe serve`) in this process; the clients run in a subprocess
(one asyncio loop, `--clients` concurrent streaming requests, each client sending its next request when the last
one ends) so that they do not share the server's interpreter lock. Scenarios, the same requests in each:

- `soup`: request i asks for h_(i mod M) (M random domain weights, `model: soup` + `weights`), a cache that holds
  them all: each h instantiated once, on first use;
- `soup, no cache`: the same with `--cache-mb 0`: every request instantiates its specialist;
- `floor`: every request asks for one h, instantiated before the clock starts.

Printed per scenario: p50 / p99 time to first token and to the whole completion, completion tokens/s over the
scenario's wall time, the share of the summed latency spent instantiating (the responses' `instantiate_ms`),
the cache hit rate and rows per forward (the server's /health), and errors (any non-200 or broken stream).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.common import CONFIGS, machine  # noqa: E402
from soe.core.model import ModelConfig  # noqa: E402
from soe.core.soup import SoupConfig, SoupOfExperts  # noqa: E402

K = 9  # domains, as the demo corpus


def word_tokenizer(vocab: int):
    """A word-level tokenizer over 'w0'..'w{V-1}' (w0 = EOS): every id decodes to one word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return tok


def random_soup(size: str, n: int) -> SoupOfExperts:
    net: ModelConfig = CONFIGS[size]["net"]
    net = ModelConfig(**{**net.to_dict(), "max_seq_len": 128 if size == "demo" else net.max_seq_len})
    torch.manual_seed(0)
    soup = SoupOfExperts(net, K, SoupConfig(n_experts=n, router_hidden=64, router_depth=1, expert_init="normal"))
    return soup.eval()


def plan(a) -> list[dict]:
    """The requests, in order: (weights index, prompt, seed); the same list for every scenario."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(a.requests):
        words = torch.randint(1, 8192 if a.size == "demo" else 2048, (a.prompt_tokens,), generator=g).tolist()
        out.append({"h": i % a.specialists, "prompt": " ".join(f"w{w}" for w in words), "seed": i})
    return out


# ------------------------------------------------------------------ the client side (a subprocess)
async def client_main(
    url: str, requests: list[dict], weights: list[dict], clients: int, max_tokens: int, time_limit: float
) -> list[dict]:
    import httpx2 as httpx

    todo, results = list(enumerate(requests)), []
    t_stop = time.perf_counter() + time_limit
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=max(time_limit, 60), limits=limits) as c:

        async def one_client():
            while todo and time.perf_counter() < t_stop:
                i, r = todo.pop(0)
                body = {
                    "model": "soup",
                    "weights": weights[r["h"]],
                    "prompt": r["prompt"],
                    "max_tokens": max_tokens,
                    "temperature": 1.0,
                    "seed": r["seed"],
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                row = {"i": i, "error": None}
                t0 = time.perf_counter()
                try:
                    async with c.stream("POST", "/v1/completions", json=body) as resp:
                        if resp.status_code != 200:
                            row["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                        else:
                            async for line in resp.aiter_lines():
                                if not line.startswith("data: ") or line == "data: [DONE]":
                                    continue
                                ev = json.loads(line[6:])
                                if "error" in ev:
                                    row["error"] = ev["error"]["message"]
                                if "instantiate_ms" in ev:
                                    row["instantiate_ms"], row["cached"] = ev["instantiate_ms"], ev["cached"]
                                if ev.get("choices") and ev["choices"][0]["text"] and "ttft" not in row:
                                    row["ttft"] = time.perf_counter() - t0
                                if ev.get("usage"):
                                    row["tokens"] = ev["usage"]["completion_tokens"]
                except Exception as e:  # a broken connection counts as an error, the client goes on
                    row["error"] = f"{type(e).__name__}: {e}"
                row["latency"] = time.perf_counter() - t0
                if row["error"] is None and not {"ttft", "tokens"} <= set(row):
                    row["error"] = "incomplete stream"
                results.append(row)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return results


def run_clients(url: str, reqs: list[dict], weights: list[dict], a) -> tuple[list[dict], float]:
    spec = json.dumps(
        {
            "url": url,
            "requests": reqs,
            "weights": weights,
            "clients": a.clients,
            "max_tokens": a.max_tokens,
            "time_limit": a.time_limit,
        }
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_serve", "--client"],
        input=spec,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=a.time_limit + 120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"the client process failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    return res["rows"], res["wall"] if res["rows"] else wall


# ------------------------------------------------------------------ the server side
def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def scenario(name: str, soup, tok, weights: list[dict], reqs: list[dict], a, cache_mb: float, warm: bool) -> dict:
    import httpx2 as httpx

    from soe.serve.background import BackgroundServer
    from soe.serve.server import build_server

    domains = [f"d{i}" for i in range(K)]
    srv = build_server(
        soup,
        domains,
        torch.full((K,), 1.0 / K),
        tok,
        0,
        f"random {a.size}-size soup",
        cache_mb=cache_mb,
        max_batch=a.max_batch,
    )
    with BackgroundServer(srv) as live:
        if warm:  # the floor: its one specialist is instantiated before the clock starts
            httpx.post(
                live.url + "/v1/completions",
                json={"model": "soup", "weights": weights[0], "prompt": "w1", "max_tokens": 1},
                timeout=60,
            ).raise_for_status()
        before = httpx.get(live.url + "/health").json()
        rows, wall = run_clients(live.url, reqs, weights, a)
        after = httpx.get(live.url + "/health").json()
    ok = [r for r in rows if r["error"] is None]
    hits = after["cache"]["hits"] - before["cache"]["hits"]
    misses = after["cache"]["misses"] - before["cache"]["misses"]
    lat = sum(r["latency"] for r in ok)
    forwards = after["forwards"] - before["forwards"]
    return {
        "name": name,
        "sent": len(rows),
        "errors": len(rows) - len(ok),
        "first_errors": [r["error"] for r in rows if r["error"]][:3],
        "ttft_p50": pct([r["ttft"] for r in ok], 0.5) * 1e3,
        "ttft_p99": pct([r["ttft"] for r in ok], 0.99) * 1e3,
        "lat_p50": pct([r["latency"] for r in ok], 0.5) * 1e3,
        "lat_p99": pct([r["latency"] for r in ok], 0.99) * 1e3,
        "tok_s": sum(r["tokens"] for r in ok) / wall,
        "wall": wall,
        "inst_share": sum(r["instantiate_ms"] for r in ok) / 1e3 / lat if lat else float("nan"),
        "inst_wall": (after["cache"]["instantiate_s_total"] - before["cache"]["instantiate_s_total"]) / wall,
        "inst_ms": statistics.median([r["instantiate_ms"] for r in ok if not r["cached"]] or [0.0]),
        "hit_rate": hits / (hits + misses) if hits + misses else float("nan"),
        "rows_per_forward": (after["rows"] - before["rows"]) / forwards if forwards else float("nan"),
    }


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the load generator (a subprocess)
    ap.add_argument("--size", choices=sorted(CONFIGS), default="demo")
    ap.add_argument("--experts", type=int, default=8, help="n, the soup's experts (default: 8)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    ap.add_argument("--specialists", type=int, default=8, help="M, different h asked for (default: 8)")
    ap.add_argument("--requests", type=int, default=128, help="requests per scenario (default: 128)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per completion (default: 32)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens (default: 16)")
    ap.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default: 8)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per scenario at most (default: 120)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.client:
        spec = json.load(sys.stdin)
        t0 = time.perf_counter()
        rows = asyncio.run(
            client_main(
                spec["url"], spec["requests"], spec["weights"], spec["clients"], spec["max_tokens"], spec["time_limit"]
            )
        )
        print(json.dumps({"rows": rows, "wall": time.perf_counter() - t0}))
        return 0
    if min(a.clients, a.specialists, a.requests, a.max_tokens, a.prompt_tokens, a.max_batch) < 1:
        ap.error("--clients, --specialists, --requests, --max-tokens, --prompt-tokens, --max-batch: expected ≥ 1")
    soup = random_soup(a.size, a.experts)
    vocab = soup.net_cfg.vocab_size
    tok = word_tokenizer(vocab)
    g = torch.Generator().manual_seed(1)
    weights = [
        {f"d{j}": round(float(w), 6) for j, w in enumerate(torch.rand(K, generator=g))} for _ in range(a.specialists)
    ]
    reqs = plan(a)
    spec_bytes = sum(p.numel() * p.element_size() for p in soup.shared.values())
    print(f"machine: {machine()}")
    print(
        f"soup: random {a.size}-size, {soup.net_cfg.num_params() / 1e6:.2f}M params per specialist "
        f"({spec_bytes / 2**20:.1f} MiB), n = {a.experts}, k = {K}, context {soup.net_cfg.max_seq_len}; "
        f"{a.clients} clients, M = {a.specialists}, {a.requests} requests of {a.prompt_tokens} + {a.max_tokens} "
        f"tokens (streamed), max batch {a.max_batch}, ≤ {a.time_limit:g} s per scenario"
    )
    cache_all = (a.specialists + 1) * spec_bytes / 2**20
    rows = [
        scenario(f"soup, M = {a.specialists}", soup, tok, weights, reqs, a, cache_all, False),
        scenario(f"soup, M = {a.specialists}, no cache", soup, tok, weights, reqs, a, 0.0, False),
        scenario("floor: 1 pre-instantiated", soup, tok, weights, [{**r, "h": 0} for r in reqs], a, cache_all, True),
    ]
    print(
        "ms; inst. share: Σ instantiate_ms ÷ Σ latency (of the requests) / instantiating ÷ wall time (of the "
        "engine, which instantiates between steps)"
    )
    print(
        f"{'scenario':<28} {'sent':>5} {'err':>4} {'TTFT p50':>9} {'p99':>7} {'total p50':>10} {'p99':>7} "
        f"{'tok/s':>7} {'inst. share':>13} {'inst. ms':>8} {'hit rate':>8} {'rows/fwd':>8}"
    )
    for r in rows:
        share = f"{r['inst_share']:.1%} / {r['inst_wall']:.1%}"
        print(
            f"{r['name']:<28} {r['sent']:>5} {r['errors']:>4} {r['ttft_p50']:>9.0f} {r['ttft_p99']:>7.0f} "
            f"{r['lat_p50']:>10.0f} {r['lat_p99']:>7.0f} {r['tok_s']:>7.0f} {share:>13} "
            f"{r['inst_ms']:>8.1f} {r['hit_rate']:>8.1%} {r['rows_per_forward']:>8.2f}"
        )
        if r["errors"]:
            print(f"   errors: {r['first_errors']}")
    floor = rows[-1]
    for r in rows[:-1]:
        print(
            f"{r['name']} ÷ floor: TTFT p50 {r['ttft_p50'] / floor['ttft_p50']:.2f}×, total p50 "
            f"{r['lat_p50'] / floor['lat_p50']:.2f}×, tokens/s {r['tok_s'] / floor['tok_s']:.2f}×"
        )
    if any(r["errors"] for r in rows):
        raise SystemExit(f"bench_serve: {sum(r['errors'] for r in rows)} request(s) failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
