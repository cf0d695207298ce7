"""``POST /search``: a text or a vector, the nearest rows with their columns, optionally filtered."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from brinicle_etl.search import search
from brinicle_etl.server.deps import INDEX_NAME, json_response, responses, state_of
from brinicle_etl.types import EF, K

router = APIRouter(tags=["search with rows"])


class SearchRequest(BaseModel):
    """``filter``: column conditions ANDed together, e.g. ``{"category": "footwear",
    "price": {"lt": 100}, "brand": {"in": ["A", "B"]}}``; operators eq ne lt lte gt gte in nin."""

    model_config = ConfigDict(extra="forbid")
    index_name: str = Field(json_schema_extra=INDEX_NAME)
    query: str | list[float] = Field(
        description="a text (embedded with the collection's model; not empty) or a vector of dim numbers"
    )
    # The ranges are documented here and checked by the library (types.K, types.EF): one
    # rule and one message, as /search.bin answers them (400).
    k: int = Field(default=10, json_schema_extra={"minimum": K.low, "maximum": K.high})
    ef: int | None = Field(default=None, json_schema_extra={"minimum": EF.low, "maximum": EF.high})
    filter: dict[str, Any] | None = None


class SearchHit(BaseModel):
    key: str
    distance: float
    row: dict[str, Any]


class SearchResults(BaseModel):
    index_name: str
    results: list[SearchHit]


@router.post(
    "/search",
    summary="Search by text or vector; rows come back with their columns",
    responses={200: {"model": SearchResults}, **responses(400, 404, 503)},
)
def search_rows(request: Request, body: SearchRequest) -> Response:
    state = state_of(request)
    col = state.collection(body.index_name)
    K.check(body.k)
    if body.ef is not None:
        EF.check(body.ef)
    hits = search(col, body.query, body.k, ef=body.ef, filter=body.filter, registry=state.registry)
    return json_response(
        {
            "index_name": body.index_name,
            "results": [{"key": h.key, "distance": h.distance, "row": h.row} for h in hits],
        }
    )
