"""The architecture search's sub-network as a recipe step (``subnet_search``): the most accurate sub-network of the
model itself (``slimforge nas --space subnet``: a transformer encoder's layers, heads and FFN widths, or a CNN's
channels per stage) whose latency, measured here, is at most ``latency_share`` of the model's at ``batch``.

Only the config is defined here; its handler belongs to ``slimforge.nas`` (the search sits above the techniques) and
is registered through the ``slimforge.techniques`` entry point group like any plugin.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimforge.core.config import Config, coerce_fields
from slimforge.errors import ConfigError


@dataclass(frozen=True, kw_only=True, slots=True)
class SubnetSearchConfig(Config):
    """A searched sub-network under a measured latency budget.

    Example:
        >>> SubnetSearchConfig(latency_share=0.5).describe()
        'subnet_search(latency_share=0.5, batch=32, trials=20)'
    """

    kind = "subnet_search"
    latency_share: float = 0.5
    batch: int = 32
    trials: int = 20
    threads: int | None = 1
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0.0 < self.latency_share < 1.0:
            raise ConfigError(f"latency_share must be in (0, 1), got {self.latency_share}")
        if self.batch < 1 or self.trials < 1:
            raise ConfigError("batch and trials must be >= 1")

    def describe(self) -> str:
        return f"subnet_search(latency_share={self.latency_share}, batch={self.batch}, trials={self.trials})"
