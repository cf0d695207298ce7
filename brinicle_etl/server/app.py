"""The HTTP server: brinicle's API over a store, plus search with rows and filters.

``create_app(store)`` builds the FastAPI app; ``brinicle-etl serve`` runs it on uvicorn.
Routes parse the request and call the library; :mod:`deps` turns a :class:`BrinicleError`
into a status code at one boundary; responses and errors follow brinicle's wire formats.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from brinicle_etl.compat.tasks import TaskStore, TaskWorker
from brinicle_etl.errors import BrinicleError
from brinicle_etl.server import brinicle_api, ingest_api, search_api, tasks_api
from brinicle_etl.server.auth import ApiKeyGuard
from brinicle_etl.server.deps import API_DESCRIPTION, ServerSettings, ServerState, error_response
from brinicle_etl.server.docs import add_offline_docs
from brinicle_etl.server.fastpath import SearchFastPath
from brinicle_etl.server.upload import BodyLimit
from brinicle_etl.server.writers import WriterGate
from brinicle_etl.store import AnyCollection, Store

__all__ = ["ServerSettings", "ServerState", "app_from_env", "create_app"]


def create_app(
    store: Store | str | Path | None = None,
    *,
    api_keys: Sequence[str] = (),
    settings: ServerSettings | None = None,
) -> FastAPI:
    """The app over ``store`` (default ``$BRINICLE_STORE`` or ``./brinicle_store``)."""
    if settings is None:
        location = store.location if isinstance(store, Store) else os.fspath(store) if store is not None else None
        settings = ServerSettings.from_env(store=location, api_keys=tuple(api_keys))
    st = store if isinstance(store, Store) else Store(settings.store)
    tasks = TaskStore(st)
    state = ServerState(
        settings=settings,
        store=st,
        registry=st.models,
        tasks=tasks,
        worker=TaskWorker(tasks, batch_size=settings.task_batch_size),
        writers=WriterGate(max_waiting=settings.max_waiting_writers, timeout=settings.writer_timeout),
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
        description=API_DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
        docs_url=None,  # served below from the installed package, not from a CDN
        redoc_url=None,
    )
    app.state.brinicle = state
    add_offline_docs(app)

    @app.exception_handler(BrinicleError)
    async def library_error(request: Request, exc: BrinicleError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left during its upload: whatever it sent was dropped, and nobody reads this.
        return Response(status_code=400)

    def lookup(index_name: str) -> AnyCollection | None:
        try:
            return state.collection(index_name)
        except HTTPException:
            return None

    streamed = frozenset({"/ingest/batch", "/build_ingest_data/"})
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, streamed=streamed)
    # Outside the routing, so the fast path skips it; it hands everything it cannot answer inward.
    app.add_middleware(SearchFastPath, lookup=lookup)
    if settings.api_keys:  # outermost: nothing runs for a request without a valid key
        app.add_middleware(ApiKeyGuard, keys=settings.api_keys)

    for module in (brinicle_api, search_api, ingest_api, tasks_api):
        app.include_router(module.router)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` and multi-worker serving: settings from the environment."""
    return create_app(settings=ServerSettings.from_env())


def _version() -> str:
    from brinicle_etl import __version__

    return __version__
