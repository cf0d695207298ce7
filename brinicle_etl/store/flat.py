"""Vectors a write stored but did not index yet: one file, searched exactly.

An upsert that changes a share of a large collection spends nearly all its time linking the
new vectors into the graph. A write may instead leave them here (the collection's *pending*
vectors) and return: searches compare every query with them exactly, so a pending row is
found as soon as the write returns, and a background job links them into the delta segment
(:mod:`brinicle_etl.store.indexing`). The file holds row ids and float32 vectors (rounded to
the collection's dtype only once linked, as every indexed vector is); its size is bounded by
``store.writer.PENDING_BYTES``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brinicle_etl._fs import fsync_file
from brinicle_etl.errors import CorruptCollectionError
from brinicle_etl.store.rows import sorted_positions
from brinicle_etl.types import NO_KEY

__all__ = ["ExactSet", "FlatSegment", "exact_distances", "nearest_of", "write_flat"]


def exact_distances(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Distances in usearch's convention: 1 - cosine, 1 - inner product, or squared L2."""
    q = np.asarray(queries, dtype=np.float32)
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        cosine: np.ndarray = 1.0 - _unit(q) @ _unit(v).T
        return cosine.astype(np.float32, copy=False)
    if metric == "ip":
        out: np.ndarray = 1.0 - q @ v.T
    else:
        out = (q * q).sum(1)[:, None] - 2.0 * (q @ v.T) + (v * v).sum(1)[None, :]
        np.maximum(out, 0.0, out=out)
    return out.astype(np.float32, copy=False)


def _unit(v: np.ndarray) -> np.ndarray:
    unit: np.ndarray = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-30)
    return unit


def nearest_of(ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query (a row of ``dists``, one column per id), the ``k`` nearest ids and their
    distances, nearest first (fewer when there are fewer ids)."""
    nq, n = dists.shape
    width = min(k, n)
    if width == 0:
        return np.empty((nq, 0), np.uint64), np.empty((nq, 0), np.float32)
    top = np.argpartition(dists, width - 1, axis=1)[:, :width] if width < n else np.tile(np.arange(n), (nq, 1))
    order = np.take_along_axis(dists, top, axis=1).argsort(axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return ids[top], np.take_along_axis(dists, top, axis=1)


_QUERY_CELLS = 1 << 24
"""Queries are compared in chunks of at most this many query x vector distances (64 MB)."""


class ExactSet:
    """Row ids and their vectors, compared with queries exactly. For cosine the vectors'
    inverse norms are computed once (not a second, normalised copy of the vectors)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, metric: str):
        self.ids = np.asarray(ids, dtype=np.uint64)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self._metric = metric
        self._inverse_norms = (
            1.0 / np.maximum(np.linalg.norm(self.vectors, axis=1), 1e-30) if metric == "cosine" else None
        )
        self.nbytes = self.ids.nbytes + self.vectors.nbytes

    def __len__(self) -> int:
        return len(self.ids)

    def distances(self, queries: np.ndarray) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if self._inverse_norms is None:
            return exact_distances(q, self.vectors, self._metric)
        out: np.ndarray = 1.0 - (_unit(q) @ self.vectors.T) * self._inverse_norms[None, :]
        return out.astype(np.float32, copy=False)

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids per query and their distances (fewer columns when there are fewer ids)."""
        step = max(1, _QUERY_CELLS // max(1, len(self.ids)))
        if len(queries) <= step:
            return nearest_of(self.ids, self.distances(queries), k)
        parts = [nearest_of(self.ids, self.distances(queries[i : i + step]), k) for i in range(0, len(queries), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_flat(path: Path, row_ids: np.ndarray, vectors: np.ndarray) -> None:
    """Write pending vectors durably to ``path`` (a fresh name: the manifest publishes it)."""
    with open(path, "wb") as fh:
        np.savez(fh, ids=np.asarray(row_ids, dtype=np.uint64), vectors=np.asarray(vectors, dtype=np.float32))
    fsync_file(path)


class FlatSegment:
    """Pending vectors, read into memory and searched exactly: the same calls as a
    :class:`~brinicle_etl.store.segment.Segment`, so search, compaction and lookups treat
    both alike."""

    exact_only = True
    refined = None  # compared exactly already

    def __init__(self, path: Path, *, metric: str):
        self.path = path
        try:
            with np.load(path) as data:
                ids, vectors = np.asarray(data["ids"], np.uint64), np.asarray(data["vectors"], np.float32)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptCollectionError(f"cannot read pending vectors {path}: {exc}") from exc
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise CorruptCollectionError(f"{path}: {len(ids)} row ids but vectors of shape {vectors.shape}")
        self._set = ExactSet(ids, vectors, metric)
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        self.count = len(ids)

    def search(
        self, queries: np.ndarray, count: int, *, ef: int | None, exact: bool, threads: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``count`` per query, always exact: (keys, distances, how many are valid per row)."""
        nq = len(queries)
        keys = np.full((nq, count), NO_KEY, dtype=np.uint64)
        dists = np.full((nq, count), np.inf, dtype=np.float32)
        found_keys, found_dists = self._set.nearest(queries, count)
        width = found_keys.shape[1]
        keys[:, :width], dists[:, :width] = found_keys, found_dists
        return keys, dists, np.full(nq, width, dtype=np.int64)

    def search_one(self, query: np.ndarray, count: int, *, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
        keys, dists = self._set.nearest(query.reshape(1, -1), count)
        return keys[0], dists[0]

    def _positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at, found = sorted_positions(np.asarray(keys, dtype=np.uint64).reshape(-1), self._sorted)
        return (self._order[at] if self.count else at), found

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self._positions(keys)[1]

    def get(self, keys: np.ndarray) -> np.ndarray:
        positions, found = self._positions(keys)
        if not found.all():
            raise KeyError(f"{int((~found).sum())} row id(s) have no pending vector")
        out: np.ndarray = self._set.vectors[positions]
        return out

    def vectors(self, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All live (row id, float32 vector) pairs."""
        ids = self._set.ids
        alive = ~np.isin(ids, dead) if len(dead) else np.ones(self.count, dtype=bool)
        return ids[alive], self._set.vectors[alive]
