"""The ``slimforge`` command line: thin over the Python API."""

from slimforge.cli.app import app, main

__all__ = ["app", "main"]
