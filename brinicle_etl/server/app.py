"""The HTTP server: brinicle's API over a store, plus search with rows and filters.

``create_app(store)`` builds the FastAPI app; ``brinicle-etl serve`` runs it on uvicorn.
Routes parse the request, call the library and turn :class:`BrinicleError` into a status
code here, at one boundary; responses and errors follow brinicle's wire formats.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from brinicle_etl.embed import ModelRegistry
from brinicle_etl.errors import (
    AlreadyExistsError,
    BrinicleError,
    ConfigError,
    ConflictError,
    CorruptCollectionError,
    InputError,
    LockedError,
    MissingExtraError,
    NotFoundError,
    QuotaExceededError,
    StateError,
)
from brinicle_etl.server.fastpath import SearchFastPath
from brinicle_etl.store import Collection, Store
from brinicle_etl.tasks import TaskStore, TaskWorker

__all__ = ["ServerSettings", "ServerState", "create_app"]

# brinicle's rule for index names, applied to each part of "db" or "db/namespace".
_NAME_PART = re.compile(r"[A-Za-z0-9_]{1,64}")
NAME_RULE = "index_name can contain A-Z|a-z|0-9 and underline(_) and should be <= 64 long (or db/namespace of those)"


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """``api_keys``: when set, every request needs ``X-API-Key`` with one of them."""

    store: Path
    api_keys: tuple[str, ...] = ()
    quotas: dict[str, int] = field(default_factory=dict)
    max_upload_bytes: int = 512 * 2**20
    max_search_batch: int = 8192
    feed_bytes: int = 4 * 2**20
    task_batch_size: int = 512

    @classmethod
    def from_env(cls) -> ServerSettings:
        """Settings from ``BRINICLE_STORE``, ``BRINICLE_API_KEYS`` (comma-separated),
        ``BRINICLE_QUOTAS`` (``key=MB,...``), ``BRINICLE_MAX_UPLOAD_MB`` and ``BRINICLE_TASK_BATCH``
        (items per upsertion-task batch)."""
        keys = tuple(k.strip() for k in os.environ.get("BRINICLE_API_KEYS", "").split(",") if k.strip())
        quotas = {}
        for entry in os.environ.get("BRINICLE_QUOTAS", "").split(","):
            if "=" in entry:
                key, megabytes = entry.rsplit("=", 1)
                quotas[key.strip()] = int(float(megabytes) * 2**20)
        upload = int(float(os.environ.get("BRINICLE_MAX_UPLOAD_MB", "512")) * 2**20)
        store = Path(os.environ.get("BRINICLE_STORE") or "brinicle_store")
        batch = int(os.environ.get("BRINICLE_TASK_BATCH", "512"))
        return cls(store=store, api_keys=keys, quotas=quotas, max_upload_bytes=upload, task_batch_size=batch)


def canonical(index_name: object) -> str:
    """brinicle's index name (or db/namespace) -> the collection it addresses; 400 if invalid."""
    if not isinstance(index_name, str):
        raise HTTPException(status_code=400, detail=NAME_RULE)
    parts = index_name.split("/")
    if len(parts) > 2 or not all(_NAME_PART.fullmatch(p) for p in parts):
        raise HTTPException(status_code=400, detail=NAME_RULE)
    return index_name if len(parts) == 2 else f"{index_name}/default"


def display(name: str) -> str:
    """The collection's index name over HTTP: ``foo`` for ``foo/default``."""
    return name[: -len("/default")] if name.endswith("/default") else name


@dataclass
class ServerState:
    """What the routes share: the store, the model registry, the task worker.

    Every collection in the store is served unless it was unloaded here: collections made
    by the task worker, the CLI or a pipeline appear without a restart.
    """

    settings: ServerSettings
    store: Store
    registry: ModelRegistry
    tasks: TaskStore
    worker: TaskWorker
    unloaded: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_all(self) -> None:
        for name in self.store.names():
            self.store.open(name)

    def collection(self, index_name: object) -> Collection:
        """A served collection, or 404 as brinicle answers."""
        name = canonical(index_name)
        with self.lock:
            hidden = name in self.unloaded
        if hidden:
            raise HTTPException(status_code=404, detail=f"Index '{index_name}' not found")
        try:
            return self.store.open(name)
        except NotFoundError:
            raise HTTPException(status_code=404, detail=f"Index '{index_name}' not found") from None

    def load(self, name: str) -> None:
        with self.lock:
            self.unloaded.discard(name)

    def unload(self, name: str) -> None:
        with self.lock:
            self.unloaded.add(name)

    def names(self) -> list[str]:
        with self.lock:
            hidden = set(self.unloaded)
        return sorted(display(n) for n in self.store.names() if n not in hidden)


_STATUS: list[tuple[type[BrinicleError], int]] = [
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (ConflictError, 409),
    (LockedError, 409),
    (InputError, 400),
    (ConfigError, 400),
    (StateError, 400),
    (QuotaExceededError, 403),
    (MissingExtraError, 503),
    (CorruptCollectionError, 500),
]


def status_of(exc: BrinicleError) -> int:
    return next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)


def json_response(data: Any, status_code: int = 200) -> Response:
    return Response(content=orjson.dumps(data), status_code=status_code, media_type="application/json")


def create_app(
    store: Store | str | Path | None = None,
    *,
    api_keys: Sequence[str] = (),
    settings: ServerSettings | None = None,
) -> FastAPI:
    """The app over ``store`` (default ``$BRINICLE_STORE`` or ``./brinicle_store``)."""
    if settings is None:
        root = store.root if isinstance(store, Store) else Path(store) if store is not None else None
        base = ServerSettings.from_env()
        settings = ServerSettings(
            store=root or base.store,
            api_keys=tuple(api_keys) or base.api_keys,
            quotas=base.quotas,
            max_upload_bytes=base.max_upload_bytes,
            task_batch_size=base.task_batch_size,
        )
    st = store if isinstance(store, Store) else Store(settings.store)
    tasks = TaskStore(st)
    state = ServerState(
        settings=settings,
        store=st,
        registry=ModelRegistry(st.config_dir / "models.json"),
        tasks=tasks,
        worker=TaskWorker(tasks, batch_size=settings.task_batch_size),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.open_all()
        # One process per store runs tasks; with several workers the others only accept them.
        state.worker.start()
        yield
        state.worker.stop()

    app = FastAPI(
        title="brinicle-etl",
        description="brinicle's HTTP API over brinicle-etl collections, plus search with rows and filters.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.brinicle = state

    @app.exception_handler(BrinicleError)
    async def library_error(request: Request, exc: BrinicleError) -> JSONResponse:
        return JSONResponse(status_code=status_of(exc), content={"detail": str(exc)})

    if settings.api_keys:
        keys = [k.encode() for k in settings.api_keys]

        @app.middleware("http")
        async def require_key(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            given = request.headers.get("x-api-key", "").encode()
            # compare with every key, whatever matches, so timing tells nothing
            ok = False
            for key in keys:
                ok |= hmac.compare_digest(given, key)
            if not ok:
                return JSONResponse(status_code=401, content={"detail": "missing or invalid API key"})
            return await call_next(request)

    def lookup(index_name: str) -> Collection | None:
        try:
            return state.collection(index_name)
        except HTTPException:
            return None

    # Outermost, so the fast path skips routing; it hands everything it cannot answer inward.
    app.add_middleware(SearchFastPath, lookup=lookup, api_keys=settings.api_keys)

    from brinicle_etl.server.brinicle_api import router as brinicle_router
    from brinicle_etl.server.ingest_api import router as ingest_router
    from brinicle_etl.server.search_api import router as search_router
    from brinicle_etl.server.tasks_api import router as tasks_router

    app.include_router(brinicle_router)
    app.include_router(search_router)
    app.include_router(ingest_router)
    app.include_router(tasks_router)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    return create_app(settings=ServerSettings.from_env())


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.brinicle
    return state


def _version() -> str:
    from brinicle_etl import __version__

    return __version__
