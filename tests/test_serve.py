"""`soe serve` (issue 27): the real server on a free loopback port, called with an HTTP client (httpx2, raw sockets)
and with the official `openai` client.

One tiny soup (3 text domains, n = 2, context 32) is trained once per module and served in a background thread
(`soe.serve.background`: the very app and uvicorn server of `soe serve`); one test starts `soe serve` itself as a
subprocess. Checked: different h → different completions; same h and seed → the same; each equals `soe instantiate`
+ `soe generate` on the exported specialist; streaming = non-streaming; every bad request → its 4xx naming the
field, and the server keeps answering; /v1/models, /health; the cache; a client that goes away frees its slot;
32 concurrent clients batched through the stacked forward give the sequential answers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx2")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from specialize_helpers import make_text_prepared, train_checkpoint  # noqa: E402

from soe.cli import main  # noqa: E402
from soe.serve.background import BackgroundServer  # noqa: E402
from soe.serve.server import load_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T = 32  # the context of specialize_helpers.NET
REGISTERED = {"cooking": 0.6, "law": 0.4, "space": 0.0}
MODEL_BYTES = 106_880  # one instantiated specialist of this soup (float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_env")
    prepared = make_text_prepared(root / "prepared")
    ckpt = train_checkpoint(prepared, root / "ckpt", steps=200)  # enough steps for h to change greedy text
    weights = root / "legalfood.json"
    weights.write_text(json.dumps(REGISTERED))
    return prepared, ckpt, weights


@pytest.fixture(scope="module")
def live(env):
    _, ckpt, weights = env
    # a cache of 3 specialists, so that a fourth h evicts one
    srv = load_server(str(ckpt), specialists=[f"legalfood={weights}"], cache_mb=3.5 * MODEL_BYTES / 2**20, max_batch=8)
    with BackgroundServer(srv) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def oai(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=30)


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def stream_text(client, **body) -> tuple[str, list[dict]]:
    chunks = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        assert ln.startswith("data: ")
        chunks.append(json.loads(ln[6:]))
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"]), chunks


def health(client) -> dict:
    return client.get("/health").json()


def test_health_and_models(client, oai):
    h = health(client)
    assert h["status"] == "ok" and h["n_experts"] == 2 and h["context"] == T and h["max_batch"] == 8
    names = ["prior", "cooking", "law", "space", "legalfood", "soup"]
    listed = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == names
    assert [m.id for m in oai.models.list()] == names
    by = {m["id"]: m for m in listed}
    assert by["law"]["weights"] == {"cooking": 0.0, "law": 1.0, "space": 0.0}
    assert by["legalfood"]["weights"] == pytest.approx(REGISTERED) and by["soup"]["weights"] is None
    assert oai.models.retrieve("legalfood").id == "legalfood"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4")
    for name in names:  # every listed name is accepted
        extra = {"weights": {"space": 1}} if name == "soup" else {}
        assert complete(client, model=name, prompt="The", max_tokens=2, **extra)["model"] == name


def soe_generate(
    tmp_path, env, capsys, weights: str, prompt: str, max_tokens: int, temperature: float, top_k: int, seed: int
) -> str:
    """`soe instantiate` then `soe generate` on the export, as a user would; returns what generate printed."""
    prepared, ckpt, _ = env
    out = tmp_path / "specialist"
    assert main(["instantiate", str(ckpt), "--data", str(prepared), "--weights", weights, "--out", str(out)]) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                str(out),
                "--prompt",
                prompt,
                "--max-tokens",
                str(max_tokens),
                "--temperature",
                str(temperature),
                "--top-k",
                str(top_k),
                "--seed",
                str(seed),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.endswith("\n")
    return printed[:-1]


GEN_CASES = [  # (model, extra weights, soe instantiate --weights, prompt, temperature, top_k, seed)
    ("law", None, "law", "The court", 0.0, 0, 0),
    ("space", None, "space", "The court", 0.0, 0, 0),
    ("soup", {"law": 3, "space": 1}, "law=3,space=1", "Orbit of", 0.0, 0, 0),
    ("legalfood", None, "REGISTERED", "", 0.0, 0, 0),
    ("prior", None, "prior", "The", 0.9, 0, 7),
    ("cooking", None, "cooking", "Bake the", 1.3, 5, 123),
]


@pytest.mark.parametrize("model,weights,spec,prompt,temperature,top_k,seed", GEN_CASES)
def test_completion_equals_soe_generate_on_the_export(
    env, oai, tmp_path, capsys, model, weights, spec, prompt, temperature, top_k, seed
):
    pytest.importorskip("transformers")  # the export's default format is Hugging Face's
    spec = str(env[2]) if spec == "REGISTERED" else spec
    extra = {"weights": weights} if weights else {}
    if top_k:
        extra["top_k"] = top_k
    r = oai.completions.create(
        model=model, prompt=prompt, max_tokens=20, temperature=temperature, seed=seed, extra_body=extra
    )
    assert r.object == "text_completion" and r.model == model and r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 20 and r.seed == seed
    assert isinstance(r.cached, bool) and r.instantiate_ms >= 0
    text = r.choices[0].text
    assert len(text) > 0
    assert prompt + text == soe_generate(tmp_path, env, capsys, spec, prompt, 20, temperature, top_k, seed)
    exported = json.loads((tmp_path / "specialist" / "soe_specialist.json").read_text())
    assert r.weights == exported["weights"]  # the h the server used, exactly (float32 values)


def test_different_h_differ_same_seed_repeats(client, oai):
    def greedy(model, **kw):
        return (
            oai.completions.create(model=model, prompt="The court", max_tokens=16, temperature=0, extra_body=kw)
            .choices[0]
            .text
        )

    texts = [greedy(m) for m in ("law", "space", "cooking", "prior", "legalfood")]
    texts.append(greedy("soup", weights={"law": 3, "space": 1}))
    assert len(set(texts)) == len(texts), texts  # six h, six completions
    w = {"law": 1, "space": 1}

    def sample(seed, model="soup", **kw):
        return (
            oai.completions.create(model=model, prompt="The", max_tokens=16, temperature=1.0, seed=seed, extra_body=kw)
            .choices[0]
            .text
        )

    assert sample(5, weights=w) == sample(5, weights=w) == sample(5, weights={"law": 0.5, "space": 0.5})
    assert len({sample(s, weights=w) for s in (1, 2, 3)}) > 1  # the seed matters
    assert sample(5, weights=w) != sample(5, "space")  # so does h, at one seed
    r = complete(client, model="law", prompt="The", max_tokens=4)  # no seed: one is drawn and reported
    assert isinstance(r["seed"], int) and r["seed"] >= 0


@pytest.mark.parametrize(
    "body",
    [
        dict(model="law", prompt="The court", temperature=0),
        dict(model="soup", weights={"cooking": 2, "space": 1}, prompt="Orbit", temperature=1.5, seed=3),
        dict(model="prior", prompt="", temperature=2.0, seed=11, top_k=0),  # wild samples: partial UTF-8 bytes
        dict(model="cooking", prompt="Bake", temperature=1.0, seed=4, echo=True),
    ],
)
def test_streaming_returns_the_non_streaming_text(client, oai, body):
    body = {**body, "max_tokens": T}
    whole = complete(client, **body)
    text, chunks = stream_text(client, **body, stream_options={"include_usage": True})
    assert text == whole["choices"][0]["text"]
    assert chunks[0]["weights"] == whole["weights"]
    if "seed" in body:
        assert chunks[0]["seed"] == whole["seed"] == body["seed"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    extra = {k: body[k] for k in ("weights", "top_k") if k in body}
    std = {k: body[k] for k in ("prompt", "max_tokens", "temperature", "seed", "echo") if k in body}
    parts = oai.completions.create(model=body["model"], stream=True, extra_body=extra, **std)
    assert "".join(c.choices[0].text for c in parts if c.choices) == text


def test_text_stream_holds_back_partial_utf8(env):
    """Streamed deltas of byte-level tokens: a character split over tokens is sent whole, never as U+FFFD."""
    from tokenizers import Tokenizer

    from soe.serve.app import TextStream

    tok = Tokenizer.from_file(str(env[0] / "tokenizer.json"))
    text = "Café — 5 € über naïve 日本 🙂."
    ids = tok.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    stream = TextStream(tok.decode)
    deltas = [stream.push(i) for i in ids] + [stream.finish()]
    assert "".join(deltas) == tok.decode(ids) == text and not any("\ufffd" in d for d in deltas)
    cut = TextStream(tok.decode)  # ends inside a character: the rest comes out at the end, as decode has it
    deltas = [cut.push(i) for i in ids[:-2]] + [cut.finish()]
    assert "".join(deltas) == tok.decode(ids[:-2])


BIG = "1" + "0" * 400  # beyond float's range
BAD = [  # (id, body: dict, or raw bytes/str, expected status, param named)
    ("unknown-domain", dict(model="soup", weights={"astrology": 1}), 400, "weights"),
    ("negative-weight", dict(model="soup", weights={"law": -1, "space": 2}), 400, "weights"),
    ("nan-weight", '{"model": "soup", "prompt": "a", "weights": {"law": NaN}}', 400, "weights"),
    ("inf-weight", '{"model": "soup", "prompt": "a", "weights": {"law": Infinity}}', 400, "weights"),
    ("huge-weight", '{"model": "soup", "prompt": "a", "weights": {"law": %s}}' % BIG, 400, "weights"),
    ("string-weight", dict(model="soup", weights={"law": "1"}), 400, "weights"),
    ("weights-sum-to-0", dict(model="soup", weights={"law": 0, "space": 0}), 400, "weights"),
    ("empty-weights", dict(model="soup", weights={}), 400, "weights"),
    ("weights-not-object", dict(model="soup", weights=[1, 0, 0]), 400, "weights"),
    ("soup-without-weights", dict(model="soup"), 400, "weights"),
    ("weights-with-a-domain-model", dict(model="law", weights={"law": 1}), 400, "weights"),
    ("max-tokens-0", dict(max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", dict(max_tokens=-3), 400, "max_tokens"),
    ("max-tokens-above-context", dict(max_tokens=T + 1), 400, "max_tokens"),
    ("max-tokens-float", dict(max_tokens=2.5), 400, "max_tokens"),
    ("max-tokens-5000-digits", '{"model": "law", "max_tokens": 1%s}' % ("0" * 5000), 400, "body"),
    ("prompt-longer-than-context", dict(prompt="court " * 100), 400, "prompt"),
    ("prompt-lone-surrogate", '{"model": "law", "prompt": "ab\\ud800c"}', 400, "prompt"),
    ("prompt-token-ids", dict(prompt=[1, 2]), 400, "prompt"),
    ("unknown-model", dict(model="gpt-4"), 404, "model"),
    ("missing-model", dict(model=None), 400, "model"),
    ("malformed-json", "{bad json", 400, "body"),
    ("not-an-object", "[1, 2]", 400, "body"),
    ("invalid-utf8", b'{"model": "law", "prompt": "\xff"}', 400, "body"),
    ("nested-too-deeply", "[" * 100_000 + "]" * 100_000, 400, "body"),
    ("oversized-body", "x" * (2 << 20), 413, "body"),
    ("temperature-nan", '{"model": "law", "temperature": NaN}', 400, "temperature"),
    ("temperature-below-floor", dict(temperature=1e-40), 400, "temperature"),  # logits / t would overflow
    ("key-given-twice", '{"model": "soup", "weights": {"law": 1, "law": 0}}', 400, "body"),
    ("temperature-huge-int", '{"model": "law", "temperature": %s}' % BIG, 400, "temperature"),
    ("top-p-0", dict(top_p=0), 400, "top_p"),
    ("seed-negative", dict(seed=-1), 400, "seed"),
    ("n-2", dict(n=2), 400, "n"),
    ("stop-unsupported", dict(stop="\n"), 400, "stop"),
    ("unknown-field", dict(temprature=0.5), 400, "temprature"),
    ("stream-not-bool", dict(stream="yes"), 400, "stream"),
    (
        "include-usage-not-bool",
        dict(stream=True, stream_options={"include_usage": 1}),
        400,
        "stream_options.include_usage",
    ),
]


@pytest.mark.parametrize("body,status,param", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_gets_its_4xx_naming_the_field(client, body, status, param):
    if isinstance(body, dict):  # on top of a good request; None removes a field
        merged = {"model": "law", "prompt": "The", "max_tokens": 4, **body}
        r = client.post("/v1/completions", json={k: v for k, v in merged.items() if v is not None})
    else:
        raw = body.encode() if isinstance(body, str) else body
        r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(param + ":"), err
    assert err["type"] == "invalid_request_error" and "Traceback" not in r.text
    # the server keeps answering
    assert complete(client, model="law", prompt="The", max_tokens=2, temperature=0)["choices"][0]["text"]


def test_bad_requests_through_the_openai_client_and_other_routes(client, oai):
    failed = health(client)["failed"]
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="soup", prompt="x", max_tokens=4, extra_body={"weights": {"law": -1}})
    assert e.value.status_code == 400 and e.value.body["param"] == "weights" and "negative" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        oai.completions.create(model="gpt-4", prompt="x", max_tokens=4)
    assert e.value.body["param"] == "model" and "legalfood" in e.value.message  # it lists the accepted names
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model="law", prompt="x", max_tokens=T + 1)
    assert e.value.body["param"] == "max_tokens"
    for method, path, status in (("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405)):
        r = client.request(method, path)
        assert r.status_code == status and r.json()["error"]["message"].startswith(f"{method} {path}")
    assert health(client)["failed"] == failed  # refused before reaching the engine


def test_a_failing_request_fails_alone(live, client, gate, monkeypatch):
    """A request whose sampling raises (none can from outside now) fails with a 500; the others decoded in the
    same step are answered, and the server goes on."""
    import soe.serve.engine as engine_module

    next_token = engine_module.next_token

    def poisoned(logits, temperature, *a):
        if temperature == 1.25:
            raise RuntimeError("poisoned")
        return next_token(logits, temperature, *a)

    monkeypatch.setattr(engine_module, "next_token", poisoned)
    bodies = [dict(model="law", prompt="The", max_tokens=8, temperature=t) for t in (0, 1.25, 0)]
    gate.open()
    want = complete(client, **bodies[0])["choices"][0]["text"]
    gate.close()
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(client.post, "/v1/completions", json=b) for b in bodies]
        assert wait_for(lambda: health(client)["queued"] == 3)
        gate.open()
        got = [f.result(timeout=30) for f in futures]
    assert [r.status_code for r in got] == [200, 500, 200], [r.text for r in got]
    assert got[1].json()["error"] == {
        "message": "internal error while sampling",
        "type": "server_error",
        "param": None,
        "code": "engine_error",
    }
    assert got[0].json()["choices"][0]["text"] == got[2].json()["choices"][0]["text"] == want


def test_cache_hits_and_evicts_least_recently_used(client):
    def cached(w):
        r = complete(client, model="soup", weights=w, prompt="The", max_tokens=1)
        assert (r["instantiate_ms"] == 0) == r["cached"]
        return r["cached"]

    hs = [{"law": 1, "cooking": i} for i in (3, 4, 5, 6)]  # new h, each a cache miss
    before = health(client)["cache"]
    assert [cached(hs[0]), cached(hs[0]), cached({"law": 2, "cooking": 6})] == [False, True, True]  # same h
    assert [cached(h) for h in hs[1:3]] == [False, False]  # the cache holds 3: h0, h1, h2
    assert cached(hs[0]) is True  # h0 most recently used; h1 is the least
    assert [cached(hs[3]), cached(hs[0]), cached(hs[2]), cached(hs[1])] == [False, True, True, False]
    after = health(client)["cache"]
    assert after["entries"] == 3 and after["bytes"] == 3 * MODEL_BYTES <= after["capacity_bytes"]
    assert after["misses"] - before["misses"] == 5 and after["evictions"] - before["evictions"] >= 2


def wait_for(cond, timeout: float = 5.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


@pytest.fixture
def slow_engine(live, monkeypatch):
    """Every forward of the engine takes ≥ 50 ms: a 32-token completion ≥ 1.6 s."""
    engine = live.srv.engine
    forward = engine._forward

    def slow(*a, **kw):
        time.sleep(0.05)
        return forward(*a, **kw)

    monkeypatch.setattr(engine, "_forward", slow)
    return engine


def test_a_client_that_goes_away_mid_stream_frees_its_slot(live, client, slow_engine):
    before = health(client)
    body = json.dumps({"model": "law", "prompt": "The", "max_tokens": T, "temperature": 0, "stream": True})
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        got = b""
        while got.count(b"data: ") < 2:  # two tokens streamed, then the client goes away
            got += s.recv(4096)
    t_gone = time.monotonic()
    assert wait_for(lambda: health(client)["cancelled"] == before["cancelled"] + 1, 1.0)
    assert time.monotonic() - t_gone < 1.0 and health(client)["active"] == 0  # well before its 32 tokens were due
    assert health(client)["served"] == before["served"]  # it did not run to its end
    # a non-streaming client that times out frees its slot too
    with httpx.Client(base_url=live.url, timeout=0.3) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post(
                "/v1/completions", json={"model": "law", "prompt": "The", "max_tokens": T, "temperature": 0}
            )  # greedy: no EOS before 32 tokens
    assert wait_for(lambda: health(client)["cancelled"] == before["cancelled"] + 2, 1.0)
    assert health(client)["active"] == 0 and health(client)["served"] == before["served"]
    assert complete(client, model="law", prompt="The", max_tokens=2)["usage"]["completion_tokens"] == 2


class Gate:
    """Holds an engine before it admits anything (requests pile up in its queue) until opened; starts closed."""

    def __init__(self, engine, monkeypatch=None):
        self.opened, self.parked = threading.Event(), threading.Event()
        admit = engine._admit

        def gated():
            if not self.opened.is_set():
                self.parked.set()
                self.opened.wait()
            admit()

        if monkeypatch:
            monkeypatch.setattr(engine, "_admit", gated)
        else:
            engine._admit = gated
        assert self.parked.wait(5), "the engine did not reach the gate"

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        """(open → closed) returns once the engine waits at the gate."""
        self.parked.clear()
        self.opened.clear()
        assert self.parked.wait(5), "the engine did not reach the gate"


@pytest.fixture
def gate(live, monkeypatch):
    g = Gate(live.srv.engine, monkeypatch)
    yield g
    g.open()


def test_a_client_that_goes_away_while_queued_is_never_decoded(live, client, gate):
    before = health(client)
    body = json.dumps({"model": "space", "prompt": "The", "max_tokens": T, "stream": True})
    with socket.create_connection(("127.0.0.1", live.port)) as s:
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        assert wait_for(lambda: health(client)["queued"] == 1)
    queued = live.srv.engine._queue.queue[0]
    assert wait_for(lambda: queued.cancelled, 2.0)  # the server saw the client go
    gate.open()
    assert wait_for(lambda: health(client)["cancelled"] == before["cancelled"] + 1)
    after = health(client)
    assert after["served"] == before["served"] and after["active"] == after["queued"] == 0 and queued.n_new == 0


def test_32_concurrent_clients_are_batched_and_give_the_sequential_answers(live, client, gate):
    weights = [None, None, None, None, {"law": 1, "space": 1}, {"cooking": 1, "law": 3}]
    models = ["law", "space", "legalfood", "prior", "soup", "soup"]
    jobs = [
        dict(
            model=models[i % 6],
            prompt=["The court", "Orbit of", "A"][i % 3],
            max_tokens=12,
            temperature=0,
            **({"weights": weights[i % 6]} if weights[i % 6] else {}),
        )
        for i in range(32)
    ]
    gate.open()
    ref = {json.dumps(j): complete(client, **j)["choices"][0]["text"] for j in jobs}  # one at a time
    gate.close()
    before = health(client)

    def call(i: int) -> str:
        j = dict(jobs[i])
        if i % 4 == 0:
            with httpx.Client(base_url=live.url, timeout=60) as c:
                return stream_text(c, **j)[0]
        if i % 4 == 1:
            extra = {"weights": j.pop("weights")} if "weights" in j else {}
            return (
                openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)
                .completions.create(**j, extra_body=extra)
                .choices[0]
                .text
            )
        with httpx.Client(base_url=live.url, timeout=60) as c:
            return complete(c, **j)["choices"][0]["text"]

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(call, i) for i in range(32)]
        assert wait_for(lambda: health(client)["queued"] == 32, 20.0), health(client)
        gate.open()
        got = [f.result(timeout=60) for f in futures]
    assert got == [ref[json.dumps(j)] for j in jobs]
    after = health(client)
    assert after["failed"] == before["failed"] and after["served"] - before["served"] == 32
    assert after["batching"] == "stacked"
    assert after["rows"] - before["rows"] >= 2 * (after["forwards"] - before["forwards"])  # batched, ≥ 2 per forward


def test_a_full_queue_answers_503_and_recovers(env):
    _, ckpt, _ = env
    with BackgroundServer(load_server(str(ckpt), max_batch=1, max_queue=1)) as small:
        gate = Gate(small.srv.engine)
        try:
            with httpx.Client(base_url=small.url, timeout=30) as c, ThreadPoolExecutor(1) as pool:
                first = pool.submit(complete, c, model="law", prompt="The", max_tokens=3)
                assert wait_for(lambda: c.get("/health").json()["queued"] == 1)
                r = c.post("/v1/completions", json={"model": "law", "prompt": "The", "max_tokens": 3})
                assert r.status_code == 503 and r.json()["error"]["code"] == "busy"
                gate.open()
                assert first.result(timeout=30)["usage"]["completion_tokens"] == 3
                assert complete(c, model="law", prompt="The", max_tokens=3)["choices"][0]["text"]
        finally:
            gate.open()


def test_soe_serve_command(env, live, client):
    """`soe serve` itself: a free port (0), registered names, the same answers, a clean stop on SIGTERM."""
    _, ckpt, weights = env
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "soe",
            "serve",
            str(ckpt),
            "--port",
            "0",
            "--specialist",
            f"legalfood={weights}",
            "--max-batch",
            "4",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        lines = []
        while not any("listening on" in ln for ln in lines):
            line = proc.stdout.readline()
            assert line, f"soe serve exited: {lines} {proc.stderr.read()}"
            lines.append(line)
        url = re.search(r"http://127\.0\.0\.1:\d+", lines[-1]).group(0)
        assert "models: prior, cooking, law, space, legalfood, soup" in lines[0] and "max batch 4" in lines[-1]
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/health").json()["max_batch"] == 4
            body = dict(model="legalfood", prompt="The court", max_tokens=10, temperature=0.8, seed=9)
            assert complete(c, **body)["choices"] == complete(client, **body)["choices"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out.strip().endswith("soe serve: stopped (SIGTERM)")


@pytest.mark.parametrize(
    "args,message",
    [
        (["MISSING.ckpt"], "MISSING.ckpt"),
        (["CKPT", "--port", "70000"], "--port 70000"),
        (["CKPT", "--cache-mb", "-1"], "--cache-mb"),
        (["CKPT", "--specialist", "legal"], "expected NAME=WEIGHTS"),
        (["CKPT", "--specialist", "law=law"], "already taken"),
        (["CKPT", "--specialist", "x=astrology"], "astrology"),
        (["CKPT", "--specialist", "x=law=1,law=2"], "given twice"),
        (["CKPT", "--port", "BUSY"], "cannot listen on 127.0.0.1"),
    ],
)
def test_soe_serve_user_errors_exit_2(env, capsys, args, message):
    _, ckpt, _ = env
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        args = [str(ckpt) if a == "CKPT" else str(taken.getsockname()[1]) if a == "BUSY" else a for a in args]
        assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("soe: error:") and message in err and "Traceback" not in err


def test_dense_checkpoint_catalog():
    import torch

    from soe.serve.catalog import Catalog
    from soe.serve.protocol import ApiError

    cat = Catalog(["a", "b"], torch.tensor([0.25, 0.75]), dense=True)
    assert cat.names() == ["prior"] and [m["id"] for m in cat.models()] == ["prior"]
    with pytest.raises(ApiError) as e:
        cat.resolve("a", None)
    assert e.value.status == 404 and e.value.param == "model"
    with pytest.raises(ApiError) as e:
        cat.resolve("soup", {"a": 1})
    assert e.value.status == 400 and e.value.param == "weights"
    with pytest.raises(ValueError, match="dense checkpoint"):
        Catalog(["a", "b"], torch.tensor([0.5, 0.5]), dense=True, registered={"x": "a"})
