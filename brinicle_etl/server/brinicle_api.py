"""brinicle's HTTP API: indexes, ingest sessions, maintenance and binary search.

Wire formats follow brinicle 0.1.3 (see COMPAT notes in the README): success bodies carry
``success``, ``message`` and ``index_name``; errors are ``{"detail": "..."}``; binary
batches are rows of a 32-byte NUL-padded id and ``dim`` little-endian float32 values.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from brinicle_etl.errors import AlreadyExistsError
from brinicle_etl.server.deps import (
    BINARY_BODY,
    INDEX_NAME,
    canonical,
    display,
    json_body,
    json_response,
    responses,
    state_of,
)
from brinicle_etl.server.upload import chunks
from brinicle_etl.store.sessions import BinaryIngest
from brinicle_etl.store.sharding import MAX_SHARDS, ShardedBinaryIngest
from brinicle_etl.types import (
    BUILD_THREADS,
    DELTA_RATIO_MIN,
    DIM,
    EF,
    EF_CONSTRUCTION,
    INDEX_NAME_RULE,
    RNG_SEED,
    HnswParams,
    K,
    M,
    Metric,
    VectorDType,
)

router = APIRouter(tags=["brinicle: indexes, ingest sessions, binary search"])

IndexPath = Annotated[str, Path(json_schema_extra=INDEX_NAME)]
IndexQuery = Annotated[str, Query(json_schema_extra=INDEX_NAME)]
# Documented ranges; the library checks them (400 with the range), as brinicle answers.
KQuery = Annotated[int, Query(json_schema_extra={"minimum": K.low, "maximum": K.high, "description": "results"})]
EfsQuery = Annotated[
    int, Query(json_schema_extra={"minimum": EF.low, "maximum": EF.high, "description": "search beam width"})
]


def _valid_name(value: str) -> str:
    try:
        canonical(value)
    except HTTPException:
        raise ValueError(INDEX_NAME_RULE) from None
    return value


class Params(BaseModel):
    """HNSW parameters; fields left out (or 0) keep the index's own values."""

    model_config = ConfigDict(extra="ignore")
    M: int | None = Field(default=None, ge=0, le=M.high)
    ef_construction: int | None = Field(default=None, ge=0, le=EF_CONSTRUCTION.high)
    ef_search: int | None = Field(default=None, ge=0, le=EF.high)
    rng_seed: int | None = Field(default=None, ge=RNG_SEED.low, le=RNG_SEED.high)
    build_n_threads: int | None = Field(default=None, ge=BUILD_THREADS.low, le=BUILD_THREADS.high)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Named(BaseModel):
    model_config = ConfigDict(extra="ignore")
    index_name: str = Field(json_schema_extra=INDEX_NAME)

    _check_name = field_validator("index_name")(classmethod(lambda cls, v: _valid_name(v)))


class CreateIndexRequest(Named):
    dim: int = Field(..., ge=DIM.low, le=DIM.high)
    delta_ratio: float = Field(default=0.10, ge=DELTA_RATIO_MIN, le=0.5)
    params: Params | None = None
    metric: Metric = "l2sq"
    dtype: VectorDType | None = Field(default=None, description="Left out: i8 for cosine, else bf16.")
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS, description="Split the index by id into this many shards.")


class InitRequest(Named):
    mode: str


class FinalizeRequest(Named):
    optimize: bool = False
    params: Params | None = None
    build_params: Params | None = Field(default=None, description="brinicle's client sends this name")


class DeleteRequest(Named):
    external_ids: list[str]
    return_not_found: bool = False


class RebuildRequest(Named):
    params: Params | None = None
    build_params: Params | None = None


class Success(BaseModel):
    success: bool
    message: str
    index_name: str | None


class IndexList(BaseModel):
    indexes: list[str]
    count: int


class IndexStatus(BaseModel):
    index_name: str
    dim: int
    has_index: bool
    needs_rebuild: bool
    metric: str
    dtype: str
    params: dict[str, int]
    delta_ratio: float
    live_count: int
    main_count: int
    delta_count: int
    deleted_count: int
    generation: int
    bytes_on_disk: int
    pending_count: int = Field(
        description="Vectors a write left to be linked into the index in the background (found by exact search)."
    )
    session_mode: str | None
    staged_count: int
    shards: list[dict[str, Any]] | None = Field(
        default=None, description="A sharded index's shards, each with these figures (the ones above are totals)."
    )


class Staged(BaseModel):
    success: bool
    count: int | None = None


class Deleted(BaseModel):
    deleted_count: int
    not_found: list[str] | None


def success(message: str, index_name: str | None) -> Response:
    return json_response({"success": True, "message": message, "index_name": index_name})


def _ok(model: type[BaseModel] | Any, *codes: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, **responses(*codes)}


@router.get("/", summary="Health check", responses=_ok(Success))
def health(request: Request) -> Response:
    state = state_of(request)
    return success(f"brinicle-etl is running. {len(state.names())} index(es) loaded.", None)


@router.get("/indexes", summary="List the loaded indexes", responses=_ok(IndexList))
def list_indexes(request: Request) -> Response:
    names = state_of(request).names()
    return json_response({"indexes": names, "count": len(names)})


@router.post("/indexes", summary="Create an index", responses=_ok(Success, 400, 409, 503, 507))
async def create_index(request: Request, body: CreateIndexRequest) -> Response:
    state = state_of(request)
    name = canonical(body.index_name)
    params = HnswParams.from_dict(body.params.to_dict() if body.params else None)

    def create() -> None:
        if state.store.exists(name):
            raise AlreadyExistsError(f"Index '{body.index_name}' already exists")
        state.store.create(
            name,
            dim=body.dim,
            metric=body.metric,
            dtype=body.dtype,
            params=params,
            delta_ratio=body.delta_ratio,
            shards=body.shards,
        )

    await state.writers.run(name, create)
    state.load(name)
    return success(f"Index '{body.index_name}' created successfully", body.index_name)


@router.delete(
    "/indexes/{index_name:path}",
    summary="Close an index (destroy=true: delete its files)",
    responses=_ok(Success, 400, 404, 503),
)
async def delete_index(request: Request, index_name: IndexPath, destroy: bool = False) -> Response:
    state = state_of(request)
    name = canonical(index_name)
    if destroy:
        await state.write(index_name, lambda col: col.destroy(wait=False))
    else:
        await run_in_threadpool(state.collection, index_name)  # 404 for an unknown index
        state.unload(name)
    state.store.forget(name)
    action = "destroyed" if destroy else "closed and removed"
    return success(f"Index '{index_name}' {action}", index_name)


@router.get(
    "/indexes/{index_name:path}/status", summary="An index's settings and counts", responses=_ok(IndexStatus, 400, 404)
)
def index_status(request: Request, index_name: IndexPath) -> Response:
    status = asdict(state_of(request).collection(index_name).status())
    del status["name"]  # brinicle calls it index_name, and answers with the name as asked
    if status["shards"]:
        status["shards"] = [{k: v for k, v in part.items() if k != "name"} for part in status["shards"]]
    else:
        del status["shards"]  # brinicle's own fields only, for an index of one shard
    return json_response({"index_name": index_name, **status})


@router.post("/indexes/load", summary="Load an index from disk", responses=_ok(Success, 400, 404))
def load_index(request: Request, body: Named) -> Response:
    state = state_of(request)
    name = canonical(body.index_name)
    if not state.store.exists(name):
        raise HTTPException(status_code=404, detail=f"Index '{body.index_name}' not found")
    state.store.open(name)
    state.load(name)
    return success(f"Index '{body.index_name}' loaded successfully", body.index_name)


@router.post("/init", summary="Start an ingest session", responses=_ok(Success, 400, 404, 503, 507))
async def init(request: Request, body: InitRequest) -> Response:
    # the library checks the mode
    await state_of(request).write(body.index_name, lambda col: col.init(body.mode, wait=False))  # type: ignore[arg-type]
    return success(f"Index '{body.index_name}' initialized in '{body.mode}' mode", body.index_name)


@router.post(
    "/ingest",
    summary="Stage one vector",
    responses=_ok(Staged, 400, 404, 503, 507),
    openapi_extra=json_body(
        {
            "type": "object",
            "required": ["index_name", "external_id", "vector"],
            "properties": {
                "index_name": {"type": "string"},
                "external_id": {"type": "string"},
                "vector": {"type": "array", "items": {"type": "number"}},
            },
        }
    ),
)
async def ingest(request: Request) -> Response:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise HTTPException(status_code=400, detail=f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPException(status_code=400, detail="Missing required fields: index_name, external_id, vector")
    index_name, external_id, vector = data.get("index_name"), data.get("external_id"), data.get("vector")
    if not index_name or not external_id or not isinstance(external_id, str) or vector is None:
        raise HTTPException(status_code=400, detail="Missing required fields: index_name, external_id, vector")
    if not isinstance(vector, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vector):
        await run_in_threadpool(state_of(request).collection, index_name)  # an unknown index is 404 first
        raise HTTPException(status_code=400, detail="ingest: vector must be an array of numbers")
    try:
        values = np.asarray(vector, dtype=np.float32)
    except OverflowError:
        raise HTTPException(status_code=400, detail="ingest: vector contains NaN/Inf") from None
    await state_of(request).write(index_name, lambda col: col.ingest(external_id, values, wait=False))
    return Response(content=b'{"success":true}', media_type="application/json")


@router.post(
    "/ingest/batch",
    summary="Stage many vectors (binary rows)",
    responses=_ok(Staged, 400, 404, 408, 413, 503, 507),
    openapi_extra=BINARY_BODY,
)
async def ingest_batch(
    request: Request, index_name: Annotated[str | None, Query(json_schema_extra=INDEX_NAME)] = None
) -> Response:
    state = state_of(request)
    if not index_name:
        raise HTTPException(status_code=400, detail="Missing query param: index_name")
    col = await run_in_threadpool(state.collection, index_name)
    batch: BinaryIngest | ShardedBinaryIngest = await run_in_threadpool(col.ingest_binary)
    pending = bytearray()
    # Rows are checked and spooled without the writer lock; one feed in flight while the
    # next chunk arrives. Only finish() waits for the writer's turn, on the event loop.
    feeding: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks(request, state.settings.upload_idle_seconds, state.settings.max_upload_bytes):
            pending += chunk
            if len(pending) >= state.settings.feed_bytes:
                data, pending = bytes(pending), bytearray()
                if feeding is not None:
                    await feeding
                feeding = asyncio.ensure_future(run_in_threadpool(batch.feed, data))
        if feeding is not None:
            await feeding
            feeding = None
        if pending:
            await run_in_threadpool(batch.feed, bytes(pending))
        count = await state.writers.run(col.name, lambda: batch.finish(wait=False))
    finally:
        if feeding is not None:
            await asyncio.gather(feeding, return_exceptions=True)  # never abort under a running feed
        batch.abort()
    return json_response({"success": True, "count": count})


@router.post("/finalize", summary="Apply the ingest session", responses=_ok(Success, 400, 404, 409, 503, 507))
async def finalize(request: Request, body: FinalizeRequest) -> Response:
    given = body.params or body.build_params
    params = given.to_dict() if given else None
    await state_of(request).write(
        body.index_name, lambda col: col.finalize(optimize=body.optimize, params=params, wait=False)
    )
    flag = "true" if body.optimize else "false"
    return success(f"Finalized ingest for index '{body.index_name}' (optimize={flag})", body.index_name)


@router.post("/delete", summary="Delete items by external id", responses=_ok(Deleted, 400, 404, 503, 507))
async def delete_items(request: Request, body: DeleteRequest) -> Response:
    if not body.external_ids:
        await run_in_threadpool(state_of(request).collection, body.index_name)  # an unknown index is 404 first
        raise HTTPException(status_code=400, detail="external_ids must not be empty")
    result = await state_of(request).write(
        body.index_name, lambda col: col.delete(body.external_ids, return_not_found=body.return_not_found, wait=False)
    )
    return json_response({"deleted_count": result.deleted_count, "not_found": result.not_found})


@router.post("/rebuild", summary="Compact into a fresh index", responses=_ok(Success, 400, 404, 503, 507))
async def rebuild(request: Request, body: RebuildRequest) -> Response:
    given = body.params or body.build_params
    params = given.to_dict() if given else None
    await state_of(request).write(body.index_name, lambda col: col.rebuild(params, wait=False))
    return success(f"Index '{body.index_name}' rebuilt and compacted", body.index_name)


@router.post("/optimize", summary="Merge the delta when needs_rebuild", responses=_ok(Success, 400, 404, 503, 507))
async def optimize(request: Request, body: Annotated[Any, Body()]) -> Response:
    # brinicle's server takes a bare JSON string; its docs and client send an object.
    index_name = body.get("index_name") if isinstance(body, dict) else body
    if not isinstance(index_name, str):
        raise HTTPException(status_code=400, detail='send {"index_name": "..."} or the name as a JSON string')
    merged = await state_of(request).write(index_name, lambda col: col.optimize(wait=False))
    message = f"Graph optimized for index '{index_name}'" + ("" if merged else " (nothing to merge)")
    return success(message, index_name)


def _search_args(k: int, efs: int) -> None:
    K.check(k)
    EF.check(efs, name="efs")


def _ids(col: Any, query: np.ndarray, k: int, efs: int) -> bytes:
    return orjson.dumps([h.id for h in col.search(query, k, ef=efs)])


@router.post(
    "/search.bin",
    summary="Search with one float32 query vector",
    responses=_ok(list[str], 400, 404),
    openapi_extra=BINARY_BODY,
)
async def search_bin(request: Request, index_name: IndexQuery, k: KQuery = 10, efs: EfsQuery = 64) -> Response:
    col = await run_in_threadpool(state_of(request).collection, index_name)
    _search_args(k, efs)
    body = await request.body()
    if len(body) != col.dim * 4:
        raise HTTPException(
            status_code=400, detail=f"Expected one float32 vector with dim={col.dim}, got {len(body)} bytes"
        )
    query = np.frombuffer(body, dtype="<f4")
    return Response(content=await run_in_threadpool(_ids, col, query, k, efs), media_type="application/json")


@router.post(
    "/search/batch.bin",
    summary="Search with many float32 query vectors",
    responses=_ok(list[list[str]], 400, 404),
    openapi_extra=BINARY_BODY,
)
async def search_batch_bin(request: Request, index_name: IndexQuery, k: KQuery = 10, efs: EfsQuery = 64) -> Response:
    state = state_of(request)
    col = await run_in_threadpool(state.collection, index_name)
    _search_args(k, efs)
    body = await request.body()
    row = col.dim * 4
    if not body or len(body) % row:
        raise HTTPException(
            status_code=400,
            detail=f"Batch search payload is not aligned to float32 rows: got {len(body)} bytes, "
            f"expected a non-zero multiple of {row} bytes for dim={col.dim}",
        )
    n = len(body) // row
    if n > state.settings.max_search_batch:
        raise HTTPException(
            status_code=400, detail=f"Batch too large: at most {state.settings.max_search_batch} queries, got {n}"
        )
    queries = np.frombuffer(body, dtype="<f4").reshape(n, col.dim)
    results = await run_in_threadpool(col.search_batch, queries, k, ef=efs)
    return Response(content=orjson.dumps([[h.id for h in hits] for hits in results]), media_type="application/json")


__all__ = ["display", "router"]
