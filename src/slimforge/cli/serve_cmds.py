"""CLI commands for serving: serve and loadtest (registered on the main app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from slimforge.cli.app import app
from slimforge.cli.common import Force, InputShape, parse_duration
from slimforge.cli.render import console, err_console
from slimforge.errors import ConfigError


@app.command()
def serve(model: Annotated[list[str], typer.Argument(
              help="Artifact file or optimize output folder; several are versions 1, 2, ... (or VERSION=PATH).")],
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8000,
          max_batch: Annotated[int, typer.Option(help="Rows per dynamic batch (1: no batching).")] = 32,
          max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits to fill.")] = 5.0,
          workers: Annotated[int, typer.Option(help="Server processes (each loads the model).")] = 1,
          name: Annotated[Optional[str], typer.Option(help="Model name in the API.")] = None,
          fallback: Annotated[Optional[str], typer.Option(
              help="A model that answers when the primary fails to load or raises (e.g. the original).")] = None,
          runtime: Annotated[Optional[str], typer.Option(help="Runtime (default: the artifact's).")] = None,
          threads: Annotated[Optional[int], typer.Option(help="Intra-op threads per model.")] = None,
          queue_size: Annotated[int, typer.Option(help="Waiting requests before 503.")] = 256,
          timeout_s: Annotated[float, typer.Option(help="Per-request timeout (504).")] = 30.0,
          max_body_mb: Annotated[float, typer.Option(help="Request size limit (413).")] = 16.0,
          max_image_pixels: Annotated[int, typer.Option(help="Decompression-bomb guard (413).")] = 40_000_000,
          token: Annotated[Optional[str], typer.Option(envvar="SLIMFORGE_TOKEN",
                                                       help="Require 'Authorization: Bearer TOKEN'.")] = None,
          max_rows: Annotated[int, typer.Option(help="Rows (texts, images, tensor rows) per request (413).")] = 256,
          max_tokens: Annotated[Optional[int], typer.Option(
              help="Tokens per text (default: the model's own limit).")] = None,
          long_text: Annotated[str, typer.Option(help="truncate | refuse (422) texts over --max-tokens.")] = "truncate",
          max_request_pixels: Annotated[int, typer.Option(
              help="Decoded pixels of all images of a request (413); a model with dynamic height/width takes uploads "
                   "at their own size, never scaled down, so this bounds its work.")]
          = 64_000_000,
          preprocess_workers: Annotated[Optional[int], typer.Option(
              help="Threads that decode and tokenise (default: half the cores, 2 to 8).")] = None,
          preprocess_queue: Annotated[int, typer.Option(help="Requests waiting for preprocessing before 503.")] = 64,
          max_inflight_mb: Annotated[float, typer.Option(help="Decoded tensors queued for the model before 503.")]
          = 512.0,
          max_memory_mb: Annotated[Optional[float], typer.Option(
              help="Resident memory above which new requests get 503 (default: 85% of the memory limit).")] = None,
          input_shape: InputShape = None) -> None:
    """Serve a model over REST (/api/predict), KServe v2 (/v2/...) and a web page (/), with dynamic batching."""
    from slimforge.serve import ServeConfig, serve as run_server

    if preprocess_workers is None:
        from slimforge.serve.limits import default_preprocess_workers

        preprocess_workers = default_preprocess_workers()
    if min(max_batch, queue_size, workers, max_rows, preprocess_workers, preprocess_queue) < 1:
        raise ConfigError("--max-batch, --queue-size, --workers, --max-rows and --preprocess-* must be >= 1")
    if long_text not in ("truncate", "refuse"):
        raise ConfigError(f"--long-text must be truncate or refuse, got {long_text!r}")
    if (max_tokens is not None and max_tokens < 1) or max_inflight_mb <= 0 or (max_memory_mb or 1) <= 0:
        raise ConfigError("--max-tokens, --max-inflight-mb and --max-memory-mb must be positive")
    cfg = ServeConfig(paths=list(model), name=name, fallback=fallback, runtime=runtime, threads=threads,
                      max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size, timeout_s=timeout_s,
                      max_body_mb=max_body_mb, max_image_pixels=max_image_pixels, token=token, max_rows=max_rows,
                      max_tokens=max_tokens, long_text=long_text, max_request_pixels=max_request_pixels,
                      preprocess_workers=preprocess_workers, preprocess_queue=preprocess_queue,
                      max_inflight_mb=max_inflight_mb, max_memory_mb=max_memory_mb,
                      input_shapes=list(input_shape or []))
    run_server(cfg, host=host, port=port, workers=workers, announce=lambda: err_console.print(
        f"serving {', '.join(model)} on http://{host}:{port}  (page: /, API: /api/predict, KServe v2: "
        "/v2/models/..., metrics: /metrics)"))


@app.command()
def loadtest(url: Annotated[str, typer.Argument(help="Server URL (http://127.0.0.1:8000) or an endpoint.")],
             concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 16,
             duration: Annotated[str, typer.Option(help="How long: 30s, 2m.")] = "30s",
             requests: Annotated[int, typer.Option(help="At most this many requests.")] = 1_000_000,
             payload: Annotated[Optional[Path], typer.Option(help="A JSON request body (default: fits the model).")]
             = None,
             token: Annotated[Optional[str], typer.Option(envvar="SLIMFORGE_TOKEN", help="Bearer token.")] = None,
             output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Where JSON and plot go.")] = Path(
                 "slimforge-out/loadtest"), force: Force = False) -> None:
    """Load-test a server: throughput, p50/p95/p99 latency and errors, as JSON and a plot."""
    from slimforge.serve.loadtest import loadtest as run_load

    body = None
    if payload is not None:
        try:
            body = json.loads(payload.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{payload}: not a readable JSON request body ({exc})") from None
    s = run_load(url, concurrency=concurrency, duration_s=parse_duration(duration), max_requests=requests, payload=body,
                 token=token, out_dir=output_dir, force=force)
    lat = s["latency_ms"]
    console.print(f"{s['requests']} requests in {s['duration_s']:.1f} s at concurrency {s['concurrency']}: "
                  f"{s['throughput_rps']:.1f} req/s, p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, "
                  f"p99 {lat['p99']:.1f} ms, errors {s['errors']} {s['status']}")
    console.print(f"report: {output_dir / 'loadtest.json'}, {output_dir / 'loadtest.png'}")
