"""What a search hands back (``NasResult``) and how a latency budget is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimforge.errors import ConfigError
from slimforge.nas.search import Constraints, SearchOutcome


@dataclass
class NasResult:
    outcome: SearchOutcome
    constraints: Constraints
    artifact: Any = None  # the chosen model, saved and loaded back (None: nothing met the constraints)
    budget_basis_ms: float | None = None  # the baseline's latency a "50%" budget was taken of (timed beforehand)
    paths: dict[str, Path] = field(default_factory=dict)
    space: str = "mobilenet_v3"
    distilled: dict[str, Any] | None = None  # the chosen sub-network after distillation: held-out cosine, curve

    def to_dict(self) -> dict[str, Any]:
        o = self.outcome
        chosen = o.chosen.to_dict() if o.chosen else None
        base = o.baseline
        return {"space": self.space, "metric": o.metric, "distilled": self.distilled,
                "constraints": self.constraints.__dict__,
                "seconds": round(o.seconds, 1),
                "budget_basis_ms": self.budget_basis_ms,
                "trials": [t.to_dict() for t in o.trials], "front": [t.number for t in o.front],
                "finalists": [t.to_dict() for t in o.trials if t.measured_ms is not None],
                "chosen": chosen, "baseline": base, "predictor": o.predictor, "latency_table": o.table,
                "accuracy_drop_points": None if not chosen or base.get("test_accuracy") is None else
                round(100 * (base["test_accuracy"] - chosen["test_accuracy"]), 2), "notes": o.notes}


def budget_ms(value: float | str | None, baseline_ms: float | None) -> float | None:
    """``--max-latency-ms``: milliseconds, or a share of the baseline's measured latency (``"50%"``).

    Example:
        >>> budget_ms("50%", 4.0), budget_ms(2.5, None), budget_ms(None, 3.0)
        (2.0, 2.5, None)
    """
    if value is None:
        return None
    text = str(value).strip()
    if text.endswith("%"):
        if baseline_ms is None:
            raise ConfigError(f"--max-latency-ms {text} is a share of the baseline's latency, which needs a PyTorch "
                              "model to time; give the budget in milliseconds instead (e.g. 2.5)")
        return float(text[:-1]) / 100.0 * baseline_ms
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--max-latency-ms takes milliseconds (2.5) or a share of the baseline (50%), "
                          f"got {value!r}") from None
