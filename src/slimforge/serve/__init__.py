"""Serving optimized models: ``slimforge serve`` (REST + KServe v2 + web page) and ``slimforge loadtest``."""

from __future__ import annotations

from slimforge.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app", "serve"]


def serve(cfg: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "warning") -> None:
    """Run the server (blocking). With several workers each process loads the model once and batches on its own."""
    import os

    import uvicorn

    from slimforge.serve.app import CONFIG_ENV

    if workers > 1:
        os.environ[CONFIG_ENV] = cfg.to_json()
        uvicorn.run("slimforge.serve.app:create_app", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level)
    else:
        uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level)
