"""The caches behind the engine and the planner, all keyed by one hashing function (``digest``).

- ``StepCache``: the artifact after each prefix of steps, keyed by (parent key, step config, target): in memory for
  the run, and on disk (ONNX / OpenVINO files) across runs, so shared prefixes such as the ONNX export are built once.
- ``MeasureCache``: a candidate's latency, size, memory and outputs on the evaluation data, on disk across runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config
from slimforge.errors import SlimforgeError

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 3: measurements carry FLOPs per item and the device peak


def digest(*parts: Any) -> str:
    """The one hash of every cache key: 20 hex digits of the SHA-256 of the parts as sorted JSON.

    Example:
        >>> digest("a", {"b": 1}) == digest("a", {"b": 1}) != digest("a", {"b": 2})
        True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_root() -> Path:
    """``$SLIMFORGE_CACHE_DIR``, else ``~/.cache/slimforge``."""
    return Path(os.environ.get("SLIMFORGE_CACHE_DIR") or Path.home() / ".cache" / "slimforge")


def touch(path: Path) -> None:
    """Mark a cache entry used now: its modification time is its last use, which the size cap evicts by
    (``plan.cache_admin``)."""
    try:
        os.utime(path)
    except OSError:
        pass


def fingerprint(art: Artifact) -> str:
    """What identifies the source model's content: file digests for files, all weights for in-memory modules."""
    if art.source_id.startswith("module:") and art.handle is not None:
        h = hashlib.sha256(type(art.handle).__qualname__.encode())
        for name, t in art.handle.state_dict().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(t.detach().cpu().float().numpy()).tobytes())
        return "module:" + h.hexdigest()[:20]
    return art.source_id


def data_fingerprint(ds: Any) -> str:
    if ds is None:
        return "none"
    path = getattr(ds, "path", None)
    stamp = ""
    if path is not None and Path(path).exists():
        st = Path(path).stat()
        stamp = f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return digest(getattr(ds, "name", "data"), len(ds), stamp)


def model_key(art: Artifact) -> str:
    """The key a chain of steps starts from: the model's content and its inputs (names, dtypes, shapes, and the
    example shapes an export traces with)."""
    examples = {k: list(getattr(v, "shape", ())) for k, v in (art.examples or {}).items()}
    return digest(fingerprint(art), art.io.to_dict(), examples, CACHE_VERSION)


def step_key(parent: str, step: Config, target: str) -> str:
    """The key of the artifact made by ``step`` from the artifact keyed ``parent``, for ``target``."""
    return digest(parent, step.to_dict(), target, CACHE_VERSION)


class StepCache:
    """Artifacts after each prefix of steps: in memory for this run, on disk (ONNX / OpenVINO files) across runs."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.memory: dict[str, Artifact] = {}
        self.hits = 0
        self.built = 0

    def get(self, key: str) -> Artifact | None:
        if key in self.memory:
            self.hits += 1
            return self.memory[key]
        if self.root is None:
            return None
        folder = self.root / "steps" / key
        for name in ("model.onnx", "model.xml"):
            if (folder / name).is_file() and (folder / "complete").is_file():
                from slimforge.io.models import load

                try:
                    art = load(folder / name)
                except SlimforgeError:
                    return None
                touch(folder)
                self.memory[key] = art
                self.hits += 1
                return art
        return None

    def put(self, key: str, art: Artifact) -> Artifact:
        self.built += 1
        if self.root is not None and art.format in (Format.ONNX, Format.OPENVINO) and art.path is not None:
            from slimforge.io.save import save

            folder = self.root / "steps" / key
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True, exist_ok=True)
            try:
                art = save(art, folder / ("model.onnx" if art.format is Format.ONNX else "model.xml"))
                (folder / "complete").write_text("1")
            except (SlimforgeError, OSError) as exc:  # caching is an optimisation: never fail the search for it
                log.warning("could not cache step %s: %s", key, exc)
        self.memory[key] = art
        return art


class MeasureCache:
    """A measured document plus output arrays per key, in ``<root>/measure`` (nothing when ``root`` is None)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def _file(self, key: str) -> Path | None:
        return self.root / "measure" / f"{key}.npz" if self.root is not None else None

    def get(self, key: str) -> tuple[dict[str, Any], list[np.ndarray]] | None:
        f = self._file(key)
        if f is None or not f.is_file():
            return None
        try:
            with np.load(f, allow_pickle=False) as z:
                doc = json.loads(str(z["doc"]))
                outs = [z[f"out{i}"] for i in range(int(doc["n_out"]))]
        except Exception:  # noqa: BLE001 - a corrupt or truncated cache file (BadZipFile, EOFError, ...): measure again
            f.unlink(missing_ok=True)
            return None
        touch(f)
        return doc, outs

    def put(self, key: str, doc: dict[str, Any], outs: list[np.ndarray]) -> None:
        f = self._file(key)
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, doc=json.dumps({**doc, "n_out": len(outs)}, default=str),
                     **{f"out{i}": o for i, o in enumerate(outs)})
            os.replace(tmp, f)
        except OSError as exc:
            log.warning("could not cache a measurement: %s", exc)
            tmp.unlink(missing_ok=True)
