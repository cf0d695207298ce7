"""The HTTP server (brinicle's API plus search with rows). Needs the ``server`` extra."""

try:
    import fastapi  # noqa: F401
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from brinicle_etl.errors import MissingExtraError

    raise MissingExtraError("the HTTP server needs FastAPI and uvicorn: pip install 'brinicle-etl[server]'") from exc

from brinicle_etl.server.app import ServerSettings, app_from_env, create_app

__all__ = ["ServerSettings", "app_from_env", "create_app", "serve"]


def serve(
    settings: ServerSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 1984,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = False,
    shutdown_seconds: int = 10,
) -> None:
    """Run the server on uvicorn until interrupted (``settings``: default from the environment).

    ``access_log`` is off by default: a line per request costs about a tenth of the QPS of
    small binary searches. On SIGTERM, requests still running after ``shutdown_seconds`` are
    cut off (what they wrote is rolled back or, if acknowledged, kept), so a stuck client
    cannot keep the server from stopping."""
    import os

    # Every worker process builds its app from the environment (uvicorn's factory).
    os.environ.update((settings or ServerSettings.from_env()).to_env())
    uvicorn.run(
        "brinicle_etl.server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=shutdown_seconds,
    )
