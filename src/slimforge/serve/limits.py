"""What a server accepts and how much it takes on: per-request caps (rows, tokens, pixels), the range of token ids a
model can embed, and admission control (a bounded preprocessing queue and a memory budget), so that overload is
answered with 503 + ``Retry-After`` instead of an out-of-memory kill.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Per-request caps and admission settings (every one a ``slimforge serve`` flag)."""

    max_rows: int = 256  # rows (texts, images, tensor rows) in one request
    max_tokens: int | None = None  # tokens per text row; None: the model's own limit
    long_text: str = "truncate"  # truncate | refuse (422) texts over max_tokens
    max_image_pixels: int = 40_000_000  # one image (decompression-bomb guard)
    max_request_pixels: int = 64_000_000  # all images of one request, decoded
    # threads that parse, decode and tokenise, off the event loop: half the cores, 2 to 8
    preprocess_workers: int = field(default_factory=lambda: default_preprocess_workers())
    preprocess_queue: int = 64  # requests waiting for preprocessing before 503
    max_inflight_mb: float = 512.0  # decoded tensors of admitted requests, before 503
    max_memory_mb: float | None = None  # process RSS above which new requests get 503; None: 85% of the limit

    def memory_budget_mb(self) -> float:
        return self.max_memory_mb if self.max_memory_mb else 0.85 * memory_limit_mb()


def default_preprocess_workers() -> int:
    """Half the cores this process may run on, at least 2 and at most 8: on a 16-core GPU host, 2 threads decoding
    images capped a server at ~240 requests/s whatever the batching (its engine needed 0.65 ms a batch of 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(2, min(8, cores // 2))


def memory_limit_mb() -> float:
    """The memory this process may use: the cgroup limit where one is set, else physical memory."""
    import psutil

    limit = float(psutil.virtual_memory().total)
    for f in _cgroup_limit_files():
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, float(text))
    return limit / 2**20


def _cgroup_limit_files() -> list[Path]:
    """memory.max (cgroup v2) or memory.limit_in_bytes (v1) of this process's own cgroup."""
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            files += [Path("/sys/fs/cgroup") / rel / "memory.max", Path("/sys/fs/cgroup/unified") / rel / "memory.max"]
        elif "memory" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/memory") / rel / "memory.limit_in_bytes")
    return files


class Overloaded(Exception):
    """The server cannot take this request now: answered 503 with Retry-After."""


class Admission:
    """Counts requests waiting for or in preprocessing and the bytes of admitted requests' tensors; refuses when a
    bound would be passed, or when the process's resident memory is over its budget.

    Example:
        >>> a = Admission(Limits(preprocess_queue=1, max_memory_mb=1e9))
        >>> a.enter(); a.leave()
    """

    def __init__(self, limits: Limits) -> None:
        import psutil

        self.limits = limits
        self.pending = 0
        self.inflight = 0
        self.budget = limits.memory_budget_mb() * 2**20
        self._proc = psutil.Process()
        self._rss, self._rss_at, self._trim_at = 0, 0.0, 0.0

    def rss(self) -> int:
        now = time.monotonic()
        if now - self._rss_at > 0.02:
            self._rss, self._rss_at = self._proc.memory_info().rss, now
        return self._rss

    def enter(self) -> None:
        """A request wants preprocessing."""
        if self.pending >= self.limits.preprocess_queue:
            raise Overloaded(f"{self.pending} requests are waiting for preprocessing")
        if self.rss() > self.budget and not self._trimmed():
            raise Overloaded(f"the server uses {self.rss() / 2**20:,.0f} MB, over its budget of "
                             f"{self.budget / 2**20:,.0f} MB")
        self.pending += 1

    def _trimmed(self) -> bool:
        """Over budget: hand freed memory back to the OS (at most once a second) and look again, so a server whose
        peak has passed does not refuse for good."""
        now = time.monotonic()
        if now - self._trim_at < 1.0:
            return False
        self._trim_at = now
        import ctypes
        import gc

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._rss_at = 0.0
        return self.rss() <= self.budget

    def leave(self) -> None:
        self.pending -= 1

    def reserve(self, nbytes: int) -> None:
        """Decoded tensors of one request join the queue."""
        if self.inflight and self.inflight + nbytes > self.limits.max_inflight_mb * 2**20:
            raise Overloaded(f"{self.inflight / 2**20:,.0f} MB of requests are queued (limit "
                             f"{self.limits.max_inflight_mb:,.0f} MB)")
        self.inflight += nbytes

    def release(self, nbytes: int) -> None:
        self.inflight -= nbytes


def feeds_nbytes(feeds: dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in feeds.values()))


@dataclass(frozen=True)
class TokenLimits:
    """Exclusive upper bounds of integer inputs that index an embedding table, and the longest sequence the model's
    position table covers (None where unknown)."""

    value_bounds: dict[str, int]
    max_positions: int | None


def token_limits(art: Artifact) -> TokenLimits:
    """Read the bounds from the model: ONNX ``Gather`` tables fed by an input, a torch model's ``nn.Embedding``s,
    and a Hugging Face config (``max_position_embeddings``) next to the tokenizer."""
    bounds: dict[str, int] = {}
    positions: int | None = None
    try:
        if art.format is Format.ONNX and art.path is not None:
            bounds, positions = _onnx_tables(Path(art.path), set(art.io.input_names))
    except Exception as exc:  # noqa: BLE001 - bounds are a guard; without them the model itself still refuses
        log.info("could not read embedding tables of %s: %s", art.name, exc)
    cfg = _hf_config(art)
    if cfg.get("max_position_embeddings"):
        positions = min(positions or 1 << 30, int(cfg["max_position_embeddings"]))
    for name in art.io.input_names:
        if name == "input_ids" and cfg.get("vocab_size"):
            bounds.setdefault(name, int(cfg["vocab_size"]))
        if name == "token_type_ids" and cfg.get("type_vocab_size"):
            bounds.setdefault(name, int(cfg["type_vocab_size"]))
    return TokenLimits(bounds, positions)


def _hf_config(art: Artifact) -> dict[str, Any]:
    import json

    pre = art.meta.get("preprocess") or {}
    candidates = [pre.get("tokenizer"), str(art.path) if art.path is not None else None]
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        for f in (p / "config.json", p.parent / "config.json"):
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and ("vocab_size" in doc or "max_position_embeddings" in doc):
                return doc
    return {}


def _onnx_tables(path: Path, inputs: set[str]) -> tuple[dict[str, int], int | None]:
    """Gather(table, indices) with a rank-2 initializer table: indices fed by a graph input (through casts) bound
    that input's values; tables indexed by anything else are position tables (their rows bound the length)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    dims = {i.name: [d for d in i.dims] for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def source(name: str) -> str | None:
        seen = 0
        while name not in inputs and seen < 8:
            node = producer.get(name)
            if node is None or node.op_type not in ("Cast", "Identity", "Unsqueeze", "Reshape", "Squeeze"):
                return None
            name, seen = node.input[0], seen + 1
        return name if name in inputs else None

    bounds: dict[str, int] = {}
    positions: list[int] = []
    for n in g.node:
        if n.op_type != "Gather" or len(n.input) < 2 or len(dims.get(n.input[0], ())) != 2:
            continue
        rows = int(dims[n.input[0]][0])
        src = source(n.input[1])
        if src is not None:
            bounds[src] = min(bounds.get(src, rows), rows)
        elif rows >= 128:  # position tables (not relative-position buckets)
            positions.append(rows)
    return bounds, (min(positions) if positions and bounds else None)


def check_token_feeds(feeds: dict[str, np.ndarray], limits: TokenLimits, what: str) -> None:
    """Raise ``ValueError`` (answered 422) for ids outside an embedding table or a sequence past the positions."""
    for name, arr in feeds.items():
        bound = limits.value_bounds.get(name)
        if bound is not None and arr.size and arr.dtype.kind in "iu":
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= bound:
                raise ValueError(f"{what}: input {name!r} holds ids from {lo} to {hi}; the model's table has "
                                 f"{bound} rows (ids 0..{bound - 1})")
        if limits.max_positions and arr.ndim == 2 and arr.dtype.kind in "iu" and name in limits.value_bounds \
                and arr.shape[1] > limits.max_positions:
            raise ValueError(f"{what}: input {name!r} has {arr.shape[1]} tokens per row; the model handles at "
                             f"most {limits.max_positions}")
