"""``soe serve``'s app run by uvicorn in a background thread of this process, on a loopback port (port 0: a free
one): what tests/test_serve.py and bench/bench_serve.py start, and a way to serve from a notebook.

    with BackgroundServer(load_server("runs/tiny/checkpoints/last.ckpt")) as live:
        openai.OpenAI(base_url=live.url + "/v1", api_key="x").completions.create(model="prior", prompt="The")
"""

from __future__ import annotations

import threading
import time

from soe.serve.app import make_server
from soe.serve.server import Server, bind


class BackgroundServer:
    def __init__(
        self, srv: Server, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", timeout: float = 30.0
    ):
        self.srv = srv
        sock = bind(host, port)
        self.port = sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
        self._uv = make_server(srv, log_level)
        self._thread = threading.Thread(
            target=self._uv.run, kwargs={"sockets": [sock]}, name="soe-serve-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uv.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"soe serve did not start on {self.url} within {timeout:g} s")
            time.sleep(0.01)

    def close(self, timeout: float = 15.0) -> None:
        """Stop accepting, let in-flight requests finish (at most uvicorn's graceful timeout), stop the engine."""
        self._uv.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
