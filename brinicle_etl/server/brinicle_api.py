"""brinicle's HTTP API: indexes, ingest sessions, maintenance and binary search.

Wire formats follow brinicle 0.1.3 (see COMPAT notes in the README): success bodies carry
``success``, ``message`` and ``index_name``; errors are ``{"detail": "..."}``; binary
batches are rows of a 32-byte NUL-padded id and ``dim`` little-endian float32 values.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from brinicle_etl.errors import BrinicleError
from brinicle_etl.server.app import NAME_RULE, canonical, display, json_response, state_of, status_of
from brinicle_etl.types import HnswParams

router = APIRouter()


def _valid_name(value: str) -> str:
    try:
        canonical(value)
    except HTTPException:
        raise ValueError(NAME_RULE) from None
    return value


class Params(BaseModel):
    """HNSW parameters; fields left out (or 0) keep the index's own values."""

    model_config = ConfigDict(extra="ignore")
    M: int | None = None
    ef_construction: int | None = None
    ef_search: int | None = None
    rng_seed: int | None = None
    build_n_threads: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Named(BaseModel):
    model_config = ConfigDict(extra="ignore")
    index_name: str

    _check_name = field_validator("index_name")(classmethod(lambda cls, v: _valid_name(v)))


class CreateIndexRequest(Named):
    dim: int = Field(..., ge=1)
    delta_ratio: float = Field(default=0.10, gt=0.0, le=0.5)
    params: Params | None = None
    metric: Literal["cosine", "ip", "l2sq"] = "l2sq"
    dtype: Literal["f32", "f16", "bf16", "i8"] = "bf16"


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


def success(message: str, index_name: str | None) -> Response:
    return json_response({"success": True, "message": message, "index_name": index_name})


@router.get("/", summary="Health check")
def health(request: Request) -> Response:
    state = state_of(request)
    return success(f"brinicle-etl is running. {len(state.names())} index(es) loaded.", None)


@router.get("/indexes", summary="List the loaded indexes")
def list_indexes(request: Request) -> Response:
    names = state_of(request).names()
    return json_response({"indexes": names, "count": len(names)})


@router.post("/indexes", summary="Create an index")
def create_index(request: Request, body: CreateIndexRequest) -> Response:
    state = state_of(request)
    name = canonical(body.index_name)
    if state.store.exists(name):
        raise HTTPException(status_code=409, detail=f"Index '{body.index_name}' already exists")
    params = HnswParams.from_dict(body.params.to_dict() if body.params else None)
    state.store.create(
        name, dim=body.dim, metric=body.metric, dtype=body.dtype, params=params, delta_ratio=body.delta_ratio
    )
    state.load(name)
    return success(f"Index '{body.index_name}' created successfully", body.index_name)


@router.delete("/indexes/{index_name:path}", summary="Close an index (destroy=true: delete its files)")
def delete_index(request: Request, index_name: str, destroy: bool = False) -> Response:
    state = state_of(request)
    col = state.collection(index_name)
    name = canonical(index_name)
    if destroy:
        col.destroy(wait=True)
    if not destroy:
        state.unload(name)
    state.store.forget(name)
    action = "destroyed" if destroy else "closed and removed"
    return success(f"Index '{index_name}' {action}", index_name)


@router.get("/indexes/{index_name:path}/status", summary="An index's settings and counts")
def index_status(request: Request, index_name: str) -> Response:
    s = state_of(request).collection(index_name).status()
    return json_response(
        {
            "index_name": index_name,
            "dim": s.dim,
            "has_index": s.has_index,
            "needs_rebuild": s.needs_rebuild,
            "metric": s.metric,
            "dtype": s.dtype,
            "params": s.params.to_dict(),
            "delta_ratio": s.delta_ratio,
            "live_count": s.live_count,
            "main_count": s.main_count,
            "delta_count": s.delta_count,
            "deleted_count": s.deleted_count,
            "generation": s.generation,
            "bytes_on_disk": s.bytes_on_disk,
            "session_mode": s.session_mode,
            "staged_count": s.staged_count,
        }
    )


@router.post("/indexes/load", summary="Load an index from disk")
def load_index(request: Request, body: Named) -> Response:
    state = state_of(request)
    name = canonical(body.index_name)
    if not state.store.exists(name):
        raise HTTPException(status_code=404, detail=f"Index '{body.index_name}' not found")
    state.store.open(name)
    state.load(name)
    return success(f"Index '{body.index_name}' loaded successfully", body.index_name)


@router.post("/init", summary="Start an ingest session")
def init(request: Request, body: InitRequest) -> Response:
    col = state_of(request).collection(body.index_name)
    col.init(body.mode, wait=True)  # type: ignore[arg-type]  # the library checks the mode
    return success(f"Index '{body.index_name}' initialized in '{body.mode}' mode", body.index_name)


@router.post("/ingest", summary="Stage one vector")
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
    col = state_of(request).collection(index_name)
    if not isinstance(vector, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vector):
        raise HTTPException(status_code=400, detail="ingest: vector must be an array of numbers")
    await run_in_threadpool(col.ingest, external_id, np.asarray(vector, dtype=np.float32))
    return Response(content=b'{"success":true}', media_type="application/json")


@router.post("/ingest/batch", summary="Stage many vectors (binary rows)")
async def ingest_batch(request: Request, index_name: str | None = None) -> Response:
    state = state_of(request)
    if not index_name:
        raise HTTPException(status_code=400, detail="Missing query param: index_name")
    col = state.collection(index_name)
    batch = await run_in_threadpool(col.ingest_binary)
    pending = bytearray()
    # One feed in flight while the next chunk arrives: receiving and checking/writing overlap,
    # in order, with at most two chunks buffered.
    feeding: asyncio.Future[None] | None = None
    try:
        async for chunk in request.stream():
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
        count = await run_in_threadpool(batch.finish)
    except BaseException as exc:
        if feeding is not None:
            await asyncio.gather(feeding, return_exceptions=True)  # never abort under a running feed
        await run_in_threadpool(batch.abort)
        if isinstance(exc, BrinicleError):
            raise HTTPException(status_code=status_of(exc), detail=str(exc)) from exc
        raise
    return json_response({"success": True, "count": count})


@router.post("/finalize", summary="Apply the ingest session")
def finalize(request: Request, body: FinalizeRequest) -> Response:
    col = state_of(request).collection(body.index_name)
    given = body.params or body.build_params
    col.finalize(optimize=body.optimize, params=given.to_dict() if given else None)
    flag = "true" if body.optimize else "false"
    return success(f"Finalized ingest for index '{body.index_name}' (optimize={flag})", body.index_name)


@router.post("/delete", summary="Delete items by external id")
def delete_items(request: Request, body: DeleteRequest) -> Response:
    col = state_of(request).collection(body.index_name)
    if not body.external_ids:
        raise HTTPException(status_code=400, detail="external_ids must not be empty")
    result = col.delete(body.external_ids, return_not_found=body.return_not_found, wait=True)
    return json_response({"deleted_count": result.deleted_count, "not_found": result.not_found})


@router.post("/rebuild", summary="Compact into a fresh index")
def rebuild(request: Request, body: RebuildRequest) -> Response:
    col = state_of(request).collection(body.index_name)
    given = body.params or body.build_params
    col.rebuild(given.to_dict() if given else None, wait=True)
    return success(f"Index '{body.index_name}' rebuilt and compacted", body.index_name)


@router.post("/optimize", summary="Merge the delta when needs_rebuild")
def optimize(request: Request, body: Annotated[Any, Body()]) -> Response:
    # brinicle's server takes a bare JSON string; its docs and client send an object.
    index_name = body.get("index_name") if isinstance(body, dict) else body
    if not isinstance(index_name, str):
        raise HTTPException(status_code=400, detail='send {"index_name": "..."} or the name as a JSON string')
    col = state_of(request).collection(index_name)
    merged = col.optimize(wait=True)
    message = f"Graph optimized for index '{index_name}'" + ("" if merged else " (nothing to merge)")
    return success(message, index_name)


def _search_args(k: int, efs: int) -> None:
    if k <= 0:
        raise HTTPException(status_code=400, detail="k must be greater than 0")
    if efs <= 0:
        raise HTTPException(status_code=400, detail="efs must be greater than 0")


def _ids(col: Any, query: np.ndarray, k: int, efs: int) -> bytes:
    return orjson.dumps([h.id for h in col.search(query, k, ef=efs)])


@router.post("/search.bin", summary="Search with one float32 query vector")
async def search_bin(request: Request, index_name: Annotated[str, Query()], k: int = 10, efs: int = 64) -> Response:
    col = state_of(request).collection(index_name)
    _search_args(k, efs)
    body = await request.body()
    if len(body) != col.dim * 4:
        raise HTTPException(
            status_code=400, detail=f"Expected one float32 vector with dim={col.dim}, got {len(body)} bytes"
        )
    query = np.frombuffer(body, dtype="<f4")
    return Response(content=_ids(col, query, k, efs), media_type="application/json")


@router.post("/search/batch.bin", summary="Search with many float32 query vectors")
async def search_batch_bin(
    request: Request, index_name: Annotated[str, Query()], k: int = 10, efs: int = 64
) -> Response:
    state = state_of(request)
    col = state.collection(index_name)
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


__all__ = ["router", "display"]
