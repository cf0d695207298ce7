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
    store: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 1984,
    api_keys: tuple[str, ...] = (),
    quotas: dict[str, float] | None = None,
    max_upload_mb: float | None = None,
    workers: int = 1,
    log_level: str = "info",
    access_log: bool = False,
    writer_timeout: float | None = None,
    max_waiting_writers: int | None = None,
    upload_idle_seconds: float | None = None,
    shutdown_seconds: int = 10,
) -> None:
    """Run the server on uvicorn until interrupted. ``quotas``: API key -> MB of storage.

    ``access_log`` is off by default: a line per request costs about a tenth of the QPS of
    small binary searches. ``writer_timeout``, ``max_waiting_writers`` and
    ``upload_idle_seconds``: see :class:`ServerSettings`. On SIGTERM, requests still running
    after ``shutdown_seconds`` are cut off (what they wrote is rolled back or, if acknowledged,
    kept), so a stuck client cannot keep the server from stopping."""
    import os

    if store is not None:
        os.environ["BRINICLE_STORE"] = store
    if api_keys:
        os.environ["BRINICLE_API_KEYS"] = ",".join(api_keys)
    if quotas:
        os.environ["BRINICLE_QUOTAS"] = ",".join(f"{k}={v}" for k, v in quotas.items())
    if max_upload_mb is not None:
        os.environ["BRINICLE_MAX_UPLOAD_MB"] = str(max_upload_mb)
    for variable, value in (
        ("BRINICLE_WRITER_TIMEOUT", writer_timeout),
        ("BRINICLE_MAX_WAITING_WRITERS", max_waiting_writers),
        ("BRINICLE_UPLOAD_IDLE_SECONDS", upload_idle_seconds),
    ):
        if value is not None:
            os.environ[variable] = str(value)
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
