"""Soak under memory pressure: ``slimforge serve`` in a 2 GB memory cgroup (cgroup v1 or v2, where this machine lets
us make one; else unlimited and said so), 64 concurrent clients for 60 s mixing valid, oversized and malformed
requests, and a health probe every 0.25 s throughout.

Reports requests served, 2xx/4xx/503/5xx counts, connection failures, peak server RSS (and the cgroup's own peak),
the slowest health answer, and whether the server is still alive; exit 1 when a 5xx, a crash, a health answer over
1 s or a peak RSS over the limit was seen.

    .venv/bin/python benchmarks/serve_soak.py [--model model.onnx] [--duration 60] [--clients 64] [--limit-mb 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import httpx  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [ln.strip() for ln in (ROOT / "src/slimforge/data/sentences.txt").read_text().splitlines() if ln.strip()]


def _cgroup(limit_mb: int) -> tuple[Path | None, str]:
    """A memory cgroup with the limit (and no swap), or None and why not."""
    name = f"slimforge-soak-{os.getpid()}"
    v2 = Path("/sys/fs/cgroup")
    options = [(Path("/sys/fs/cgroup/memory") / name, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")]
    if "memory" in (v2 / "cgroup.controllers").read_text() if (v2 / "cgroup.controllers").exists() else False:
        options.insert(0, (v2 / name, "memory.max", "memory.swap.max"))
    why = "no memory cgroup controller"
    for folder, knob, swap in options:
        try:
            folder.mkdir(exist_ok=True)
            (folder / knob).write_text(str(limit_mb * 2**20))
        except OSError as exc:
            why = f"{folder}: {exc.strerror}"
            try:
                folder.rmdir()
            except OSError:
                pass
            continue
        try:
            (folder / swap).write_text("0" if swap == "memory.swap.max" else str(limit_mb * 2**20))
        except OSError:
            pass
        return folder, f"cgroup {folder} ({knob} = {limit_mb} MB)"
    return None, f"no writable memory cgroup here ({why}): the server ran without a memory limit"


def _peak_cgroup_mb(folder: Path | None) -> float | None:
    for knob in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int((folder / knob).read_text()) / 2**20 if folder else None
        except (OSError, ValueError):
            continue
    return None


def _requests() -> list[tuple[str, str, bytes, dict, str]]:
    """(kind, path, body, headers, label): a weighted mix of valid, oversized and malformed requests."""
    js = {"content-type": "application/json"}
    valid = [("valid", "/api/predict", json.dumps({"text": random.sample(SENTENCES, k)}).encode(), js, f"text x{k}")
             for k in (1, 2, 4, 8)]
    v2_texts = random.sample(SENTENCES, 3)
    v2 = json.dumps({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": v2_texts}]}).encode()
    valid.append(("valid", "/v2/models/minilm/infer", v2, js, "v2 text x3"))
    oversized = [
        ("oversized", "/api/predict", json.dumps({"text": ["tiny"] * 100_000}).encode(), js, "100k rows"),
        ("oversized", "/api/predict", json.dumps({"text": ["word " * 2_000_000]}).encode(), js, "10 MB string"),
        ("oversized", "/api/predict", json.dumps({"inputs": {"input_ids": [[101] * 1000], "attention_mask": [[1] * 1000],
                                                        "token_type_ids": [[0] * 1000]}}).encode(), js,
         "1000 tokens"),
        ("oversized", "/api/predict", b"{" + b" " * (17 * 2**20) + b"}", js, "17 MB body"),
    ]
    malformed = [
        ("malformed", "/api/predict", b"[" * 50_000 + b"]" * 50_000, js, "deep JSON"),
        ("malformed", "/api/predict", b'{"inputs":{"input_ids":5}}', js, "scalar input"),
        ("malformed", "/api/predict", b'{"image":"data:image/png;base64"}', js, "data URL without comma"),
        ("malformed", "/api/predict", b'{"inputs":{"input_ids":[[101,99999999]],"attention_mask":[[1,1]],'
                                      b'"token_type_ids":[[0,0]]}}', js, "ids out of vocab"),
        ("malformed", "/v2/models/minilm/infer", b'{"inputs":[{"name":"t","shape":[1],"datatype":"BYTES",'
                                                 b'"parameters":{"binary_data_size":"abc"}}]}', js, "v2 bad size"),
        ("malformed", "/api/predict", b"not json", js, "not JSON"),
    ]
    return valid * 6 + oversized + malformed * 2


async def _soak(url: str, clients: int, duration: float, server: psutil.Process) -> dict:
    mix = _requests()
    stats: dict = {"by_status": {}, "by_label": {}, "connection_errors": 0, "requests": 0}
    health = {"probes": 0, "failures": 0, "max_s": 0.0, "not_ok": 0}
    rss = {"peak_mb": 0.0}
    deadline = time.monotonic() + duration

    async def client(i: int) -> None:
        rng = random.Random(i)
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            while time.monotonic() < deadline:
                kind, path, body, headers, label = rng.choice(mix)
                try:
                    r = await c.post(path, content=body, headers=headers)
                    code = r.status_code
                except httpx.HTTPError:
                    stats["connection_errors"] += 1
                    code = "conn"
                stats["requests"] += 1
                stats["by_status"][str(code)] = stats["by_status"].get(str(code), 0) + 1
                key = f"{kind}: {label}"
                stats["by_label"].setdefault(key, {})
                stats["by_label"][key][str(code)] = stats["by_label"][key].get(str(code), 0) + 1

    async def probe() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=5) as c:
            while time.monotonic() < deadline:
                t = time.perf_counter()
                try:
                    r = await c.get("/api/health")
                    health["not_ok"] += r.status_code != 200 or r.json().get("status") != "ok"
                except httpx.HTTPError:
                    health["failures"] += 1
                health["max_s"] = max(health["max_s"], time.perf_counter() - t)
                health["probes"] += 1
                await asyncio.sleep(0.25)

    async def sample() -> None:
        while time.monotonic() < deadline:
            try:
                mb = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / 2**20
                rss["peak_mb"] = max(rss["peak_mb"], mb)
            except psutil.Error:
                pass
            await asyncio.sleep(0.1)

    await asyncio.gather(*(client(i) for i in range(clients)), probe(), sample())
    return {**stats, "health": health, "peak_rss_mb": rss["peak_mb"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model to serve (default: the bundled MiniLM, exported to ONNX)")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--limit-mb", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_soak.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    model = args.model
    if model is None:
        import slimforge

        from slimforge.io.models import default_model_path

        model = slimforge.export(slimforge.load(default_model_path()), work / "minilm.onnx").path
    folder, how = _cgroup(args.limit_mb)
    port = 8000 + os.getpid() % 1000
    env = {**os.environ, "SLIMFORGE_SERVE_SOAK": "1"}

    def enter_cgroup() -> None:
        if folder is not None:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    server = subprocess.Popen([sys.executable, "-m", "slimforge", "serve", str(model), "--name", "minilm",
                               "--port", str(port), "--max-batch", "16"], env=env, preexec_fn=enter_cgroup,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        print(f"soak: {args.clients} clients x {args.duration:.0f} s against {model.name}; {how}")
        res = asyncio.run(_soak(url, args.clients, args.duration, psutil.Process(server.pid)))
        alive = server.poll() is None
        final = httpx.get(url + "/api/health", timeout=5).json() if alive else None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        if folder is not None:
            try:
                folder.rmdir()
            except OSError:
                pass
    codes = res["by_status"]
    five = sum(v for k, v in codes.items() if k.isdigit() and 500 <= int(k) < 600 and k != "503")
    doc = {"model": str(model), "clients": args.clients, "duration_s": args.duration, "memory_limit": how,
           "limit_mb": args.limit_mb if folder else None, **res, "cgroup_peak_mb": _peak_cgroup_mb(folder),
           "served_2xx": codes.get("200", 0), "rejected_4xx": sum(v for k, v in codes.items()
                                                                  if k.isdigit() and 400 <= int(k) < 500),
           "shed_503": codes.get("503", 0), "errors_5xx": five, "server_alive": alive, "final_health": final}
    from slimforge.env import environment

    doc["environment"] = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str))
    h = res["health"]
    print(f"requests {res['requests']:,}: 2xx {doc['served_2xx']:,}, 4xx {doc['rejected_4xx']:,}, 503 "
          f"{doc['shed_503']:,}, other 5xx {five}, connection errors {res['connection_errors']}")
    print(f"health: {h['probes']} probes, slowest {h['max_s'] * 1000:.0f} ms, failures {h['failures']}, "
          f"not ok {h['not_ok']}; peak RSS {res['peak_rss_mb']:.0f} MB (limit {args.limit_mb if folder else '-'} MB)"
          f"; server alive: {alive}")
    for label, by in sorted(res["by_label"].items()):
        print(f"  {label:32s} {by}")
    print(f"wrote {args.out}")
    ok = (five == 0 and alive and h["failures"] == 0 and h["max_s"] < 1.0 and res["connection_errors"] == 0
          and (folder is None or res["peak_rss_mb"] < args.limit_mb))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
