"""The technique registry: one handler per (config type, format), looked up in a table."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from slimforge.core.artifact import Artifact, Format
from slimforge.core.config import Config, _ensure_loaded
from slimforge.core.context import RunContext
from slimforge.errors import UnsupportedModelError

log = logging.getLogger(__name__)

HandlerFn = Callable[[Artifact, Config, RunContext], Artifact]


@dataclass(frozen=True)
class Handler:
    config_type: type[Config]
    fmt: Format
    fn: HandlerFn
    needs_data: bool = False


_HANDLERS: dict[tuple[type[Config], Format], Handler] = {}


def implements(config_type: type[Config], *, fmt: Format | tuple[Format, ...], needs_data: bool = False):
    """Register ``fn`` as the handler of ``config_type`` on artifacts of format ``fmt``.

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
            _HANDLERS[key] = Handler(config_type, f, fn, needs_data)
        return fn

    return deco


def handlers() -> list[Handler]:
    _ensure_loaded()
    return list(_HANDLERS.values())


def lookup(cfg: Config, fmt: Format) -> Handler:
    _ensure_loaded()
    handler = _HANDLERS.get((type(cfg), fmt))
    if handler is None:
        fmts = sorted(f.value for (c, f) in _HANDLERS if c is type(cfg))
        raise UnsupportedModelError(
            f"'{cfg.kind}' cannot be applied to a {fmt.value} model; it supports: {', '.join(fmts) or 'nothing yet'}"
        )
    return handler


def apply(art: Artifact, cfg: Config, ctx: RunContext) -> Artifact:
    """Run one step: dispatch on (config type, artifact format). The handler returns a new, self-checked artifact."""
    handler = lookup(cfg, art.format)
    log.info("applying %s to %s (%s)", cfg.kind, art.name, art.format.value)
    return handler.fn(art, cfg, ctx)
