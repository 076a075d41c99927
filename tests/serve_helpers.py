"""A live server on a tiny random model, in this process (uvicorn on a thread), for the serve tests."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx2 as httpx  # the HTTP client the pinned openai package brings
import uvicorn

from safesignal.serve import ServeConfig, build_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(model, **config_fields):
    """Yield (base_url, app) of a server on `model`; stopped (and its decode thread joined) on exit."""
    config = ServeConfig(port=free_port(), **{"default_temperature": 0.0, **config_fields})
    app = build_app(model, config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{config.port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(30)


def metrics(base: str, recent: int = 32, **headers) -> dict:
    return httpx.get(f"{base}/metrics", params={"recent": recent}, headers=headers, timeout=10).json()


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")
