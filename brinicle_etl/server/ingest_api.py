"""``POST /build_ingest_data/``: a CSV upload into ``db_name/namespace`` (multipart/form-data).

The upload streams to disk and is refused with 413 as soon as it passes the server's limit
(at once, if its Content-Length says so); the form's fields follow the CSV ingest spec.
"""

from __future__ import annotations

from typing import Any, get_args

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from brinicle_etl.compat.build_ingest import build_ingest_data, collection_name
from brinicle_etl.compat.form import UPLOAD_INT_FIELDS, UPLOAD_TEXT_FIELDS
from brinicle_etl.compat.usage import owner_id
from brinicle_etl.server.deps import json_response, responses, state_of
from brinicle_etl.server.upload import StreamingForm, chunks
from brinicle_etl.types import NAME_PATTERN, ConflictPolicy

router = APIRouter(tags=["CSV upload"])


_VALIDATION = {
    "description": "A required form field is missing or not an integer",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}
_RESULT = {
    "description": "What the ingest did (counts per outcome, the conflicting keys, the schema used)",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


_FORM = {
    "type": "object",
    "required": ["file", "dim"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the CSV rows"},
        "dim": {
            "type": "integer",
            "description": "vector dimension: 128-8192 for a new collection, the stored one on append",
        },
        "seed": {
            "type": "integer",
            "minimum": 0,
            "maximum": 2**32 - 1,
            "description": "HNSW rng_seed of a new collection (required to create one; ignored on append)",
        },
        "depth": {
            "type": "integer",
            "minimum": 1,
            "maximum": 8,
            "description": "connectivity M = 8 x depth of a new collection (required to create one; ignored on append)",
        },
        "db_name": {
            "type": "string",
            "description": "letters, digits and _ kept (others become _), at most 64; default fractal_db",
        },
        "namespace": {"type": "string", "description": "as db_name; default 'default'"},
        "vector_col": {"type": "string"},
        "dtype_config": {"type": "string"},
        "template_name": {
            "type": "string",
            "pattern": f"^{NAME_PATTERN}$",
            "description": "a schema template saved in the store (saved after the ingest if new)",
        },
        "template_schema": {"type": "string"},
        "on_conflict": {"type": "string", "enum": list(get_args(ConflictPolicy))},
    },
}


def _invalid(problems: list[dict[str, Any]]) -> Response:
    return JSONResponse(status_code=422, content={"detail": problems})


def _fields(form: StreamingForm, *, creating: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ingest's keyword arguments from the form, and FastAPI-style problems with it.

    ``seed`` and ``depth`` are required to create a collection, as the spec says; appending
    to an existing one they may be left out (it keeps its own)."""
    required = ("file", "dim", "seed", "depth") if creating else ("file", "dim")
    problems = [
        {"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None}
        for name in required
        if (name == "file" and form.file_path is None) or (name != "file" and name not in form.fields)
    ]
    options: dict[str, Any] = {k: form.fields[k] for k in UPLOAD_TEXT_FIELDS if form.fields.get(k) not in (None, "")}
    for name in UPLOAD_INT_FIELDS:
        if name in form.fields:
            try:
                options[name] = int(form.fields[name])
            except ValueError:
                problems.append(
                    {
                        "type": "int_parsing",
                        "loc": ["body", name],
                        "input": form.fields[name][:100],
                        "msg": "Input should be a valid integer, unable to parse string as an integer",
                    }
                )
    return options, problems


@router.post(
    "/build_ingest_data/",
    summary="Build or append to a collection from a CSV upload",
    responses={200: _RESULT, **responses(400, 403, 404, 408, 409, 413, 503, 507), 422: _VALIDATION},
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _FORM}}}},
)
async def build_ingest(request: Request) -> Response:
    state = state_of(request)
    settings = state.settings
    with StreamingForm(request.headers.get("content-type", ""), spool_dir=state.store.config_dir / "uploads") as form:
        async for chunk in chunks(request, settings.upload_idle_seconds, settings.max_upload_bytes):
            form.feed(chunk)
        form.finish()
        name = collection_name(form.fields.get("db_name"), form.fields.get("namespace"))
        options, problems = _fields(form, creating=not state.store.exists(name))
        if problems:
            return _invalid(problems)
        key = request.headers.get("x-api-key")
        owner = owner_id(key) if key and state.settings.api_keys else None
        quota = state.settings.quotas.get(key) if key else None
        path, file_name = form.file_path, form.file_name
        assert path is not None
        result = await state.writers.run(
            name,
            lambda: build_ingest_data(
                state.store, path, owner=owner, quota_bytes=quota, wait=False, file_name=file_name, **options
            ),
        )
    state.load(result.collection)
    body = result.to_dict()
    body["db_name"] = result.collection.split("/")[0]
    return json_response(body)
