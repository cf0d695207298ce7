"""The CSV endpoint's form fields (brinicle's names), typed once for the route, the library
call and the client. Light on purpose: the client imports it without the server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Required, TypedDict

from brinicle_etl.types import ConflictPolicy

__all__ = ["UPLOAD_INT_FIELDS", "UPLOAD_TEXT_FIELDS", "UploadFields"]


class UploadFields(TypedDict, total=False):
    """``dim`` of the vectors; ``seed`` and ``depth`` shape a new collection (required for one);
    ``db_name``/``namespace`` name it; ``vector_col``, ``dtype_config``, ``template_name``,
    ``template_schema`` (JSON or a mapping) and ``on_conflict`` as the endpoint documents."""

    dim: Required[int]
    seed: int
    depth: int
    db_name: str
    namespace: str
    vector_col: str
    dtype_config: str
    template_name: str
    template_schema: str | Mapping[str, Any]
    on_conflict: ConflictPolicy


UPLOAD_INT_FIELDS = ("dim", "seed", "depth")
UPLOAD_TEXT_FIELDS = tuple(name for name in UploadFields.__annotations__ if name not in UPLOAD_INT_FIELDS)
