"""A server in a background thread on a free loopback port: for tests, benchmarks and notebooks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

from slimforge.errors import SlimforgeError
from slimforge.serve.app import ServeConfig, create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(cfg: ServeConfig, *, timeout_s: float = 120.0) -> Iterator[str]:
    """Start uvicorn on 127.0.0.1 with ``cfg``; yields the base URL once the model is loaded.

    Example:
        >>> # with running_server(ServeConfig(paths=["out/model.onnx"])) as url: httpx.get(url + "/api/health")
    """
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="error",
                                           timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, daemon=True, name="slimforge-serve")
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive():
            raise SlimforgeError("the server stopped during start-up (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise SlimforgeError(f"the server did not start within {timeout_s:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
