"""Serving optimized models: ``slimforge serve`` (REST + KServe v2 + web page) and ``slimforge loadtest``."""

from __future__ import annotations

from typing import Callable

from slimforge.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app", "serve"]


def serve(cfg: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning", announce: Callable[[], None] | None = None) -> None:
    """Run the server (blocking). With several workers each process loads the model once and batches on its own.
    The models are loaded here first, so a model that cannot be served fails as a ``SlimforgeError`` (one line and
    exit 2 from the CLI), never as a traceback from the server's start-up; ``announce`` runs once they are loaded."""
    import os

    import uvicorn

    from slimforge.serve.app import CONFIG_ENV, load_models

    models = load_models(cfg)
    if announce is not None:
        announce()
    if workers > 1:
        del models  # each worker loads its own
        os.environ[CONFIG_ENV] = cfg.to_json()
        uvicorn.run("slimforge.serve.app:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level)
    else:
        uvicorn.run(create_app(cfg, preloaded=models), host=host, port=port, log_level=log_level)
