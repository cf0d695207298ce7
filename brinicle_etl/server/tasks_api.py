"""The upsertion-task API: submit items to embed and upsert in the background, follow, restart, cancel.

``index_name`` (optional, beyond the spec) names the collection the items go to; by default it
is the model id made into a collection name (``all-MiniLM-L6-v2`` -> ``all_MiniLM_L6_v2``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from brinicle_etl.errors import NotFoundError, StateError
from brinicle_etl.server.app import canonical, json_response, state_of
from brinicle_etl.tasks import TASK_STATUSES

router = APIRouter(prefix="/internal/upsertion-tasks")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_model_id: str
    task_id: str | None = None
    items: list[dict[str, Any]]
    index_name: str | None = None


@router.post("/run", summary="Create an upsertion task (idempotent by task_id)")
async def run_task(request: Request, body: RunRequest) -> Response:
    state = state_of(request)
    if body.index_name is not None:
        canonical(body.index_name)  # brinicle's naming rule, as on every route
    try:
        record, _created = await run_in_threadpool(
            state.tasks.submit,
            embedding_model_id=body.embedding_model_id,
            items=body.items,
            task_id=body.task_id,
            index_name=body.index_name,
        )
    except NotFoundError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    state.worker.notify()
    return json_response(record.public())


@router.get("/info", summary="One task: status, timestamps, failed items")
async def task_info(request: Request, task_id: Annotated[str, Query()]) -> Response:
    record = await run_in_threadpool(state_of(request).tasks.get, task_id)
    return json_response(record.public())


@router.get("/list", summary="Tasks, oldest first, optionally by status")
async def list_tasks(
    request: Request,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: str | None = None,
) -> Response:
    if status is not None and status not in TASK_STATUSES:
        raise HTTPException(status_code=400, detail=f"status must be one of {', '.join(TASK_STATUSES)}")
    records, total = await run_in_threadpool(state_of(request).tasks.list, offset=offset, limit=limit, status=status)
    return json_response({"tasks": [r.public() for r in records], "total": total, "offset": offset, "limit": limit})


@router.put("/restart", summary="Re-queue a failed or cancelled task")
async def restart_task(request: Request, task_id: Annotated[str, Query()]) -> Response:
    state = state_of(request)
    try:
        record = await run_in_threadpool(state.tasks.restart, task_id)
    except StateError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    state.worker.notify()
    return json_response(record.public())


@router.put("/cancel", summary="Cancel a pending task, or stop a running one between batches")
async def cancel_task(request: Request, task_id: Annotated[str, Query()]) -> Response:
    try:
        record = await run_in_threadpool(state_of(request).tasks.cancel, task_id)
    except StateError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    return json_response(record.public())
