"""What a foreign model expects of an image, set by the user: ``--preprocess`` as ``key=value`` pairs or a small
YAML file. Keys: ``layout`` (NCHW | NHWC), ``order`` (RGB | BGR), ``scale`` (a number or ``1/255``), ``mean`` and
``std`` (one value or one per channel, applied after ``scale``), ``size`` (HxW), ``resize`` (the shorter side, then
a centre crop to ``size``; default: a plain resize to ``size``).

Example:
    >>> parse_preprocess("layout=NHWC order=BGR scale=1/255 mean=0.5 std=0.5")["mean"]
    [0.5]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from slimforge.errors import ConfigError

KEYS = ("layout", "order", "scale", "mean", "std", "size", "resize")


def _number(text: str, key: str) -> float:
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            return float(a) / float(b)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--preprocess {key}: cannot read {text!r} as a number (e.g. 0.5 or 1/255)") from None


def parse_preprocess(spec: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The preprocessing a user asked for, checked: from ``"k=v k=v"``, a YAML file, or a mapping."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        raw = dict(spec)
    elif str(spec).endswith((".yaml", ".yml")) or Path(str(spec)).is_file():
        import yaml

        path = Path(str(spec))
        if not path.is_file():
            raise ConfigError(f"--preprocess {path}: no such file")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"--preprocess {path}: expected a mapping of {', '.join(KEYS)}")
    else:
        raw = {}
        for part in str(spec).replace(";", " ").split():
            key, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"--preprocess: {part!r} is not key=value (keys: {', '.join(KEYS)})")
            raw[key.strip().lower()] = value.strip()
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"--preprocess: unknown key(s) {unknown}; keys are {', '.join(KEYS)}")
    out: dict[str, Any] = {}
    if "layout" in raw:
        out["layout"] = str(raw["layout"]).upper()
        if out["layout"] not in ("NCHW", "NHWC"):
            raise ConfigError(f"--preprocess layout must be NCHW or NHWC, got {raw['layout']!r}")
    if "order" in raw:
        out["order"] = str(raw["order"]).upper()
        if out["order"] not in ("RGB", "BGR"):
            raise ConfigError(f"--preprocess order must be RGB or BGR, got {raw['order']!r}")
    if "scale" in raw:
        out["rescale"] = _number(str(raw["scale"]), "scale")
    for key in ("mean", "std"):
        if key in raw:
            values = raw[key] if isinstance(raw[key], list) else str(raw[key]).split(",")
            out[key] = [_number(str(v), key) for v in values]
            if key == "std" and any(v == 0 for v in out[key]):
                raise ConfigError("--preprocess std must not be 0")
    if "size" in raw:
        dims = str(raw["size"]).lower().split("x")
        try:
            h, w = (int(dims[0]), int(dims[-1]))
        except ValueError:
            raise ConfigError(f"--preprocess size must be HxW, got {raw['size']!r}") from None
        out["size"] = (h, w)
    if "resize" in raw:
        out["resize"] = int(_number(str(raw["resize"]), "resize"))
    return out


def describe(pre: Mapping[str, Any]) -> str:
    """One line for reports: what the images went through."""
    h, w = pre.get("size") or (pre.get("crop"), pre.get("crop"))
    parts = [f"{pre.get('order', 'RGB')} {pre.get('layout', 'NCHW')} {h}x{w}"]
    if pre.get("resize_then_crop"):
        parts.append(f"shorter side {pre['resize']} then centre crop")
    parts.append(f"x {pre.get('rescale', 1 / 255):.6g}")
    parts.append(f"mean {list(pre.get('mean', [0.0]))} std {list(pre.get('std', [1.0]))}")
    return ", ".join(parts) + (f" ({pre['source']})" if pre.get("source") else "")
