"""The read side of a collection: what it holds and search over it, from its current generation.

Every read takes the generation :class:`~brinicle_etl.store.current.Current` holds (reopened
when a writer publishes) and works on that one :class:`~brinicle_etl.store.snapshot.Snapshot`;
a read that finds a file compacted away meanwhile runs once more on the newest generation.
Writes are :class:`~brinicle_etl.store.collection.Collection`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pyarrow as pa

from brinicle_etl.errors import NotFoundError
from brinicle_etl.store.current import Current
from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.snapshot import Snapshot
from brinicle_etl.store.validate import as_keys, as_matrix, as_vector, check_ef, check_k
from brinicle_etl.types import EF, Hit, K, RowHit, hits

__all__ = ["CollectionReads"]

P = ParamSpec("P")
R = TypeVar("R")


def _retry_on_vanished(method: Callable[P, R]) -> Callable[P, R]:
    """Retry a read once on a fresh snapshot if a file it needed was compacted away meanwhile."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except FileNotFoundError:
            self = args[0]
            assert isinstance(self, CollectionReads)
            self._snapshot(fresh=True)
            return method(*args, **kwargs)

    return wrapper


class CollectionReads:
    """What a collection holds and search over it, read from its current generation."""

    name: str
    directory: Path
    _current: Current

    def _snapshot(self, *, fresh: bool = False) -> Snapshot:
        return self._current.get(fresh=fresh)

    @property
    def config(self) -> CollectionConfig:
        return self._snapshot().manifest.config

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def meta(self) -> dict[str, Any]:
        return self._snapshot().manifest.meta

    @property
    def generation(self) -> int:
        return self._snapshot().manifest.generation

    def __len__(self) -> int:
        return self._snapshot().manifest.live_rows

    @_retry_on_vanished
    def search(self, query: Any, k: int = 10, *, ef: int | None = None, allow: Any = None) -> list[Hit]:
        """The ``k`` nearest live rows to ``query``, nearest first.

        ``allow`` (keys) restricts the search to those rows: still ``k`` results
        whenever ``k`` of them are live, not the unfiltered top ``k`` thinned out.
        """
        snap = self._snapshot()
        q = as_vector(query, snap.manifest.config.dim, "search")
        if type(k) is not int or not 1 <= k <= K.high:
            k = check_k(k, "search")
        if allow is not None:
            return self.search_batch(q.reshape(1, -1), k, ef=ef, threads=1, allow=allow)[0]
        if ef is not None and ef not in EF:
            ef = check_ef(ef)
        row_ids, dists = snap.search_one(q, k, ef=ef)
        return hits(snap.ids.keys_for(row_ids), dists)

    def _allowed(self, snap: Snapshot, allow: Any, allow_row_ids: np.ndarray | None) -> np.ndarray | None:
        if allow is not None:
            found = snap.ids.lookup(as_keys(allow, "search"))
            return np.unique(found[found >= 0].astype(np.uint64))
        if allow_row_ids is not None:
            if snap.is_filtered(allow_row_ids):
                return allow_row_ids  # sorted and unique already, and the same array on every query
            return np.unique(np.asarray(allow_row_ids, dtype=np.uint64))
        return None

    @_retry_on_vanished
    def search_batch(
        self, queries: Any, k: int = 10, *, ef: int | None = None, threads: int = 0, allow: Any = None
    ) -> list[list[Hit]]:
        """Nearest rows for many queries at once, searched in parallel (``threads=0``: every core)."""
        snap = self._snapshot()
        matrix = as_matrix(queries, snap.manifest.config.dim, "search_batch")
        k = check_k(k, "search_batch")
        if not len(matrix):
            return []
        allowed = self._allowed(snap, allow, None)
        row_ids, dists, counts = snap.search(matrix, k, ef=check_ef(ef), threads=threads, allowed=allowed)
        flat_keys = snap.ids.keys_for(row_ids[np.arange(row_ids.shape[1])[None, :] < counts[:, None]])
        out: list[list[Hit]] = []
        pos = 0
        for i, n in enumerate(counts.tolist()):
            out.append(hits(flat_keys[pos : pos + n], dists[i, :n]))
            pos += n
        return out

    @_retry_on_vanished
    def search_rows(
        self, queries: Any, k: int = 10, *, ef: int | None = None, threads: int = 0, allow_row_ids: Any = None
    ) -> list[list[RowHit]]:
        """As :meth:`search_batch`, each hit with its row; ``allow_row_ids`` as in
        :meth:`search_table`. Rows come as Python values straight from the row files in memory:
        the path of a search returning rows to Python, where an Arrow table would cost more
        than the search."""
        snap = self._snapshot()
        matrix = as_matrix(queries, snap.manifest.config.dim, "search")
        k = check_k(k, "search")
        ef = check_ef(ef)
        allowed = self._allowed(snap, None, allow_row_ids)
        if len(matrix) == 1 and allowed is None:
            return [_row_hits(snap, *snap.search_one(matrix[0], k, ef=ef))]
        row_ids, dists, counts = snap.search(matrix, k, ef=ef, threads=threads, allowed=allowed)
        return [_row_hits(snap, row_ids[i, :n], dists[i, :n]) for i, n in enumerate(counts.tolist())]

    @_retry_on_vanished
    def search_table(
        self,
        queries: Any,
        k: int = 10,
        *,
        ef: int | None = None,
        threads: int = 0,
        columns: Sequence[str] | None = (),
        allow: Any = None,
        allow_row_ids: np.ndarray | None = None,
    ) -> pa.Table:
        """Results for many queries as one Arrow table, nearest first within each query.

        Columns: ``query`` (the query's index), ``rank`` (0 = nearest), ``_key``,
        ``distance``, ``_row_id`` (where the row is stored, for joins), then the rows'
        columns: ``columns=()`` adds none, ``None`` all. ``allow`` (keys) or
        ``allow_row_ids`` restrict the search to those rows.
        """
        snap = self._snapshot()
        matrix = as_matrix(queries, snap.manifest.config.dim, "search")
        k = check_k(k, "search")
        allowed = self._allowed(snap, allow, allow_row_ids)
        wanted = None if columns is None else list(columns)
        return snap.table(matrix, k, ef=check_ef(ef), threads=threads, columns=wanted, allowed=allowed)

    def recall(self, *, sample: int = 100, k: int = 10, ef: int | None = None, seed: int = 0) -> float:
        """Sampled recall@k of the index against exact search, with stored vectors as queries.

        The share of the exact ``k`` nearest rows that the graph search finds too: the
        number to watch after many inserts and deletes (see ``needs_rebuild``).
        """
        return self._snapshot().recall(sample=sample, k=k, ef=check_ef(ef), seed=seed)

    def filtered(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Row ids selected by a filter (``key``: its language and text), computed by
        ``compute`` once per generation: Python's structured filters and SQL's predicates."""
        return self._snapshot().filtered(key, compute)

    def cached_rows(self) -> pa.Table:
        """Every row of this generation's files, kept in memory for repeated lookups.

        Includes deleted and replaced rows (see :meth:`deleted_row_ids`); searches never
        return those, so filters may run over this table as it is.
        """
        snap = self._snapshot()
        return snap.rows_at(snap.ids.row_ids)

    def row_files(self) -> list[Path]:
        """The Parquet files holding this generation's rows (dead rows included: see deleted_row_ids)."""
        snap = self._snapshot()
        return [self.directory / r.file for r in snap.manifest.rows]

    def deleted_row_ids(self) -> np.ndarray:
        """Row ids in :meth:`row_files` that are deleted or replaced (sorted)."""
        return self._snapshot().dead

    @_retry_on_vanished
    def keys(self) -> list[str]:
        """Keys of every live row, in row-id order."""
        keys: list[str] = self._snapshot().ids.live()[1].to_pylist()
        return keys

    @_retry_on_vanished
    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return bool(self._snapshot().ids.lookup(pa.array([key], pa.string()))[0] >= 0)

    @_retry_on_vanished
    def rows(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Live rows: ``_row_id``, ``_key`` and the payload columns asked for (all if None), in row-id order."""
        return self._snapshot().rows(None if columns is None else list(columns))

    @_retry_on_vanished
    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        """Stored vectors of live keys (as float32, after the collection's dtype rounding)."""
        snap = self._snapshot()
        row_ids = snap.ids.lookup(as_keys(keys, "vectors"))
        missing = [k for k, r in zip(keys, row_ids.tolist(), strict=True) if r < 0]
        if missing:
            raise NotFoundError(f"vectors: no live row with id(s) {missing[:20]!r} in {self.name!r}")
        out, found = snap.vectors(row_ids)
        if not found.all():
            raise NotFoundError(f"vectors: some requested rows of {self.name!r} were stored without vectors")
        return out


def _row_hits(snap: Snapshot, row_ids: np.ndarray, distances: np.ndarray) -> list[RowHit]:
    found = zip(snap.ids.keys_for(row_ids), distances.tolist(), snap.row_dicts(row_ids), strict=True)
    return list(map(tuple.__new__, repeat(RowHit), found))
