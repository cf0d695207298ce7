"""What every route shares: settings, the server's state, index names, and the one error boundary.

Routes raise library errors (or ``HTTPException`` for what only HTTP knows: a stalled or
oversized upload); :func:`error_response` is the one place a :class:`BrinicleError` becomes a
status code, and :func:`responses` documents those codes in the OpenAPI spec.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pydantic.config import JsonDict

from brinicle_etl.compat.tasks import TaskStore, TaskWorker
from brinicle_etl.embed import ModelRegistry
from brinicle_etl.errors import (
    AlreadyExistsError,
    BrinicleError,
    BusyError,
    ConfigError,
    ConflictError,
    CorruptCollectionError,
    DiskFullError,
    InputError,
    LockedError,
    MissingExtraError,
    NotFoundError,
    ObjectStoreError,
    QuotaExceededError,
    StateError,
    TaskStateError,
    UnknownModelError,
)
from brinicle_etl.server.writers import WriterGate
from brinicle_etl.store import AnyCollection, Store, default_store_location
from brinicle_etl.types import INDEX_NAME_PATTERN, INDEX_NAME_RULE, index_collection

__all__ = [
    "API_DESCRIPTION",
    "BINARY_BODY",
    "INDEX_NAME",
    "ErrorBody",
    "ServerSettings",
    "ServerState",
    "canonical",
    "display",
    "error_response",
    "json_body",
    "json_response",
    "responses",
    "state_of",
    "status_of",
]

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """``api_keys``: when set, every request needs ``X-API-Key`` with one of them.

    ``writer_timeout``: how long a write waits for its turn on a collection before 503;
    ``max_waiting_writers``: how many writes may wait per collection before 503;
    ``upload_idle_seconds``: an upload that sends nothing for this long is dropped (408).
    ``max_upload_bytes`` bounds a CSV upload or a binary batch (spooled to disk),
    ``max_body_bytes`` every other body (held in memory); past either the answer is 413.
    """

    store: str
    """A directory or ``s3://bucket/prefix`` (credentials from the standard variables)."""
    api_keys: tuple[str, ...] = ()
    quotas: dict[str, int] = field(default_factory=dict)
    max_upload_bytes: int = 512 * 2**20
    max_body_bytes: int = 64 * 2**20
    max_search_batch: int = 8192
    feed_bytes: int = 4 * 2**20
    task_batch_size: int = 512
    writer_timeout: float = 60.0
    max_waiting_writers: int = 256
    upload_idle_seconds: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> ServerSettings:
        """Settings from ``BRINICLE_STORE``, ``BRINICLE_API_KEYS`` (comma-separated),
        ``BRINICLE_QUOTAS`` (``key=MB,...``), ``BRINICLE_MAX_UPLOAD_MB``, ``BRINICLE_TASK_BATCH``
        (items per upsertion-task batch), ``BRINICLE_WRITER_TIMEOUT``, ``BRINICLE_MAX_WAITING_WRITERS``
        and ``BRINICLE_UPLOAD_IDLE_SECONDS``; ``overrides`` win over the environment."""
        env = os.environ.get
        keys = tuple(k.strip() for k in env("BRINICLE_API_KEYS", "").split(",") if k.strip())
        quotas = {}
        for entry in env("BRINICLE_QUOTAS", "").split(","):
            if "=" in entry:
                key, megabytes = entry.rsplit("=", 1)
                quotas[key.strip()] = int(float(megabytes) * 2**20)
        values: dict[str, Any] = {
            "store": default_store_location(),
            "api_keys": keys,
            "quotas": quotas,
            "max_upload_bytes": int(float(env("BRINICLE_MAX_UPLOAD_MB", "512")) * 2**20),
            "task_batch_size": int(env("BRINICLE_TASK_BATCH", "512")),
            "writer_timeout": float(env("BRINICLE_WRITER_TIMEOUT", "60")),
            "max_waiting_writers": int(env("BRINICLE_MAX_WAITING_WRITERS", "256")),
            "upload_idle_seconds": float(env("BRINICLE_UPLOAD_IDLE_SECONDS", "30")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables :meth:`from_env` reads these settings back from: how :func:`serve`
        hands them to every worker process uvicorn starts."""
        return {
            "BRINICLE_STORE": self.store,
            "BRINICLE_API_KEYS": ",".join(self.api_keys),
            "BRINICLE_QUOTAS": ",".join(f"{key}={size / 2**20!r}" for key, size in self.quotas.items()),
            "BRINICLE_MAX_UPLOAD_MB": repr(self.max_upload_bytes / 2**20),
            "BRINICLE_TASK_BATCH": str(self.task_batch_size),
            "BRINICLE_WRITER_TIMEOUT": repr(self.writer_timeout),
            "BRINICLE_MAX_WAITING_WRITERS": str(self.max_waiting_writers),
            "BRINICLE_UPLOAD_IDLE_SECONDS": repr(self.upload_idle_seconds),
        }


INDEX_NAME: JsonDict = {
    "description": "an index (brinicle's rule: letters, digits and _, at most 64) or a collection built by "
    "ingest as db/namespace, each part by the same rule; anything else is 400",
    "pattern": INDEX_NAME_PATTERN,
}

API_DESCRIPTION = """brinicle's HTTP API over brinicle-etl collections, plus search with rows and filters.

**Names.** An `index_name` is letters, digits and `_` (at most 64), or `db/namespace` of two
such parts for a collection built by `ingest`. Task ids and template names are 1-64 letters,
digits, `_` or `-`, not starting with `-`.

**Limits.** `dim` 1-65,536 (128-8,192 for a collection created by a CSV upload); `M` 2-256;
`ef_construction`, `ef_search` and a search's `ef`/`efs` 1-16,384; `k` 1-10,000; `rng_seed`
0-4,294,967,295; `build_n_threads` 0-1,024; `delta_ratio` in (0, 0.5], at least 1e-6; at most
8,192 queries per `/search/batch.bin`. Bodies held in memory: 64 MB; CSV uploads and binary
batches: `--max-upload-mb` (512 by default).

**Binary formats.** `/ingest/batch`: rows of a 32-byte id (UTF-8, right-padded with NUL) and
`dim` little-endian float32. `/search.bin`: one query of `dim` little-endian float32;
`/search/batch.bin`: several, concatenated.

**Writes** to one index take turns; a write that cannot get its turn in time is 503 with
`Retry-After` and did nothing. With `--api-key`, every request (this page too) needs
`X-API-Key`.
"""


def canonical(index_name: object) -> str:
    """brinicle's index name (or db/namespace) -> the collection it addresses; 400 if invalid."""
    name = index_collection(index_name)
    if name is None:
        raise HTTPException(status_code=400, detail=INDEX_NAME_RULE)
    return name


def display(name: str) -> str:
    """The collection's index name over HTTP: ``foo`` for ``foo/default``."""
    return name[: -len("/default")] if name.endswith("/default") else name


@dataclass
class ServerState:
    """What the routes share: the store, the model registry, the task worker, the writer gate.

    Every collection in the store is served unless it was unloaded here: collections made
    by the task worker, the CLI or a pipeline appear without a restart.
    """

    settings: ServerSettings
    store: Store
    registry: ModelRegistry
    tasks: TaskStore
    worker: TaskWorker
    writers: WriterGate
    unloaded: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_all(self) -> None:
        for name in self.store.names():
            # A collection a cut-short drop left half there is not served; the server still starts.
            with suppress(NotFoundError):
                self.store.open(name)

    def collection(self, index_name: object) -> AnyCollection:
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

    async def write(self, index_name: object, call: Callable[[AnyCollection], T]) -> T:
        """``call(collection)``, a library write made with ``wait=False``, when it is its turn."""
        col = await run_in_threadpool(self.collection, index_name)
        return await self.writers.run(col.name, lambda: call(col))

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


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.brinicle
    return state


# ---- errors: the one table ---------------------------------------------------------------

_STATUS: list[tuple[type[BrinicleError], int]] = [
    (UnknownModelError, 400),  # a model named in the request body: a bad field, not a missing resource
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (ConflictError, 409),
    (LockedError, 409),
    (InputError, 400),
    (ConfigError, 400),
    (TaskStateError, 409),  # a task's status forbids it: a conflict with the resource's state
    (StateError, 400),
    (QuotaExceededError, 403),
    (BusyError, 503),
    (DiskFullError, 507),
    (MissingExtraError, 503),
    (ObjectStoreError, 502),  # the object store behind us failed: a bad gateway, not our bug
    (CorruptCollectionError, 500),
]


def status_of(exc: BrinicleError) -> int:
    return next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)


def error_response(exc: BrinicleError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, BusyError) else None
    return JSONResponse(status_code=status_of(exc), content={"detail": str(exc)}, headers=headers)


def json_response(data: Any, status_code: int = 200) -> Response:
    return Response(content=orjson.dumps(data), status_code=status_code, media_type="application/json")


class ErrorBody(BaseModel):
    """Every error but request validation (422): what went wrong and, where it helps, what to do."""

    detail: str


_MEANING = {
    400: "Invalid request: a field, parameter, name or body the server cannot use (the detail says which)",
    401: "Missing or invalid X-API-Key (only when the server requires keys)",
    403: "The write would take the API key past its storage quota",
    404: "No such index (or task)",
    408: "The upload stalled: nothing arrived for too long; nothing was written",
    409: "Conflicting keys, or the index already exists",
    413: "The body is larger than the server accepts (--max-upload-mb for uploads, 64 MB otherwise)",
    503: "Too many writers waiting on this index, or the wait timed out: retry after Retry-After seconds",
    507: "The disk is full: nothing was written",
}


BINARY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
"""The OpenAPI request body of the routes that read raw little-endian float32 rows."""


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses its JSON itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route can answer (401 and 413 always are)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in sorted({401, 413, *codes}):
        entry: dict[str, Any] = {"model": ErrorBody, "description": _MEANING[code]}
        if code == 503:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
        documented[code] = entry
    return documented
