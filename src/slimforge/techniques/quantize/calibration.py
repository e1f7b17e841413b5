"""Calibration data shared by every static technique: streamed from the run's dataset, never held whole."""

from __future__ import annotations

import enum
from typing import Iterator, Sequence

import numpy as np

from slimforge.core.context import RunContext
from slimforge.errors import DataError


class Calibration(str, enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def calibration_feeds(ctx: RunContext, *, num_samples: int, input_names: Sequence[str],
                      batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Yield up to ``num_samples`` examples from ``ctx.calibration_data`` in batches, keyed by ``input_names``."""
    data = ctx.calibration_data
    if data is None:
        raise DataError("static quantization needs calibration data: pass data=... (API) or --data (CLI): an image "
                        "folder, a text file, .npy/.npz or CSV")
    for batch in data.batches(batch_size, limit=num_samples):
        missing = [n for n in input_names if n not in batch.feeds]
        if missing:
            raise DataError(f"{data.name}: calibration batches lack the model input(s) {missing}")
        yield {n: batch.feeds[n] for n in input_names}
