"""A load test: N concurrent clients send requests for a fixed time (and at most a fixed count), then report
throughput, latency percentiles and errors, as JSON and as a plot."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from slimforge.core.outputs import atomic_path
from slimforge.core.outputs import check_output_dir, prepare_output_dir, write_text
from slimforge.errors import ConfigError


@dataclass
class LoadResult:
    url: str
    concurrency: int
    duration_s: float
    requests: int = 0
    errors: int = 0
    status: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    finished_at_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        ok = self.requests - self.errors
        return {"url": self.url, "concurrency": self.concurrency, "duration_s": self.duration_s,
                "requests": self.requests, "ok": ok, "errors": self.errors, "status": self.status,
                "throughput_rps": ok / self.duration_s if self.duration_s else 0.0,
                "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                               "p99": float(np.percentile(lat, 99)), "mean": float(np.mean(lat)),
                               "max": float(np.max(lat))}}


async def _default_payload(client: Any, base: str, headers: dict[str, str]) -> dict[str, Any]:
    """A request that fits the served model: a sentence for text models, an example image, else zeros."""
    r = await client.get(f"{base}/api/examples", headers=headers)
    r.raise_for_status()
    ex = r.json()
    if ex["kind"] == "text":
        return {"text": ["slimforge makes trained models smaller and faster, verified on the hardware they run on."]}
    if ex["kind"] == "image" and ex["examples"]:
        return {"image": ex["examples"][0]["image"]}
    r = await client.get(f"{base}/api/models", headers=headers)
    m = r.json()["models"][0]
    meta = (await client.get(f"{base}/v2/models/{m['name']}", headers=headers)).json()
    return {"inputs": {i["name"]: np.zeros([1] + [d if d > 0 else 8 for d in i["shape"][1:]]).tolist()
                       for i in meta["inputs"]}}


class _Conn:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: a load generator must cost far less CPU than the
    server it measures (on a small machine they share the cores), and httpx's async client costs about as much."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port),
                                                              self.timeout)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
        try:
            self.writer.write(head.encode() + body)
            return await asyncio.wait_for(self._response(), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _response(self) -> int:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value.strip())
            elif key == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _run(url: str, concurrency: int, duration_s: float, max_requests: int, payload: dict[str, Any] | None,
               token: str | None, timeout_s: float) -> LoadResult:
    import httpx

    parsed = urlparse(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise ConfigError(f"loadtest needs an http:// URL of a slimforge server, got {url!r}")
    base = f"{parsed.scheme}://{parsed.netloc}"
    path = parsed.path if parsed.path not in ("", "/") else "/api/predict"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    res = LoadResult(base + path, concurrency, duration_s)
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            await client.get(base + "/api/health")  # reachable at all?
            if payload is None:
                payload = await _default_payload(client, base, headers)
    except httpx.HTTPError as exc:
        raise ConfigError(f"{base}: cannot reach the server ({type(exc).__name__}: {exc}); is `slimforge serve` "
                          "running there?") from None
    body = json.dumps(payload).encode()
    start = time.perf_counter()
    deadline = start + duration_s
    sent = 0

    async def worker() -> None:
        nonlocal sent
        conn = _Conn(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout_s)
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            t = time.perf_counter()
            try:
                status = await conn.post(path, body, headers)
                code, failed = str(status), status >= 400
            except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, IndexError,
                    asyncio.IncompleteReadError) as exc:
                code, failed = type(exc).__name__, True
            now = time.perf_counter()
            res.requests += 1
            res.status[code] = res.status.get(code, 0) + 1
            if failed:
                res.errors += 1
            else:
                res.latencies_ms.append((now - t) * 1000.0)
                res.finished_at_s.append(now - start)
        conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.duration_s = time.perf_counter() - start
    return res


def loadtest(url: str, *, concurrency: int = 16, duration_s: float = 30.0, max_requests: int = 1_000_000,
             payload: dict[str, Any] | None = None, token: str | None = None, timeout_s: float = 30.0,
             out_dir: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run the load test; returns the summary (and writes ``loadtest.json`` / ``loadtest.png`` under ``out_dir``).

    Example:
        >>> # loadtest("http://127.0.0.1:8000", concurrency=16, duration_s=30)["latency_ms"]["p99"]
    """
    if concurrency < 1 or duration_s <= 0 or max_requests < 1:
        raise ConfigError("concurrency and max requests must be >= 1 and the duration > 0")
    if out_dir is not None:
        check_output_dir(out_dir, force=force)
    res = asyncio.run(_run(url, concurrency, duration_s, max_requests, payload, token, timeout_s))
    summary = res.summary()
    if out_dir is not None:
        out = prepare_output_dir(out_dir, force=force, fresh=False)  # never removes what other runs wrote
        write_text(out / "loadtest.json", json.dumps(summary, indent=2))
        with atomic_path(out / "loadtest.png") as tmp:
            _plot(res, tmp)
        summary["files"] = [str(out / "loadtest.json"), str(out / "loadtest.png")]
    return summary


def per_second(finished_at_s: list[float], duration_s: float, *, min_partial_s: float = 0.5
               ) -> tuple[np.ndarray, np.ndarray]:
    """Successful requests per second over the run: one point per whole second, at its middle. The last, partial
    second is rescaled to a rate over the time it covers when that is at least ``min_partial_s`` (or it is the only
    one), and dropped otherwise: counted as a whole second, a 0.2 s tail would plot as an 80% drop.

    Example:
        >>> per_second([0.1 * i + 0.05 for i in range(23)], 2.3)  # 10 per second for 2.3 s: the 0.3 s tail is dropped
        (array([0.5, 1.5]), array([10., 10.]))
    """
    duration = max(float(duration_s), 0.0)
    whole = int(np.floor(duration))
    edges = [float(i) for i in range(whole + 1)]
    tail = duration - whole
    if tail > 1e-9 and (tail >= min_partial_s or whole == 0):
        edges.append(duration)
    if len(edges) < 2:
        return np.empty(0), np.empty(0)
    bins = np.asarray(edges)
    counts, _ = np.histogram(np.asarray(finished_at_s, dtype=np.float64), bins=bins)
    return (bins[:-1] + bins[1:]) / 2, counts / np.diff(bins)


def _plot(res: LoadResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if res.latencies_ms:
        a.hist(res.latencies_ms, bins=50, color="#2563eb")
        s = res.summary()["latency_ms"]
        for k, c in (("p50", "green"), ("p95", "orange"), ("p99", "red")):
            a.axvline(s[k], color=c, linestyle="--", label=f"{k} {s[k]:.1f} ms")
        a.legend(fontsize=8)
        t, rate = per_second(res.finished_at_s, res.duration_s)
        b.plot(t, rate, marker=".", color="#16a34a")
        b.set_ylim(bottom=0)
    a.set_xlabel("latency (ms)")
    a.set_ylabel("requests")
    b.set_xlabel("time (s)")
    b.set_ylabel("successful requests per second")
    fig.suptitle(f"{res.url}: concurrency {res.concurrency}, {res.requests} requests, {res.errors} errors",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
