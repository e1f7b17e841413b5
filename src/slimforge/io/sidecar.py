"""The sidecar that travels with a saved model file: format, metadata (preprocessing), lineage, checks, IO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimforge.core.artifact import Artifact
from slimforge.core.outputs import atomic_path
from slimforge.core.outputs import SIDECAR_SUFFIX


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_sidecar(art: Artifact, path: Path) -> None:
    doc = {"format": art.format.value, "meta": dict(art.meta), "lineage": [s.to_dict() for s in art.lineage],
           "checks": [c.to_dict() for c in art.checks], "io": art.io.to_dict()}
    with atomic_path(sidecar_path(path)) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
