"""The HTTP layer (FastAPI): OpenAI-compatible ``POST /v1/completions`` (JSON or server-sent events),
``GET /v1/models``, ``GET /health``. Every error is a JSON ``{"error": {...}}`` with a 4xx naming the field (5xx for
the server's own faults), never a traceback; a client that goes away mid-request frees its slot."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from soe.core.weights import weights_dict
from soe.serve.engine import Busy, Job
from soe.serve.protocol import ApiError, bad, parse_completion
from soe.serve.server import Server, bind

log = logging.getLogger("soe.serve")
DRAIN = 16  # an oversized body is read (and dropped) up to DRAIN × the limit, so the client gets the 413


class TextStream:
    """Token ids → text deltas whose concatenation is the decoded whole: a delta is held back while the text
    ends in an incomplete UTF-8 sequence (decoded as U+FFFD)."""

    def __init__(self, decode):
        self.decode, self.ids, self.sent = decode, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta

    def finish(self) -> str:
        text = self.decode(self.ids)
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text
        return delta


async def read_body(request: Request, limit: int) -> bytes:
    buf, total = bytearray(), 0
    async for chunk in request.stream():
        total += len(chunk)
        if total <= limit:
            buf += chunk
        elif total > DRAIN * limit:
            break
    if total > limit:
        raise ApiError(
            413,
            f"body: more than {limit} bytes (at most {limit}; a prompt cannot exceed the context anyway)",
            "body",
            "body_too_large",
        )
    return bytes(buf)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def create_app(srv: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        srv.engine.start()
        yield
        srv.engine.stop()

    app = FastAPI(title="soe serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    T = srv.cfg.max_seq_len

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):  # unknown route, wrong method
        err = ApiError(
            exc.status_code,
            f"{request.method} {request.url.path}: {exc.detail}",
            None,
            "not_found" if exc.status_code == 404 else None,
        )
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc):  # logged with its traceback on the server; the client gets one line
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(ApiError(500, "internal server error", type="server_error").body(), status_code=500)

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "checkpoint": srv.source,
            "n_experts": srv.n_experts,
            "context": T,
            **srv.engine.stats(),
        }

    def model_card(m: dict) -> dict:
        return {"object": "model", "created": 0, "owned_by": "soe", **m}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(m) for m in srv.catalog.models()]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        for m in srv.catalog.models():
            if m["id"] == name:
                return model_card(m)
        raise ApiError(404, f"model: {name!r} is not served here", "model", "model_not_found")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = parse_completion(await read_body(request, srv.max_body), T)
        h, key = srv.catalog.resolve(req.model, req.weights)
        ids = await run_in_threadpool(srv.encode, req.prompt)
        if len(ids) > T:
            raise bad("prompt", f"{len(ids)} tokens; the context is {T} tokens", "context_length_exceeded")
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(
            key=key,
            h=h,
            tokens=list(ids) or [srv.eos_id],
            max_new=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=seed,
            eos_id=srv.eos_id,
            sink=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
        )
        try:
            srv.engine.submit(job)
        except Busy as e:
            raise ApiError(503, f"server busy: {e}; retry later", None, "busy", "server_error") from None
        head = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": None,
        }
        extra = {"weights": None if srv.n_experts == 0 else weights_dict(h, srv.catalog.domains), "seed": seed}

        def usage(n_new: int) -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": n_new, "total_tokens": len(ids) + n_new}

        def choice(text: str, finish) -> dict:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

        watch = asyncio.ensure_future(_on_disconnect(request, job, events))  # frees the slot if the client leaves
        if req.stream:
            return StreamingResponse(
                _stream(job, watch, events, srv, req, head, extra, usage, choice),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        new, info = [], {}
        try:
            while True:
                kind, value = await events.get()
                if kind == "start":
                    info = value
                elif kind == "token":
                    new.append(value)
                elif kind == "done":
                    break
                elif kind == "gone":
                    return JSONResponse({}, status_code=499)  # nobody reads it; the slot is freed already
                else:
                    raise ApiError(500, value, None, "engine_error", "server_error")
        finally:
            watch.cancel()
            job.cancel()  # no-op once done; frees the slot when the handler is cancelled or fails
        text = (req.prompt if req.echo else "") + srv.decode(new)
        return {**head, "choices": [choice(text, value)], "usage": usage(len(new)), **extra, **info}

    return app


async def _on_disconnect(request: Request, job: Job, events: asyncio.Queue) -> None:
    """Cancel ``job`` as soon as its client goes away (the body is read already, so the next ASGI message is the
    disconnect), and wake its handler; also where a stream's generator never started (its ``finally`` would not
    run), whatever the ASGI server's disconnect handling."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()
    events.put_nowait(("gone", None))


async def _stream(job, watch, events, srv, req, head, extra, usage, choice):
    stream, first, n_new, info = TextStream(srv.decode), True, 0, {}

    def chunk(text, finish=None):
        nonlocal first
        out = {**head, "choices": [choice(text, finish)]}
        if first:
            out.update(extra, **info)
            first = False
        return _sse(out)

    try:
        while True:
            kind, value = await events.get()
            if kind == "start":
                info = value
                if req.echo and req.prompt:
                    yield chunk(req.prompt)
            elif kind == "token":
                n_new += 1
                delta = stream.push(value)
                if delta:
                    yield chunk(delta)
            elif kind == "done":
                yield chunk(stream.finish(), value)
                if req.include_usage:
                    yield _sse({**head, "choices": [], "usage": usage(n_new)})
                break
            elif kind == "gone":  # the client went away
                return
            else:
                yield _sse(ApiError(500, value, None, "engine_error", "server_error").body())
                break
        yield "data: [DONE]\n\n"
    finally:
        watch.cancel()
        job.cancel()  # the client went away (the response task is cancelled) or the stream ended


def make_server(srv: Server, log_level: str = "info"):
    """The uvicorn server of ``srv``'s app (run it with ``.run(sockets=[bind(host, port)])``; tests and
    bench/bench_serve.py run it in a thread and stop it with ``should_exit = True``)."""
    import uvicorn

    config = uvicorn.Config(
        create_app(srv), log_level=log_level, access_log=log_level == "debug", timeout_graceful_shutdown=5
    )
    return uvicorn.Server(config)


def serve(srv: Server, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    sock = bind(host, port)
    url_host = f"[{host}]" if ":" in host else host
    names = srv.catalog.names()
    shown = ", ".join(names[:12]) + (f", … ({len(names)} names)" if len(names) > 12 else "")
    print(
        f"soe serve: {srv.source} ({srv.n_experts} experts, {len(srv.catalog.domains)} domains, context "
        f"{srv.cfg.max_seq_len}); models: {shown}",
        flush=True,
    )
    print(
        f"soe serve: listening on http://{url_host}:{sock.getsockname()[1]} (max batch {srv.engine.max_batch}, "
        f"cache {srv.engine.cache.capacity / 2**20:g} MB)",
        flush=True,
    )
    # SIGINT / SIGTERM: uvicorn stops accepting, lets in-flight requests finish (≤ 5 s) and stops the engine, then
    # re-raises the signal to the handler it found; ours takes it, so a stop on a signal is a clean exit (status 0).
    stopped: list[int] = []
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda sig, frame: stopped.append(sig)) for s in handled}
    try:
        make_server(srv, log_level).run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"soe serve: stopped{f' ({signal.Signals(stopped[0]).name})' if stopped else ''}", flush=True)
