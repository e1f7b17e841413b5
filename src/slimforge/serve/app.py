"""The REST server: FastAPI over a ModelSet, with dynamic batching, KServe v2 routes, Prometheus metrics, limits.

Routes: ``POST /api/predict``, ``GET /api/health``, ``GET /api/models``, ``GET /api/examples``, ``GET /metrics``,
``GET /`` (the web page), and the Open Inference Protocol: ``/v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{v}]``, ``.../ready`` and ``.../infer`` (JSON and the binary tensor extension).
Every error is a JSON body ``{"error": ..., "status": ...}``; none carries a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # module level: the routes' annotations must resolve (future annotations)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from slimforge.errors import DataError, InputError, SlimforgeError
from slimforge.serve.batcher import Batcher, QueueFull
from slimforge.serve.models import NP_TYPES, V2_TYPES, ImageTooLarge, ModelSet, ServedModel, load_model_set

log = logging.getLogger(__name__)
CONFIG_ENV = "SLIMFORGE_SERVE_CONFIG"


@dataclass
class ServeConfig:
    """Everything ``slimforge serve`` takes; JSON-serialisable so that uvicorn workers can rebuild the app."""

    paths: list[str]
    name: str | None = None
    fallback: str | None = None
    runtime: str | None = None
    threads: int | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue_size: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 16.0
    max_image_pixels: int = 40_000_000
    token: str | None = None
    examples: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> ServeConfig:
        return ServeConfig(**json.loads(text))


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Metrics:
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


class _Gate:
    """The outermost ASGI layer (plain ASGI: Starlette's BaseHTTPMiddleware costs too much per request): request
    metrics, the bearer token, and 413 when a body passes the limit (by Content-Length, or while it streams in; the
    body is read here, up to the limit, and replayed to the app)."""

    def __init__(self, app: Any, limit: int, token: str | None, metrics: _Metrics) -> None:
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


def create_app(cfg: ServeConfig | None = None) -> Any:
    """The FastAPI app; models load once, at start-up (also from ``$SLIMFORGE_SERVE_CONFIG`` for workers)."""
    if cfg is None:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise SlimforgeError(f"no serve configuration: pass one or set ${CONFIG_ENV}")
        cfg = ServeConfig.from_json(raw)
    metrics = _Metrics()
    state: dict[str, Any] = {"models": None, "started": None, "load_error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        try:
            ms = await asyncio.get_running_loop().run_in_executor(None, _load, cfg)
        except (SlimforgeError, OSError) as exc:
            state["load_error"] = str(exc)
            raise
        for m in ms.all_models():
            await asyncio.get_running_loop().run_in_executor(None, _warm_up, m)
            m.batcher = Batcher(m.run, max_batch=cfg.max_batch, max_wait_ms=cfg.max_wait_ms,
                                queue_size=cfg.queue_size, on_batch=_on_batch)
            m.batcher.start()
        state["models"], state["started"] = ms, time.time()
        yield
        for m in ms.all_models():
            if m.batcher is not None:
                await m.batcher.stop()

    def _on_batch(rows: int, seconds: float) -> None:
        metrics.batch.observe(rows)
        metrics.batch_seconds.observe(seconds)

    app = FastAPI(title="slimforge serve", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Any:
        return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}", "status": 422},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Any:
        return JSONResponse({"error": str(exc.detail), "status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Any:
        log.exception("unexpected error")
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server keeps serving",
                             "status": 500}, status_code=500)

    def models() -> ModelSet:
        ms = state["models"]
        if ms is None:
            raise ApiError(503, "the model is still loading", {"Retry-After": "1"})
        return ms

    def pick(name: str | None, version: str | None) -> ServedModel:
        ms = models()
        if name is not None and name != ms.name:
            raise ApiError(404, f"unknown model {name!r}; this server has {ms.name!r}")
        try:
            return ms.get(version)
        except KeyError as exc:
            raise ApiError(404, str(exc.args[0])) from None

    async def infer(model: ServedModel, feeds: dict[str, np.ndarray]) -> tuple[ServedModel, list[np.ndarray], int]:
        """Validate, queue, wait (bounded); on a failure of the primary, answer with the fallback."""
        from slimforge.runtimes.base import check_feeds

        try:
            check_feeds(model.artifact, feeds)
        except InputError as exc:
            raise ApiError(400, str(exc)) from None
        if model.kind == "text" and len({a.shape for a in feeds.values()}) > 1:
            raise ApiError(400, "token inputs must share one shape; got " +
                           ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items()))
        ms = models()
        try:
            outs, rows = await _submit(model, feeds)
            return model, outs, rows
        except (ApiError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the primary failed: degrade to the fallback if there is one
            ms.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            if ms.fallback is None or model is ms.fallback:
                metrics.errors.labels("model").inc()
                raise ApiError(500, f"the model failed on this input: {str(exc).splitlines()[0][:300]}") from None
            metrics.fallbacks.inc()
            ms.fallback_uses += 1
            outs, rows = await _submit(ms.fallback, feeds)
            return ms.fallback, outs, rows

    async def _submit(model: ServedModel, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        assert model.batcher is not None
        metrics.queue.set(model.batcher.depth)
        try:
            return await asyncio.wait_for(model.batcher.submit(feeds), cfg.timeout_s)
        except QueueFull as exc:
            metrics.errors.labels("queue_full").inc()
            raise ApiError(503, f"overloaded: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            metrics.errors.labels("timeout").inc()
            raise ApiError(504, f"the request took longer than {cfg.timeout_s:g} s") from None

    # ---- the slimforge API ----
    @app.post("/api/predict")
    async def predict(request: Request) -> Any:
        t0 = time.perf_counter()
        body, files = await _read_predict(request)
        model = pick(body.get("model"), body.get("version"))
        feeds, n_items = _feeds_from(model, body, files, cfg.max_image_pixels)
        used, outs, rows = await infer(model, feeds)
        names = [t.name for t in used.artifact.io.outputs]
        return _json({"model": used.name, "version": used.version, "runtime": used.runtime,
                      "fallback": used.version == "fallback", "items": n_items,
                      "predictions": used.postprocess(outs),
                      "outputs": {n: o.tolist() for n, o in zip(names, outs)},
                      "batch_rows": rows, "processing_ms": (time.perf_counter() - t0) * 1000.0})

    @app.get("/api/health")
    async def health() -> Any:
        ms = state["models"]
        if ms is None:
            return JSONResponse({"status": "loading", "live": True, "ready": False}, status_code=503)
        status = "degraded" if ms.degraded else "ok"
        return {"status": status, "live": True, "ready": True, "model": ms.name,
                "versions": sorted(ms.versions), "fallback": ms.fallback is not None,
                "load_errors": ms.load_errors, "last_error": ms.last_error, "fallback_uses": ms.fallback_uses,
                "uptime_s": time.time() - state["started"]}

    @app.get("/api/models")
    async def list_models() -> Any:
        ms = models()
        return {"models": [m.summary() for m in ms.all_models()], "default_version": ms.default_version}

    @app.get("/api/examples")
    async def examples() -> Any:
        m = models().get(None)
        return {"kind": m.kind, "examples": _examples(m, cfg.examples)}

    @app.get("/metrics")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return HTMLResponse((Path(__file__).with_name("page.html")).read_text(encoding="utf-8"))

    # ---- Open Inference Protocol (KServe v2) ----
    @app.get("/v2")
    async def v2_server() -> Any:
        import slimforge

        return {"name": "slimforge", "version": slimforge.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def v2_live() -> Any:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> Any:
        ready = state["models"] is not None
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def v2_meta(name: str, version: str | None = None) -> Any:
        m = pick(name, version)
        meta = m.metadata_v2()
        meta["versions"] = sorted(models().versions)
        return meta

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_model_ready(name: str, version: str | None = None) -> Any:
        pick(name, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer(name: str, request: Request, version: str | None = None) -> Any:
        m = pick(name, version)
        raw = await request.body()
        header_len = request.headers.get("inference-header-content-length")
        req, binary = _parse_v2(raw, header_len)
        feeds = _v2_feeds(m, req, binary)
        used, outs, _ = await infer(m, feeds)
        return _v2_response(used, req, outs)

    return _Gate(app, int(cfg.max_body_mb * 1024 * 1024), cfg.token, metrics)


def _load(cfg: ServeConfig) -> ModelSet:
    """Open the models; ONNX Runtime's idle workers must not spin here (they would take the cores the event loop
    and the requests need: measured +20-40% throughput under concurrency on 2 cores)."""
    old = os.environ.get("SLIMFORGE_ORT_SPIN")
    os.environ["SLIMFORGE_ORT_SPIN"] = "0"
    try:
        return load_model_set(cfg.paths, name=cfg.name, fallback=cfg.fallback, runtime=cfg.runtime,
                              threads=cfg.threads)
    finally:
        if old is None:
            os.environ.pop("SLIMFORGE_ORT_SPIN", None)
        else:
            os.environ["SLIMFORGE_ORT_SPIN"] = old


def _json(doc: dict[str, Any]) -> Any:
    """A JSON response serialised once by the C encoder (FastAPI's jsonable_encoder walks every float)."""
    return Response(json.dumps(doc), media_type="application/json")


def _warm_up(m: ServedModel) -> None:
    """One inference before the first request (runtimes compile or allocate on their first run)."""
    from slimforge.io.synth import synthesize

    try:
        m.run(synthesize(m.artifact.io, batch=1, seq=16, examples=m.artifact.examples, meta=m.artifact.meta))
    except Exception as exc:  # noqa: BLE001 - a warm-up failure is reported by the first real request
        log.warning("warm-up of %s v%s failed: %s", m.name, m.version, exc)


def _protected(path: str) -> bool:
    return (path.startswith(("/api/", "/v2", "/metrics")) and path not in ("/api/health", "/v2/health/live",
                                                                           "/v2/health/ready"))


def _route_label(path: str) -> str:
    if path.startswith("/v2/models/"):
        return "/v2/models/infer" if path.endswith("/infer") else "/v2/models"
    return path if path in ("/", "/api/predict", "/api/health", "/api/models", "/api/examples", "/metrics", "/v2",
                            "/v2/health/live", "/v2/health/ready") else "other"


async def _read_predict(request: Any) -> tuple[dict[str, Any], list[bytes]]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=64)
        except Exception as exc:  # noqa: BLE001 - a malformed multipart body
            raise ApiError(400, f"could not read the multipart body: {exc}") from None
        body: dict[str, Any] = {}
        files: list[bytes] = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                files.append(await value.read())
            elif key == "text":
                body.setdefault("text", []).append(str(value))
            elif key in ("version", "model"):
                body[key] = str(value)
        return body, files
    raw = await request.body()
    if not raw:
        raise ApiError(422, "empty body: send JSON {\"text\": ...}, {\"image\": base64}, {\"inputs\": {...}} or a "
                            "multipart image upload")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ApiError(422, "the JSON body must be an object")
    return body, []


def _feeds_from(model: ServedModel, body: dict[str, Any], files: list[bytes], max_pixels: int
                ) -> tuple[dict[str, np.ndarray], int]:
    try:
        if "text" in body:
            texts = body["text"]
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise ApiError(422, "'text' must be a non-empty string or list of strings")
            return model.encode_text(texts), len(texts)
        images = list(files)
        if "image" in body or "images" in body:
            items = body.get("images", body.get("image"))
            items = [items] if isinstance(items, str) else items
            if not isinstance(items, list) or not items:
                raise ApiError(422, "'image' must be a base64 string (or a list of them)")
            for item in items:
                data = item.split(",", 1)[1] if isinstance(item, str) and item.startswith("data:") else item
                try:
                    images.append(base64.b64decode(data, validate=True))
                except (binascii.Error, TypeError, ValueError):
                    raise ApiError(400, "'image' is not valid base64") from None
        if images:
            arrays = [model.decode_image(raw, max_pixels) for raw in images]
            return {model.artifact.io.inputs[0].name: np.stack(arrays)}, len(arrays)
        if "inputs" in body:
            return _tensor_feeds(model, body["inputs"])
    except ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except (DataError, InputError) as exc:
        raise ApiError(400, str(exc)) from None
    raise ApiError(422, "missing field: send 'text', 'image' (base64), 'inputs' ({name: nested list}) or a "
                        "multipart image upload")


def _tensor_feeds(model: ServedModel, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
    specs = {t.name: t for t in model.artifact.io.inputs}
    if isinstance(inputs, list) and len(specs) == 1:
        inputs = {next(iter(specs)): inputs}
    if not isinstance(inputs, dict):
        raise ApiError(422, f"'inputs' must map input names {list(specs)} to nested lists")
    feeds: dict[str, np.ndarray] = {}
    for name, value in inputs.items():
        if name not in specs:
            raise ApiError(400, f"unknown input {name!r}; the model takes {list(specs)}")
        feeds[name] = _as_array(value, specs[name].dtype, name)
    return feeds, len(next(iter(feeds.values()))) if feeds else 0


def _as_array(value: Any, dtype: str, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ApiError(400, f"input {name!r} is not a rectangular array ({exc})") from None
    if arr.dtype == object:
        raise ApiError(400, f"input {name!r} is ragged or mixes types; send a rectangular nested list of numbers")
    want = np.dtype(dtype)
    if arr.dtype.kind in "US":
        raise ApiError(400, f"input {name!r} holds strings; the model wants {want.name}")
    if want.kind in "iu" and arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        raise ApiError(400, f"input {name!r} has fractional values; the model wants integers ({want.name})")
    if want.kind == "f" and arr.dtype.kind == "b":
        raise ApiError(400, f"input {name!r} is boolean; the model wants {want.name}")
    return arr.astype(want)


def _parse_v2(raw: bytes, header_len: str | None) -> tuple[dict[str, Any], bytes]:
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError:
            raise ApiError(400, "Inference-Header-Content-Length is not a number") from None
        head, binary = raw[:n], raw[n:]
    else:
        head, binary = raw, b""
    try:
        req = json.loads(head or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the inference request is not valid JSON ({exc})") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise ApiError(422, "an inference request needs a non-empty 'inputs' list")
    return req, binary


def _v2_feeds(model: ServedModel, req: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    specs = {t.name: t for t in model.artifact.io.inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    texts: list[str] | None = None
    for inp in req["inputs"]:
        if not isinstance(inp, dict) or "name" not in inp or "shape" not in inp or "datatype" not in inp:
            raise ApiError(422, "each input needs 'name', 'shape' and 'datatype'")
        name, shape, dt = inp["name"], inp["shape"], str(inp["datatype"]).upper()
        size = (inp.get("parameters") or {}).get("binary_data_size")
        if dt == "BYTES":  # text for text models
            if size is not None:
                chunk, offset = binary[offset:offset + int(size)], offset + int(size)
                texts, i = [], 0
                while i + 4 <= len(chunk):
                    n = int.from_bytes(chunk[i:i + 4], "little")
                    texts.append(chunk[i + 4:i + 4 + n].decode("utf-8", "replace"))
                    i += 4 + n
            else:
                texts = [str(x) for x in np.asarray(inp.get("data", [])).reshape(-1)]
            continue
        if name not in specs:
            raise ApiError(400, f"unknown input {name!r}; the model takes {list(specs)}")
        if dt not in NP_TYPES:
            raise ApiError(400, f"input {name!r}: datatype {dt} is not supported")
        want = specs[name].dtype
        if NP_TYPES[dt] != want:
            raise ApiError(400, f"input {name!r}: datatype {dt}, but the model wants "
                                f"{V2_TYPES.get(want, want.upper())}")
        try:
            if size is not None:
                chunk, offset = binary[offset:offset + int(size)], offset + int(size)
                arr = np.frombuffer(chunk, dtype=NP_TYPES[dt]).reshape(shape)
            else:
                arr = np.asarray(inp.get("data"), dtype=NP_TYPES[dt]).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, f"input {name!r}: the data does not fit shape {shape} ({exc})") from None
        feeds[name] = arr
    if texts is not None and not feeds:
        try:
            return model.encode_text(texts)
        except (InputError, DataError) as exc:
            raise ApiError(400, str(exc)) from None
    return feeds


def _v2_response(model: ServedModel, req: dict[str, Any], outs: list[np.ndarray]) -> Any:
    names = [t.name for t in model.artifact.io.outputs]
    wanted = [o["name"] for o in req.get("outputs") or [] if isinstance(o, dict) and "name" in o] or names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ApiError(400, f"unknown output(s) {unknown}; the model gives {names}")
    params = req.get("parameters") or {}
    binary_wanted = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", params.get(
        "binary_data_output", False))) for o in req.get("outputs") or [] if isinstance(o, dict) and "name" in o}
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version,
                            "id": req.get("id", str(uuid.uuid4())), "outputs": []}
    blobs: list[bytes] = []
    for name in wanted:
        arr = np.ascontiguousarray(outs[names.index(name)])
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape),
                                 "datatype": V2_TYPES.get(arr.dtype.name, "FP32")}
        if binary_wanted.get(name, bool(params.get("binary_data_output", False))):
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        body["outputs"].append(entry)
    if not blobs:
        return _json(body)
    head = json.dumps(body).encode()
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def _examples(model: ServedModel, given: list[str]) -> list[dict[str, str]]:
    """Example inputs for the page: sentences for text models, the model's example images as PNG data URLs."""
    if model.kind == "text":
        texts = given or ["A small model that still works.", "Quantization makes inference faster on CPUs.",
                          "The cat sat on the mat."]
        return [{"text": t} for t in texts]
    if model.kind != "image":
        return []
    import io as _io

    from PIL import Image

    from slimforge.io.data import image_preprocess_for

    pre = image_preprocess_for(model.artifact)
    ex = next(iter(model.artifact.examples.values()), None)
    out = []
    if ex is None:
        return out
    arr = np.asarray(ex, dtype=np.float32)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    for img in arr[:4]:
        pix = ((img * std + mean) / float(pre.get("rescale", 1 / 255))).clip(0, 255).astype(np.uint8)
        pil = Image.fromarray(pix[0]) if pix.shape[0] == 1 else Image.fromarray(pix.transpose(1, 2, 0))
        pil = pil.resize((max(64, pil.width), max(64, pil.height)), Image.NEAREST)
        buf = _io.BytesIO()
        pil.save(buf, format="PNG")
        out.append({"image": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()})
    return out
