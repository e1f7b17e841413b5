"""Looking after the cache directory (``$SLIMFORGE_CACHE_DIR``, else ``~/.cache/slimforge``): what is in it, clearing
it, and a size cap enforced by evicting the least recently used entries after each search.

Only entries slimforge made are ever listed or removed: the folders and files named by a cache key (20 hex digits)
in its own sub-folders (``steps``, ``measure``, ``optimized``, ``outputs``) whose contents look like slimforge's.
Anything else there (a user's file, a folder of another tool) is left alone. An entry being written by a run
(no ``complete`` marker yet, or a ``.tmp`` name) is left alone for an hour.

The cap is ``$SLIMFORGE_CACHE_MAX_GB`` (default 5 GB; 0 keeps nothing after a run). Reading an entry marks it used.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from slimforge.core.outputs import MANIFEST
from slimforge.errors import ConfigError
from slimforge.plan.cache import cache_root

DEFAULT_MAX_GB = 5.0
STALE_S = 3600.0  # an unfinished entry older than this is a dead run's leftover
_KEY = r"[0-9a-f]{20}"
_NAMES = {"steps": re.compile(rf"^{_KEY}$"), "optimized": re.compile(rf"^{_KEY}(\.tmp)?$"),
          "outputs": re.compile(rf"^{_KEY}$"), "measure": re.compile(rf"^{_KEY}(\.\d+\.tmp)?\.npz$")}


@dataclass(frozen=True)
class CacheEntry:
    """One cache entry: its kind (sub-folder), path, size on disk and when it was last used (epoch seconds)."""

    kind: str
    path: Path
    size_bytes: int
    last_used: float
    complete: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "name": self.path.name, "size_bytes": self.size_bytes,
                "last_used": self.last_used, "complete": self.complete}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _ours(kind: str, path: Path) -> tuple[bool, bool]:
    """(made by slimforge, complete) for a name that matched the kind's pattern."""
    if path.is_symlink():
        return False, False
    if kind == "measure":
        return path.is_file(), ".tmp" not in path.name
    if not path.is_dir():
        return False, False
    names = {p.name for p in path.iterdir()}
    if kind == "steps":
        allowed = all(n == "complete" or n.startswith("model.") for n in names)
        return allowed, "complete" in names
    if kind == "optimized":
        tmp = path.name.endswith(".tmp")
        return tmp or not names or bool(names & {"result.json", "complete"}), "complete" in names and not tmp
    return MANIFEST in names, True  # outputs: load_optimized's output folders, claimed with a manifest


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Every entry slimforge made in the cache, least recently used first.

    Example:
        >>> import tempfile
        >>> cache_entries(Path(tempfile.mkdtemp()))
        []
    """
    root = Path(root) if root is not None else cache_root()
    found: list[CacheEntry] = []
    for kind, pattern in _NAMES.items():
        folder = root / kind
        try:
            children = list(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []
        except OSError:
            continue
        for p in children:
            if not pattern.match(p.name):
                continue
            try:
                ours, complete = _ours(kind, p)
                if ours:
                    found.append(CacheEntry(kind, p, _size(p), p.stat().st_mtime, complete))
            except OSError:  # removed meanwhile by another run
                continue
    return sorted(found, key=lambda e: e.last_used)


def _remove(entry: CacheEntry) -> bool:
    try:
        if entry.path.is_dir() and not entry.path.is_symlink():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def max_cache_bytes() -> int:
    """The cap: ``$SLIMFORGE_CACHE_MAX_GB`` gigabytes (default 5)."""
    text = os.environ.get("SLIMFORGE_CACHE_MAX_GB", "").strip()
    try:
        gb = float(text) if text else DEFAULT_MAX_GB
    except ValueError:
        raise ConfigError(f"SLIMFORGE_CACHE_MAX_GB must be a number of gigabytes, got {text!r}") from None
    if gb < 0:
        raise ConfigError(f"SLIMFORGE_CACHE_MAX_GB must be >= 0, got {text!r}")
    return int(gb * 1e9)


def _busy(entry: CacheEntry, now: float) -> bool:
    return not entry.complete and now - entry.last_used < STALE_S


def evict(root: Path | None = None, *, max_bytes: int | None = None) -> list[CacheEntry]:
    """Remove the least recently used entries until the cache holds at most ``max_bytes`` (default: the cap);
    returns what went. Entries being written by a run are kept.

    Example:
        >>> import tempfile
        >>> evict(Path(tempfile.mkdtemp()), max_bytes=0)
        []
    """
    limit = max_cache_bytes() if max_bytes is None else max_bytes
    entries = cache_entries(root)
    total = sum(e.size_bytes for e in entries)
    now, gone = time.time(), []
    for e in entries:  # least recently used first
        if total <= limit:
            break
        if _busy(e, now):
            continue
        if _remove(e):
            total -= e.size_bytes
            gone.append(e)
    return gone


def clear_cache(root: Path | None = None) -> list[CacheEntry]:
    """Remove every entry slimforge made in the cache (nothing else); returns what went."""
    now = time.time()
    return [e for e in cache_entries(root) if not _busy(e, now) and _remove(e)]
