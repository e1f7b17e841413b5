"""The handler of ``subnet_search`` steps (``techniques.prune.subnet_config``): the subnet search run on the step's
calibration data, its chosen sub-network handed on with the search's figures as the step's check. Registered through
the ``slimforge.techniques`` entry point group (``nas`` in pyproject.toml)."""

from __future__ import annotations

from slimforge.core.artifact import Artifact, Check, Format, Step
from slimforge.core.context import RunContext
from slimforge.core.registry import implements
from slimforge.errors import ConfigError, TechniqueFailed
from slimforge.techniques.prune.subnet_config import SubnetSearchConfig


@implements(SubnetSearchConfig, fmt=Format.TORCH)
def _subnet_search(art: Artifact, cfg: SubnetSearchConfig, ctx: RunContext) -> Artifact:
    from slimforge.nas.subnet_run import run_subnet

    if ctx.calibration_data is None:
        raise ConfigError("a subnet_search step scores sub-networks on data: give --data")
    res = run_subnet(art, ctx.calibration_data, max_latency_ms=f"{100 * cfg.latency_share:g}%", batch=cfg.batch,
                     max_size_mb=None, max_params=None, min_cosine=None, trials=cfg.trials, time_budget_s=None,
                     threads=cfg.threads, seed=cfg.seed, distill_epochs=0, progress=None)
    chosen = res.outcome.chosen
    if chosen is None or res.artifact is None:
        raise TechniqueFailed(f"no sub-network of {art.name} measured under {cfg.latency_share:.0%} of its latency "
                              f"at batch {cfg.batch}: " + "; ".join(res.outcome.notes))
    before = sum(p.numel() for p in art.handle.parameters())
    after = sum(p.numel() for p in res.artifact.handle.parameters())
    base = res.outcome.baseline
    metrics = {"parameters_before": float(before), "parameters_after": float(after),
               "latency_ms_before": float(base.get("latency_ms") or 0.0), "latency_ms_after": float(chosen.measured_ms),
               f"test_{res.outcome.metric}": float(chosen.test_accuracy or 0.0)}
    child = art.derive(Step("subnet_search", cfg.to_dict()), handle=res.artifact.handle, path=None,
                       meta={"parameters_after": after, "subnet": chosen.arch.to_dict()})
    return child.with_check(Check("subnet_search", True, metrics,
                                  f"{chosen.arch.describe()}: {chosen.measured_ms:.3g} ms measured against "
                                  f"{metrics['latency_ms_before']:.3g} ms at batch {cfg.batch}; held-out "
                                  f"{res.outcome.metric} {chosen.test_accuracy:.4f} before training"))
