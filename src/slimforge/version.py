"""The package version (read by the report and the server without importing the whole package)."""

__version__ = "0.1.0"
