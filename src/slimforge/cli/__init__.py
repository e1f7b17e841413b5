"""The ``slimforge`` command line: thin over the Python API."""

from slimforge.cli import compress_cmds as _compress_cmds  # noqa: F401  (registers prune, distill, ...)
from slimforge.cli.app import app, main

__all__ = ["app", "main"]
