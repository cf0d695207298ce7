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
) -> None:
    """Run the server on uvicorn until interrupted. ``quotas``: API key -> MB of storage.

    ``access_log`` is off by default: a line per request costs about a tenth of the QPS of
    small binary searches."""
    import os

    if store is not None:
        os.environ["BRINICLE_STORE"] = store
    if api_keys:
        os.environ["BRINICLE_API_KEYS"] = ",".join(api_keys)
    if quotas:
        os.environ["BRINICLE_QUOTAS"] = ",".join(f"{k}={v}" for k, v in quotas.items())
    if max_upload_mb is not None:
        os.environ["BRINICLE_MAX_UPLOAD_MB"] = str(max_upload_mb)
    uvicorn.run(
        "brinicle_etl.server.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
    )
