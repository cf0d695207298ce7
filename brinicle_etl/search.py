"""Search: a text or a vector in, the nearest rows out, with their columns.

Text is embedded with the collection's own model (recorded in its schema when it was
ingested). Distances follow usearch's convention, smaller is nearer: ``cosine`` is
``1 - cos(q, v)``, ``ip`` is ``1 - q.v`` and ``l2sq`` the squared Euclidean distance.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from brinicle_etl.embed import ModelRegistry
from brinicle_etl.errors import ConfigError, InputError, MissingExtraError
from brinicle_etl.pipeline.schema import TemplateSchema
from brinicle_etl.store import AnyCollection, Collection, ShardedCollection, Store
from brinicle_etl.store.rows import RESERVED_COLUMNS, ROW_ID

log = logging.getLogger("brinicle_etl.search")

__all__ = ["SearchHit", "allowed_row_ids", "embed_query", "filter_expression", "search", "search_batch"]

HIDDEN_COLUMNS = RESERVED_COLUMNS


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result: the row's key, its distance to the query, and its columns."""

    key: str
    distance: float
    row: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "distance": self.distance, "row": self.row}


_OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "nin")
_SCALARS = (str, int, float, bool)


def _literal(column: str, op: str, value: Any) -> Any:
    if op in ("in", "nin"):
        if not isinstance(value, list) or not all(v is None or isinstance(v, _SCALARS) for v in value):
            raise InputError(f"filter on {column!r}: {op!r} takes a list of numbers, strings or booleans")
        return value
    if value is not None and not isinstance(value, _SCALARS):
        raise InputError(f"filter on {column!r}: {op!r} takes a number, string or boolean, got {type(value).__name__}")
    return value


def filter_expression(spec: Mapping[str, Any], columns: Sequence[str]) -> pl.Expr:
    """A structured filter as a polars expression; conditions on different columns are ANDed.

    ``{"category": "footwear", "price": {"gte": 10, "lt": 100}, "brand": {"in": ["A", "B"]}}``:
    a value means equality, a list means "one of", an object combines operators
    ``eq ne lt lte gt gte in nin``. Only column names and literal values: a filter can
    never run code or read anything but the collection's own rows.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise InputError("filter must be a non-empty object of column conditions")
    known = set(columns) - set(HIDDEN_COLUMNS)
    parts: list[pl.Expr] = []
    for column, condition in spec.items():
        if column not in known:
            raise InputError(f"filter: unknown column {column!r}; columns are {sorted(known)}")
        if isinstance(condition, Mapping):
            conditions = dict(condition)
        else:
            conditions = {"in" if isinstance(condition, list) else "eq": condition}
        if not conditions:
            raise InputError(f"filter on {column!r}: an empty condition")
        for op, raw in conditions.items():
            if op not in _OPERATORS:
                listed = ", ".join(_OPERATORS)
                raise InputError(f"filter on {column!r}: unknown operator {op!r}; operators are {listed}")
            parts.append(_condition(pl.col(column), op, _literal(column, op, raw)))
    expr = parts[0]
    for part in parts[1:]:
        expr = expr & part
    return expr


def _condition(col: pl.Expr, op: str, value: Any) -> pl.Expr:
    if op == "eq":
        return col.is_null() if value is None else col == value
    if op == "ne":
        return col.is_not_null() if value is None else col != value
    if op in ("lt", "lte", "gt", "gte"):
        method = {"lt": col.lt, "lte": col.le, "gt": col.gt, "gte": col.ge}[op]
        return method(value)
    if op == "in":
        return col.is_in(value)
    return ~col.is_in(value)


def allowed_row_ids(collection: AnyCollection, spec: Mapping[str, Any]) -> np.ndarray:
    """Row ids of the rows matching a structured filter (cached per generation)."""
    text = json.dumps(spec, sort_keys=True, default=str)

    def compute() -> np.ndarray:
        table = collection.cached_rows()
        expr = filter_expression(spec, table.column_names)
        try:
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            matched = frame.lazy().filter(expr).select(ROW_ID).collect()
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"filter {text} cannot be applied: {exc}") from exc
        return np.asarray(matched.to_series().to_numpy(), dtype=np.uint64)

    return collection.filtered(f"structured:{text}", compute)


def _resolve(collection: AnyCollection | str, store: Store | str | None) -> tuple[AnyCollection, Store | None]:
    if isinstance(collection, Collection | ShardedCollection):
        return collection, store if isinstance(store, Store) else (Store.shared(store) if store is not None else None)
    st = store if isinstance(store, Store) else Store.shared(store)
    return st.open(collection), st


def embed_query(collection: AnyCollection, queries: Sequence[str], registry: ModelRegistry | None = None) -> np.ndarray:
    """Embed texts with the model the collection was built with; an empty text is refused
    (its vector is noise: the "nearest" rows would be arbitrary)."""
    empty = next((i for i, q in enumerate(queries) if not q.strip()), None)
    if empty is not None:
        where = "" if len(queries) == 1 else f" (query {empty + 1} of {len(queries)})"
        raise InputError(f"search: the query text is empty{where}; give words to search for, or a vector")
    schema = TemplateSchema.from_dict(collection.meta["schema"]) if "schema" in collection.meta else None
    model = schema.model if schema is not None else None
    if schema is None or model is None:
        raise ConfigError(
            f"collection {collection.name!r} has no embedding model (its vectors were not generated from text); "
            "search it with a vector"
        )
    # The path the rows were embedded with, so a query and its rows are embedded alike.
    registry = registry or ModelRegistry()
    embedder = registry.embedder(model, backend=schema.backend, precision=schema.precision)
    try:
        return embedder.embed_batch(list(queries))
    except (MissingExtraError, ConfigError) as exc:
        if schema.backend is None and schema.precision is None:
            raise
        # Rows embedded on a path this machine cannot run (another machine's extra, fp16 on
        # its GPU): every gated path agrees within the gate, so auto's path serves the query.
        log.warning(
            "collection %r: its embedding path (backend %s, precision %s) cannot run here (%s); "
            "queries are embedded on the path auto picks",
            collection.name,
            schema.backend,
            schema.precision,
            exc,
        )
        return registry.embedder(model).embed_batch(list(queries))


def _as_queries(
    collection: AnyCollection, queries: Sequence[str | Sequence[float] | np.ndarray], registry: ModelRegistry | None
) -> np.ndarray:
    texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
    if not texts:
        return np.asarray(queries, dtype=np.float32)
    if len(texts) != len(queries):
        raise InputError("a batch of queries must be all texts or all vectors")
    return embed_query(collection, [str(q) for q in queries], registry)


def search_batch(
    collection: AnyCollection | str,
    queries: Sequence[str | Sequence[float] | np.ndarray],
    k: int = 10,
    *,
    store: Store | str | None = None,
    ef: int | None = None,
    filter: Mapping[str, Any] | None = None,
    registry: ModelRegistry | None = None,
) -> list[list[SearchHit]]:
    """Nearest rows for each query (texts or vectors), with their columns.

    ``filter`` (see :func:`filter_expression`) restricts the search to matching rows,
    still returning ``k`` of them whenever ``k`` match.
    """
    col, st = _resolve(collection, store)
    if registry is None and st is not None:
        registry = st.models
    vectors = _as_queries(col, queries, registry)
    allowed = allowed_row_ids(col, filter) if filter is not None else None
    found = col.search_rows(vectors, k, ef=ef, allow_row_ids=allowed)
    return [[SearchHit(h.id, h.distance, h.row) for h in hits] for hits in found]


def search(
    collection: AnyCollection | str,
    query: str | Sequence[float] | np.ndarray,
    k: int = 10,
    *,
    store: Store | str | None = None,
    ef: int | None = None,
    filter: Mapping[str, Any] | None = None,
    registry: ModelRegistry | None = None,
) -> list[SearchHit]:
    """The ``k`` rows nearest to ``query`` (a text, embedded with the collection's model, or a vector)."""
    if isinstance(query, np.ndarray) and query.ndim != 1:
        raise InputError(f"search: expected one query vector, got an array of shape {query.shape}")
    return search_batch(collection, [query], k, store=store, ef=ef, filter=filter, registry=registry)[0]
