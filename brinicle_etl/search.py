"""Search: a text or a vector in, the nearest rows out, with their columns.

Text is embedded with the collection's own model (recorded in its schema when it was
ingested). Distances follow usearch's convention, smaller is nearer: ``cosine`` is
``1 - cos(q, v)``, ``ip`` is ``1 - q.v`` and ``l2sq`` the squared Euclidean distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from brinicle_etl.embed import ModelRegistry
from brinicle_etl.errors import ConfigError, InputError
from brinicle_etl.schema import TemplateSchema
from brinicle_etl.store import Collection, Store

__all__ = ["SearchHit", "embed_query", "search", "search_batch"]

HIDDEN_COLUMNS = ("_row_id", "_key", "_hash", "_text_hash")


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result: the row's key, its distance to the query, and its columns."""

    key: str
    distance: float
    row: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "distance": self.distance, "row": self.row}


def _resolve(collection: Collection | str, store: Store | str | None) -> tuple[Collection, Store | None]:
    if isinstance(collection, Collection):
        return collection, store if isinstance(store, Store) else (Store(store) if store is not None else None)
    st = store if isinstance(store, Store) else Store(store)
    return st.open(collection), st


def embed_query(collection: Collection, queries: Sequence[str], registry: ModelRegistry | None = None) -> np.ndarray:
    """Embed texts with the model the collection was built with."""
    schema = collection.meta.get("schema")
    model = TemplateSchema.from_dict(schema).model if schema else None
    if model is None:
        raise ConfigError(
            f"collection {collection.name!r} has no embedding model (its vectors were not generated from text); "
            "search it with a vector"
        )
    embedder = (registry or ModelRegistry()).embedder(model)
    return embedder.embed_batch(list(queries))


def _as_queries(
    collection: Collection, queries: Sequence[str | Sequence[float] | np.ndarray], registry: ModelRegistry | None
) -> np.ndarray:
    texts = [i for i, q in enumerate(queries) if isinstance(q, str)]
    if not texts:
        return np.asarray(queries, dtype=np.float32)
    if len(texts) != len(queries):
        raise InputError("a batch of queries must be all texts or all vectors")
    return embed_query(collection, [str(q) for q in queries], registry)


def search_batch(
    collection: Collection | str,
    queries: Sequence[str | Sequence[float] | np.ndarray],
    k: int = 10,
    *,
    store: Store | str | None = None,
    ef: int | None = None,
    registry: ModelRegistry | None = None,
) -> list[list[SearchHit]]:
    """Nearest rows for each query (texts or vectors), with their columns."""
    col, st = _resolve(collection, store)
    if registry is None and st is not None:
        registry = ModelRegistry(st.config_dir / "models.json")
    vectors = _as_queries(col, queries, registry)
    table = col.search_table(vectors, k, ef=ef, columns=None)
    payload = [c for c in table.column_names[4:] if c not in HIDDEN_COLUMNS]
    out: list[list[SearchHit]] = [[] for _ in range(len(vectors))]
    for q, key, distance, row in zip(
        table.column("query").to_pylist(),
        table.column("_key").to_pylist(),
        table.column("distance").to_pylist(),
        table.select(payload).to_pylist(),
        strict=True,
    ):
        out[q].append(SearchHit(key, distance, row))
    return out


def search(
    collection: Collection | str,
    query: str | Sequence[float] | np.ndarray,
    k: int = 10,
    *,
    store: Store | str | None = None,
    ef: int | None = None,
    registry: ModelRegistry | None = None,
) -> list[SearchHit]:
    """The ``k`` rows nearest to ``query`` (a text, embedded with the collection's model, or a vector)."""
    if isinstance(query, np.ndarray) and query.ndim != 1:
        raise InputError(f"search: expected one query vector, got an array of shape {query.shape}")
    return search_batch(collection, [query], k, store=store, ef=ef, registry=registry)[0]
