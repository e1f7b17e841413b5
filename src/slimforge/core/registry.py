"""The technique registry: one handler per (config type, format), looked up in a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config, load_plugins
from slimforge.core.context import RunContext
from slimforge.errors import UnsupportedModelError

log = logging.getLogger(__name__)

HandlerFn = Callable[[Artifact, Config, RunContext], Artifact]


@dataclass(frozen=True)
class Handler:
    config_type: type[Config]
    fmt: Format
    fn: HandlerFn
    produces: Format | None = None  # the format of the result, when it differs from the input's


_HANDLERS: dict[tuple[type[Config], Format], Handler] = {}


def implements(config_type: type[Config], *, fmt: Format | tuple[Format, ...], produces: Format | None = None):
    """Register ``fn`` as the handler of ``config_type`` on artifacts of format ``fmt``; ``produces`` names the
    result's format when the step converts (so that a recipe can be checked before any work).

    Example:
        >>> from slimforge.core.registry import handlers
        >>> from slimforge.convert.onnx import ExportConfig
        >>> any(h.config_type is ExportConfig for h in handlers())
        True
    """
    fmts = fmt if isinstance(fmt, tuple) else (fmt,)

    def deco(fn: HandlerFn) -> HandlerFn:
        for f in fmts:
            key = (config_type, f)
            if key in _HANDLERS and _HANDLERS[key].fn.__qualname__ != fn.__qualname__:
                raise TypeError(f"{config_type.__name__} on {f.value} registered twice")
            _HANDLERS[key] = Handler(config_type, f, fn, produces)
        return fn

    return deco


def handlers() -> list[Handler]:
    load_plugins()
    return list(_HANDLERS.values())


def lookup(cfg: Config, fmt: Format) -> Handler:
    load_plugins()
    handler = _HANDLERS.get((type(cfg), fmt))
    if handler is None:
        fmts = sorted(f.value for (c, f) in _HANDLERS if c is type(cfg))
        raise UnsupportedModelError(
            f"'{cfg.kind}' cannot be applied to a {fmt.value} model; it supports: {', '.join(fmts) or 'nothing yet'}"
        )
    return handler


def check_steps(fmt: Format, steps: tuple[Config, ...] | list[Config]) -> Format:
    """The format after ``steps`` applied to a model of format ``fmt``; raises, naming the step, when one has no
    handler for the format it would receive. Runs no step.

    Example:
        >>> from slimforge.convert.onnx import ExportConfig
        >>> check_steps(Format.TORCH, [ExportConfig()]).value
        'onnx'
    """
    for i, cfg in enumerate(steps, 1):
        try:
            handler = lookup(cfg, fmt)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"step {i} ({cfg.kind}): {exc}") from None
        fmt = handler.produces or fmt
    return fmt


def apply(art: Artifact, cfg: Config, ctx: RunContext) -> Artifact:
    """Run one step: dispatch on (config type, artifact format). The handler returns a new, self-checked artifact."""
    handler = lookup(cfg, art.format)
    log.info("applying %s to %s (%s)", cfg.kind, art.name, art.format.value)
    return handler.fn(art, cfg, ctx)
