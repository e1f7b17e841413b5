"""The REST server: FastAPI over a ModelSet, with dynamic batching, KServe v2 routes, Prometheus metrics, limits.

Routes: ``POST /api/predict``, ``GET /api/health``, ``GET /api/models``, ``GET /api/examples``, ``GET /metrics``,
``GET /`` (the web page), and the Open Inference Protocol: ``/v2``, ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{v}]``, ``.../ready`` and ``.../infer`` (JSON and the binary tensor extension).
Every error is a JSON body ``{"error": ..., "status": ...}``; none carries a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request  # module level: the routes' annotations must resolve (future annotations)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from slimforge.core.scratch import handle_termination_on_the_thread_stack
from slimforge.errors import SlimforgeError
from slimforge.serve.batcher import Batcher, QueueFull
from slimforge.serve.gate import Gate, Metrics
from slimforge.serve.limits import Admission, Limits, Overloaded, default_preprocess_workers, feeds_nbytes
from slimforge.serve.models import ModelSet, ServedModel, load_model_set
from slimforge.serve.requests import ApiError, predict_feeds, v2_request
from slimforge.serve.responses import examples_for, predict_response, v2_response

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
    max_rows: int = 256
    max_tokens: int | None = None
    long_text: str = "truncate"
    max_request_pixels: int = 64_000_000
    preprocess_workers: int = field(default_factory=default_preprocess_workers)
    preprocess_queue: int = 64
    max_inflight_mb: float = 512.0
    max_memory_mb: float | None = None
    input_shapes: list[str] = field(default_factory=list)  # NAME:1x3x224x224, for files that do not record shapes

    def limits(self) -> Limits:
        """The request caps and admission settings (the fields this config shares with ``Limits``)."""
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> ServeConfig:
        return ServeConfig(**json.loads(text))


def create_app(cfg: ServeConfig | None = None, preloaded: ModelSet | None = None) -> Any:
    """The FastAPI app; models load once, at start-up (also from ``$SLIMFORGE_SERVE_CONFIG`` for workers), unless
    already loaded (``preloaded``, from ``load_models``)."""
    if cfg is None:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise SlimforgeError(f"no serve configuration: pass one or set ${CONFIG_ENV}")
        cfg = ServeConfig.from_json(raw)
    metrics = Metrics()
    state: dict[str, Any] = {"models": None, "started": None, "load_error": None}
    limits = cfg.limits()
    admission = Admission(limits)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, limits.preprocess_workers),
                                                 thread_name_prefix="slimforge-preprocess")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        # uvicorn has installed its SIGTERM/Ctrl-C handlers by now, with SA_ONSTACK; OpenVINO can leave a stale
        # alternate signal stack behind (core.scratch), on which a shutdown signal would die with SIGSEGV
        handle_termination_on_the_thread_stack(signal.SIGTERM, signal.SIGINT)
        try:
            ms = preloaded if preloaded is not None else await asyncio.get_running_loop().run_in_executor(
                None, load_models, cfg)
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
        pool.shutdown(wait=False, cancel_futures=True)

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
        """Queue validated feeds (bounded, memory-aware), wait (bounded); when the primary fails, the fallback
        answers; an input the model cannot run on is the request's fault (422), never the server's health."""
        nbytes = feeds_nbytes(feeds)
        try:
            admission.reserve(nbytes)
        except Overloaded as exc:
            raise busy("memory", exc) from None
        try:
            return await _infer(model, feeds)
        finally:
            admission.release(nbytes)

    async def _infer(model: ServedModel, feeds: dict[str, np.ndarray]) -> tuple[ServedModel, list[np.ndarray], int]:
        ms = models()
        try:
            outs, rows = await _submit(model, feeds)
            return model, outs, rows
        except (ApiError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - the primary failed on this input: the fallback may answer
            ms.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            metrics.errors.labels("model").inc()
            if ms.fallback is None or model is ms.fallback:
                raise _rejected(exc) from None
        metrics.fallbacks.inc()
        ms.fallback_uses += 1
        try:
            outs, rows = await _submit(ms.fallback, feeds)
        except (ApiError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise _rejected(exc) from None
        return ms.fallback, outs, rows

    async def _submit(model: ServedModel, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], int]:
        assert model.batcher is not None
        metrics.queue.set(model.batcher.depth)
        try:
            return await asyncio.wait_for(model.batcher.submit(feeds), cfg.timeout_s)
        except QueueFull as exc:
            raise busy("queue_full", exc) from None
        except asyncio.TimeoutError:
            metrics.errors.labels("timeout").inc()
            raise ApiError(504, f"the request took longer than {cfg.timeout_s:g} s") from None

    def busy(kind: str, exc: Exception) -> ApiError:
        metrics.errors.labels(kind).inc()
        return ApiError(503, f"overloaded: {exc}; retry shortly", {"Retry-After": "1"})

    async def preprocess(fn: Any, *args: Any) -> Any:
        """Run parsing, decoding and tokenising on the bounded pool; a full queue or memory budget is 503."""
        try:
            admission.enter()
        except Overloaded as exc:
            raise busy("preprocess_full", exc) from None
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        finally:
            admission.leave()

    # ---- the slimforge API ----
    @app.post("/api/predict")
    async def predict(request: Request) -> Any:
        t0 = time.perf_counter()
        models()
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form, raw = await _read_form(request), None
        else:
            form, raw = None, await request.body()
        model, feeds, n_items = await preprocess(predict_feeds, pick, raw, form, limits)
        used, outs, rows = await infer(model, feeds)
        head = {"model": used.name, "version": used.version, "runtime": used.runtime,
                "fallback": used.version == "fallback", "items": n_items, "batch_rows": rows}
        # encoding (PNG, JSON) takes CPU time too: on the pool, off the event loop
        return await asyncio.get_running_loop().run_in_executor(
            pool, predict_response, used, outs, head, request.headers.get("accept", ""), t0)

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
        return {"kind": m.kind, "examples": examples_for(m, cfg.examples)}

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
        from slimforge.version import __version__

        return {"name": "slimforge", "version": __version__, "extensions": ["binary_tensor_data"]}

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
        req, feeds = await preprocess(v2_request, m, raw, header_len, limits)
        used, outs, _ = await infer(m, feeds)
        return v2_response(used, req, outs)

    return Gate(app, int(cfg.max_body_mb * 1024 * 1024), cfg.token, metrics)


def _rejected(exc: Exception) -> ApiError:
    """A validated input the model still cannot run on: the request's fault (422), never the server's health."""
    return ApiError(422, f"the model could not run on this input: {(str(exc).splitlines() or [''])[0][:300]}")


def load_models(cfg: ServeConfig) -> ModelSet:
    """Open the models ``cfg`` serves (a ``SlimforgeError`` names what cannot be). ONNX Runtime's idle workers must
    not spin here: they would take the cores the event loop and the requests need (measured +20-40% throughput under
    concurrency on 2 cores)."""
    from slimforge.runtimes import ort_spin_off

    with ort_spin_off():
        return load_model_set(cfg.paths, name=cfg.name, fallback=cfg.fallback, runtime=cfg.runtime,
                              threads=cfg.threads, input_shapes=cfg.input_shapes or None)


def _warm_up(m: ServedModel) -> None:
    """One inference before the first request (runtimes compile or allocate on their first run)."""
    from slimforge.io.synth import synthesize

    try:
        m.run(synthesize(m.artifact.io, batch=1, seq=16, examples=m.artifact.examples, meta=m.artifact.meta))
    except Exception as exc:  # noqa: BLE001 - a warm-up failure is reported by the first real request
        log.warning("warm-up of %s v%s failed: %s", m.name, m.version, exc)


async def _read_form(request: Any) -> tuple[dict[str, Any], list[bytes]]:
    try:
        form = await request.form(max_files=64, max_fields=256)
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body
        raise ApiError(400, f"could not read the multipart body: {str(exc)[:200]}") from None
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
