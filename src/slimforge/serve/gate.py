"""The outermost ASGI layer of the server: request metrics (Prometheus), the bearer token, and the body limit."""

from __future__ import annotations

import json
import time
from typing import Any


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("slimforge_requests", "Requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("slimforge_request_seconds", "Request latency (server side)", ["route"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.batch = Histogram("slimforge_batch_rows", "Rows per model batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                               registry=self.registry)
        self.batch_seconds = Histogram("slimforge_batch_seconds", "Model time per batch", registry=self.registry,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5))
        self.errors = Counter("slimforge_errors", "Errors by kind", ["kind"], registry=self.registry)
        self.queue = Gauge("slimforge_queue_depth", "Requests waiting for a batch", registry=self.registry)
        self.fallbacks = Counter("slimforge_fallback", "Requests answered by the fallback model",
                                 registry=self.registry)


class Gate:
    """The outermost ASGI layer (plain ASGI: Starlette's BaseHTTPMiddleware costs too much per request): request
    metrics, the bearer token, and 413 when a body passes the limit (by Content-Length, or while it streams in; the
    body is read here, up to the limit, and replayed to the app)."""

    def __init__(self, app: Any, limit: int, token: str | None, metrics: Metrics) -> None:
        self.app, self.limit, self.token, self.metrics = app, limit, token, metrics

    def __getattr__(self, name: str) -> Any:  # the wrapped FastAPI app's attributes (routes, state, ...)
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = _route_label(path)
        t = time.perf_counter()
        status = [500]

        async def counted(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self._handle(scope, receive, counted, path)
        finally:
            code = status[0]
            self.metrics.requests.labels(route, str(code)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t)
            if code >= 400:
                self.metrics.errors.labels(str(code)).inc()

    async def _handle(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        headers = dict(scope.get("headers") or [])
        if self.token and _protected(path) and headers.get(b"authorization", b"") != f"Bearer {self.token}".encode():
            return await _send_json(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                    {"www-authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_json(send, 413, f"the request body is {int(length):,} bytes; the limit is "
                                               f"{self.limit:,}")
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                return await _send_json(send, 413, f"the request body passed the limit of {self.limit:,} bytes")
        body, given = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Any, status: int, message: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in (extra or {}).items())]})
    await send({"type": "http.response.body", "body": body})


def _protected(path: str) -> bool:
    """With a token, every route needs it but the health checks and the page's static shell ("/": a form with a
    token box and no model data; its requests carry the token)."""
    return path not in ("/", "/api/health") and not path.startswith("/v2/health/")


def _route_label(path: str) -> str:
    if path.startswith("/v2/models/"):
        return "/v2/models/infer" if path.endswith("/infer") else "/v2/models"
    return path if path in ("/", "/api/predict", "/api/health", "/api/models", "/api/examples", "/metrics", "/v2",
                            "/v2/health/live", "/v2/health/ready") else "other"
