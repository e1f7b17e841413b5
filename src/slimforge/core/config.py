"""Typed, frozen, versioned technique configs that round-trip through plain dicts (and so YAML/JSON)."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any, ClassVar

from slimforge.errors import ConfigError

_CONFIG_TYPES: dict[str, type[Config]] = {}


class Config:
    """Base class of every technique config.

    Subclasses are ``@dataclass(frozen=True, kw_only=True, slots=True)`` and set a unique ``kind``; they validate in
    ``__post_init__`` by raising ``ConfigError``.

    Example:
        >>> from slimforge.convert.onnx import ExportConfig
        >>> cfg = ExportConfig(opset=17)
        >>> Config.from_dict(cfg.to_dict()) == cfg
        True
    """

    __slots__ = ()
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        kind = cls.__dict__.get("kind")
        if kind:
            other = _CONFIG_TYPES.get(kind)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"config kind {kind!r} registered twice ({other.__qualname__}, {cls.__qualname__})")
            _CONFIG_TYPES[kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """Serialise to a plain dict with a ``type`` tag; enums become their values, tuples become lists."""
        out: dict[str, Any] = {"type": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Config:
        """Rebuild a config from ``to_dict`` output (or hand-written YAML)."""
        if not isinstance(data, dict) or "type" not in data:
            raise ConfigError(f"a step must be a mapping with a 'type' key, got {data!r}")
        load_plugins()
        cls = _CONFIG_TYPES.get(str(data["type"]))
        if cls is None:
            raise ConfigError(f"unknown step type {data['type']!r}; known: {', '.join(sorted(_CONFIG_TYPES))}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names - {"type"}
        if unknown:
            raise ConfigError(f"{data['type']}: unknown setting(s) {sorted(unknown)}; allowed: {sorted(names)}")
        kwargs = {k: _coerce(hints.get(k), v, f"{data['type']}.{k}") for k, v in data.items() if k != "type"}
        return cls(**kwargs)


def coerce_fields(cfg: Config) -> None:
    """Turn strings into the enums and lists into the tuples a config's type hints ask for (call first thing in
    ``__post_init__``), raising ``ConfigError`` for values that do not fit."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        coerced = _coerce(hints.get(f.name), value, f"{cfg.kind}.{f.name}")
        if coerced is not value:
            object.__setattr__(cfg, f.name, coerced)


def check_unit(name: str, value: float | None, *, allow_none: bool = False) -> None:
    """Refuse a fraction outside [0, 1] (a cosine or an agreement threshold) with one clear ``ConfigError``.

    Example:
        >>> check_unit("min_cosine", 0.99)
    """
    if value is None and allow_none:
        return
    if value is None or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1]{' or None' if allow_none else ''}, got {value}")


def config_types() -> dict[str, type[Config]]:
    """All registered config kinds (after importing the built-in techniques)."""
    load_plugins()
    return dict(_CONFIG_TYPES)


def load_plugins() -> None:
    """Import every package registered under the ``slimforge.techniques`` entry point group (the built-in
    techniques are one: see pyproject.toml); importing a technique registers its configs and handlers."""
    global _LOADED
    if _LOADED:
        return
    from importlib.metadata import entry_points

    found = list(entry_points(group="slimforge.techniques"))
    if not found:
        raise ConfigError("no techniques are registered: slimforge's package metadata is missing (install it with "
                          "`pip install -e .` or `pip install slimforge`)")
    for ep in found:
        ep.load()  # an import error names the plugin; the next call tries again
    _LOADED = True


_LOADED = False


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except (ConfigError, ValueError, TypeError):
                continue
        raise ConfigError(f"{where}: cannot interpret {value!r} as {hint}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in hint)
            raise ConfigError(f"{where}: {value!r} is not one of: {allowed}") from None
    return _scalar(hint, value, where)


def _scalar(hint: Any, value: Any, where: str) -> Any:
    """Type-check bool, int, float and str settings (a YAML ``per_channel: maybe`` is an error, not True)."""
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value) if isinstance(value, int) else value
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def with_fields(config: Any, fields: dict[str, Any], *, what: str = "") -> Any:
    """``config`` (a frozen dataclass, or its class for the defaults) with ``fields`` replaced: the keyword shortcuts
    of the public API are the config's own fields, checked by name (lists become tuples).

    Example:
        >>> from slimforge.convert.onnx import ExportConfig
        >>> with_fields(ExportConfig, {"opset": 18}).opset
        18
    """
    base = config() if isinstance(config, type) else config
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ConfigError(f"{what or type(base).__name__}: unknown setting(s) {unknown}; allowed: {sorted(names)}")
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return dataclasses.replace(base, **clean) if clean else base
