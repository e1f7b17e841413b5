"""What the API and the planner feed models: artifacts from whatever a user passes, datasets, feeds at a batch size,
synthesised inputs when there is no data, and the calibration/evaluation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from slimforge.core.artifact import Artifact
from slimforge.errors import DataError
from slimforge.io.data import Batch, Dataset, bundled_sentences_path, load_data
from slimforge.io.models import default_model_path, load
from slimforge.io.synth import batch_axis, state_pairs, synthesize, take

ModelLike = Any  # a path, an nn.Module (with example inputs) or an Artifact


def as_artifact(model: ModelLike | None, **load_kw: Any) -> Artifact:
    """An artifact from an artifact, a path, a module (with ``example_inputs``) or None (the bundled model)."""
    if isinstance(model, Artifact):
        return model
    return load(default_model_path() if model is None else model, **load_kw)


def with_overrides(art: Artifact, *, task: str | None = None, preprocess: Any = None) -> Artifact:
    """``art`` with the task (``--task``) and the image preprocessing (``--preprocess``) the user set."""
    import dataclasses

    from slimforge.core.artifact import TASKS
    from slimforge.errors import ConfigError
    from slimforge.io.preprocess import parse_preprocess

    meta = dict(art.meta)
    if task:
        if task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
        meta["task"] = task
    pre = parse_preprocess(preprocess)
    if pre:
        if (meta.get("preprocess") or {}).get("kind") == "text":
            raise ConfigError(f"--preprocess sets image preprocessing; {art.name} takes text")
        meta["preprocess"] = {"kind": "image", **pre, "source": "user"}
    return art if meta == dict(art.meta) else dataclasses.replace(art, meta=meta)


def as_data(data: str | Path | Dataset | None, art: Artifact, *, default_text: bool = False) -> Dataset | None:
    """A dataset from a path or dataset; with none, the bundled sentences for text models when ``default_text``."""
    if data is None:
        pre = art.meta.get("preprocess") or {}
        if default_text and pre.get("kind") == "text":
            return load_data(bundled_sentences_path(), art)
        return None
    if isinstance(data, (str, Path)):
        return load_data(data, art)
    return data


def feeds_for(art: Artifact, data: Dataset | None, *, seq: int = 64) -> Callable[[int], dict[str, np.ndarray]]:
    """A function giving model feeds at a batch size: the first examples of ``data``, else synthesised inputs."""

    def make(batch: int) -> dict[str, np.ndarray]:
        if data is None:
            return synthesize(art.io, batch=batch, seq=seq, examples=art.examples, meta=art.meta)
        first = next(data.batches(batch), None)
        if first is None:
            raise DataError(f"{data.name}: no examples to benchmark with")
        feeds = first.feeds
        n = _count(feeds, art)
        if n < batch:  # fewer examples than the batch size: repeat them
            feeds = take(feeds, np.arange(batch) % n, art.io)
        return feeds

    return make


class SyntheticData:
    """Synthesised inputs when the user gives no data (calibration and fidelity then use them). For recurrent
    models (state inputs with matching state outputs) the batches are consecutive steps: each step's state input is
    the state the model returned at the step before, so calibration sees the states the model really reaches."""

    def __init__(self, art: Artifact, n: int = 64, seed: int = 0, steps: int = 8) -> None:
        self.art, self.n, self.name, self.seed, self.steps = art, n, "synthesized inputs", seed, steps
        self.pairs = state_pairs(art.io)
        self.axes = {t.name: batch_axis(t) for t in art.io.inputs}
        self._session: Any = None

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, *, limit: int | None = None):
        left, i = min(self.n, limit or self.n), 0
        state: dict[str, np.ndarray] = {}
        while left > 0:
            b = min(batch_size, left)
            feeds = synthesize(self.art.io, batch=b, seq=64, examples=self.art.examples, meta=self.art.meta,
                               seed=self.seed * 1000 + i)
            if self.pairs and i % self.steps:  # carry the state of the previous step (same batch size)
                feeds.update({k: v for k, v in state.items() if v.shape[self.axes.get(k) or 0] == b})
            if self.pairs:
                if self._session is None:
                    from slimforge.runtimes import open_session

                    self._session = open_session(self.art)
                outs = self._session.run(feeds)
                state = {name: outs[j] for name, j in self.pairs.items()}
            yield Batch(feeds=feeds)
            left -= b
            i += 1


class DataSlice:
    """Examples ``[start, stop)`` of a dataset, batched as the dataset batches them (so a split keeps padding rules)."""

    def __init__(self, ds: Any, start: int, stop: int) -> None:
        self.ds, self.start, self.stop = ds, start, stop
        self.name = f"{ds.name}[{start}:{stop}]"
        self.path = getattr(ds, "path", None)

    def __len__(self) -> int:
        return self.stop - self.start

    def batches(self, batch_size: int, *, limit: int | None = None):
        want = min(len(self), limit or len(self))
        seen, given = 0, 0
        io = getattr(getattr(self.ds, "art", None), "io", None)
        for batch in self.ds.batches(batch_size, limit=self.start + want):
            n = len(batch.items) if batch.items else _count(batch.feeds, getattr(self.ds, "art", None))
            lo, hi = max(self.start - seen, 0), min(self.start + want - seen, n)
            seen += n
            if hi <= lo:
                continue
            given += hi - lo
            yield Batch(feeds=take(batch.feeds, slice(lo, hi), io),
                        labels=None if batch.labels is None else batch.labels[lo:hi], items=batch.items[lo:hi])
            if given >= want:
                return


def _count(feeds: dict[str, np.ndarray], art: Artifact | None) -> int:
    """How many examples a batch of feeds holds (along the first input's batch axis)."""
    if art is not None:
        for spec in art.io.inputs:
            axis = batch_axis(spec)
            if axis is not None and spec.name in feeds and np.ndim(feeds[spec.name]) > axis:
                return int(feeds[spec.name].shape[axis])
    return len(next(v for v in feeds.values() if np.ndim(v)))


def split_data(ds: Any, eval_limit: int) -> tuple[Any, Any]:
    """(calibration/training part, evaluation part): the last ``eval_limit`` examples (at most a third) are held out
    so that what is trained or calibrated on is never what it is judged on."""
    n = len(ds)
    n_eval = min(eval_limit, n // 3)
    if n_eval < 16:
        return ds, ds
    return DataSlice(ds, 0, n - n_eval), DataSlice(ds, n - n_eval, n)
