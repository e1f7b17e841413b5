"""The ``slimforge`` command line: thin over the Python API."""

from slimforge.cli import cache_cmds as _cache_cmds  # noqa: F401  (registers cache list, cache clear)
from slimforge.cli import compress_cmds as _compress_cmds  # noqa: F401  (registers prune, distill, ...)
from slimforge.cli import optimize_cmds as _optimize_cmds  # noqa: F401  (registers optimize, run)
from slimforge.cli import profile_cmds as _profile_cmds  # noqa: F401  (registers profile)
from slimforge.cli import nas_cmds as _nas_cmds  # noqa: F401  (registers nas)
from slimforge.cli import serve_cmds as _serve_cmds  # noqa: F401  (registers serve, loadtest)
from slimforge.cli.app import app, main

__all__ = ["app", "main"]
