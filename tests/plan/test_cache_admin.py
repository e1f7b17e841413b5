"""The cache's size cap: least recently used entries go first; only what slimforge made is ever listed or removed."""

import os
import time

import numpy as np
import pytest

from slimforge.errors import ConfigError
from slimforge.plan.cache import MeasureCache
from slimforge.plan.cache_admin import cache_entries, clear_cache, evict, max_cache_bytes


def _key(i: int) -> str:
    return f"{i:020x}"


def _step(root, i: int, size: int, used: float, *, complete: bool = True):
    d = root / "steps" / _key(i)
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"x" * size)
    if complete:
        (d / "complete").write_text("1")
    os.utime(d, (used, used))
    return d


def _measure(root, i: int, size: int, used: float):
    f = root / "measure" / f"{_key(i)}.npz"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(b"x" * size)
    os.utime(f, (used, used))
    return f


def test_the_cap_evicts_least_recently_used_first_and_nothing_foreign(tmp_path):
    now = time.time()
    a = _step(tmp_path, 1, 1000, now - 500)    # oldest use
    b = _measure(tmp_path, 2, 1000, now - 400)
    c = _step(tmp_path, 3, 1000, now - 300)
    d = _measure(tmp_path, 4, 1000, now - 10)  # most recent use
    writing = _step(tmp_path, 5, 1000, now - 60, complete=False)  # a run is writing it: kept
    stale = _step(tmp_path, 6, 1000, now - 7200, complete=False)  # a dead run's leftover: evictable
    foreign = [tmp_path / "steps" / "README.txt", tmp_path / "steps" / "not-a-key", tmp_path / "notes.bin",
               tmp_path / "steps" / _key(7)]
    foreign[0].write_text("a user's file")
    foreign[1].mkdir()
    foreign[2].write_bytes(b"y" * 10_000)
    foreign[3].mkdir()
    (foreign[3] / "photo.jpg").write_bytes(b"z")  # named like a key, but not slimforge's content
    assert [e.path for e in cache_entries(tmp_path)] == [stale, a, b, c, writing, d]
    assert sum(e.size_bytes for e in cache_entries(tmp_path)) == 6002  # (the two "complete" markers: 1 byte each)

    gone = evict(tmp_path, max_bytes=3500)
    assert [e.path for e in gone] == [stale, a, b]  # oldest use first, until 3001 <= 3500
    assert not stale.exists() and not a.exists() and not b.exists() and c.exists() and d.exists()
    assert writing.exists() and all(p.exists() for p in foreign)
    assert evict(tmp_path, max_bytes=3500) == []  # under the cap: nothing more

    gone = evict(tmp_path, max_bytes=0)
    assert [e.path for e in gone] == [c, d] and writing.exists()  # (being written: kept even at 0)
    assert all(p.exists() for p in foreign)


def test_reading_an_entry_marks_it_used(tmp_path):
    m = MeasureCache(tmp_path)
    m.put(_key(1), {"x": 1}, [np.zeros(3)])
    m.put(_key(2), {"x": 2}, [np.zeros(3)])
    old = time.time() - 1000
    for i in (1, 2):
        os.utime(tmp_path / "measure" / f"{_key(i)}.npz", (old + i, old + i))
    assert m.get(_key(1)) is not None  # read now: it becomes the most recently used
    assert [e.path.name for e in cache_entries(tmp_path)] == [f"{_key(2)}.npz", f"{_key(1)}.npz"]
    gone = evict(tmp_path, max_bytes=min(e.size_bytes for e in cache_entries(tmp_path)))
    assert [e.path.name for e in gone] == [f"{_key(2)}.npz"]


def test_clear_removes_only_slimforge_entries(tmp_path):
    now = time.time()
    _step(tmp_path, 1, 10, now)
    _measure(tmp_path, 2, 10, now)
    (tmp_path / "optimized" / _key(3)).mkdir(parents=True)
    (tmp_path / "optimized" / _key(3) / "result.json").write_text("{}")
    (tmp_path / "optimized" / _key(3) / "complete").write_text("1")
    (tmp_path / "keep.txt").write_text("mine")
    assert len(clear_cache(tmp_path)) == 3
    assert cache_entries(tmp_path) == [] and (tmp_path / "keep.txt").read_text() == "mine"


def test_the_cap_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("SLIMFORGE_CACHE_MAX_GB", raising=False)
    assert max_cache_bytes() == 5_000_000_000
    monkeypatch.setenv("SLIMFORGE_CACHE_MAX_GB", "0.5")
    assert max_cache_bytes() == 500_000_000
    monkeypatch.setenv("SLIMFORGE_CACHE_MAX_GB", "lots")
    with pytest.raises(ConfigError, match="SLIMFORGE_CACHE_MAX_GB"):
        max_cache_bytes()
