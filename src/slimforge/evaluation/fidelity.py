"""Fidelity checks between two artifacts of the same model."""

from __future__ import annotations

from typing import Any

import numpy as np

from slimforge.core.artifact import Artifact, Check
from slimforge.errors import VerificationError
from slimforge.evaluation.metrics import fidelity_metrics


def fidelity_check(reference: Artifact, candidate: Artifact, *, min_cosine: float, name: str = "fidelity",
                   runtime: str | None = None, data: Any = None, limit: int = 64) -> Check:
    """Run both on real data (first ``limit`` examples) or else the verification cases; raise ``VerificationError`` if the mean cosine falls below ``min_cosine``.

    Example:
        >>> # check = fidelity_check(fp32_art, int8_art, min_cosine=0.99)
    """
    from slimforge.convert.verify import verification_cases
    from slimforge.runtimes import open_session

    ref_sess = open_session(reference, runtime)
    cand_sess = open_session(candidate, runtime)
    try:
        refs: list[np.ndarray] = []
        cands: list[np.ndarray] = []
        cases = ([b.feeds for b in data.batches(16, limit=limit)] if data is not None
                 else [f for _, f in verification_cases(reference)])
        for feeds in cases:
            refs.extend(ref_sess.run(feeds))
            cands.extend(cand_sess.run(feeds))
    finally:
        ref_sess.close()
        cand_sess.close()
    metrics = fidelity_metrics(refs, cands)
    passed = metrics["cosine"] >= min_cosine
    source = f"{data.name} ({limit} examples)" if data is not None else "synthetic inputs"
    check = Check(name, passed, {**metrics, "min_cosine_required": min_cosine},
                  f"on {source}: cosine {metrics['cosine']:.5f} vs required {min_cosine}, SQNR {metrics['sqnr_db']:.1f} dB")
    if not passed:
        raise VerificationError(f"{name} failed on {candidate.name}: {check.detail}")
    return check
