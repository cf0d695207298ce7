"""The upsertion-task API: submit items to embed and upsert in the background, follow, restart, cancel.

``index_name`` (optional, beyond the spec) names the collection the items go to; by default it
is the model id made into a collection name (``all-MiniLM-L6-v2`` -> ``all_MiniLM_L6_v2``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from brinicle_etl.compat.tasks import TASK_STATUSES
from brinicle_etl.server.deps import INDEX_NAME, canonical, json_response, responses, state_of
from brinicle_etl.types import NAME_PATTERN, NAME_RULE

router = APIRouter(prefix="/internal/upsertion-tasks", tags=["upsertion tasks"])

TASK_ID: JsonDict = {"description": NAME_RULE, "pattern": f"^{NAME_PATTERN}$"}
TaskId = Annotated[str, Query(json_schema_extra=TASK_ID)]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embedding_model_id: str = Field(description="a model of the store's registry, e.g. all-MiniLM-L6-v2 or hash-<dim>")
    task_id: str | None = Field(default=None, json_schema_extra=TASK_ID)
    items: list[dict[str, Any]] = Field(
        description="{object_id, payload (its text field, or its scalar values, is embedded), item_info}"
    )
    index_name: str | None = Field(default=None, json_schema_extra=INDEX_NAME)


class Task(BaseModel):
    id: str
    embedding_model_id: str
    index_name: str
    status: str
    created_at: str
    updated_at: str
    item_count: int
    processed_count: int
    batches_done: int
    failed_items: list[dict[str, Any]]
    error: str | None


class TaskList(BaseModel):
    tasks: list[Task]
    total: int
    offset: int
    limit: int


def _ok(model: type[BaseModel], *codes: int) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model}, **responses(*codes)}


@router.post("/run", summary="Create an upsertion task (idempotent by task_id)", responses=_ok(Task, 400, 409, 507))
async def run_task(request: Request, body: RunRequest) -> Response:
    state = state_of(request)
    if body.index_name is not None:
        canonical(body.index_name)  # brinicle's naming rule, as on every route
    record, _created = await run_in_threadpool(
        state.tasks.submit,
        embedding_model_id=body.embedding_model_id,
        items=body.items,
        task_id=body.task_id,
        index_name=body.index_name,
    )
    state.worker.notify()
    return json_response(record.public())


@router.get("/info", summary="One task: status, timestamps, failed items", responses=_ok(Task, 400, 404))
async def task_info(request: Request, task_id: TaskId) -> Response:
    record = await run_in_threadpool(state_of(request).tasks.get, task_id)
    return json_response(record.public())


@router.get("/list", summary="Tasks, oldest first, optionally by status", responses=_ok(TaskList, 400))
async def list_tasks(
    request: Request,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: str | None = None,
) -> Response:
    if status is not None and status not in TASK_STATUSES:
        raise HTTPException(status_code=400, detail=f"status must be one of {', '.join(TASK_STATUSES)}")
    records, total = await run_in_threadpool(state_of(request).tasks.list, offset=offset, limit=limit, status=status)
    return json_response({"tasks": [r.public() for r in records], "total": total, "offset": offset, "limit": limit})


@router.put("/restart", summary="Re-queue a failed or cancelled task", responses=_ok(Task, 400, 404, 409, 507))
async def restart_task(request: Request, task_id: TaskId) -> Response:
    state = state_of(request)
    record = await run_in_threadpool(state.tasks.restart, task_id)
    state.worker.notify()
    return json_response(record.public())


@router.put(
    "/cancel",
    summary="Cancel a pending task, or stop a running one between batches",
    responses=_ok(Task, 400, 404, 409, 507),
)
async def cancel_task(request: Request, task_id: TaskId) -> Response:
    record = await run_in_threadpool(state_of(request).tasks.cancel, task_id)
    return json_response(record.public())
