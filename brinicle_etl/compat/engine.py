"""``VectorEngine``: brinicle's Python API over a brinicle_etl collection.

A brinicle user switches by changing ``from brinicle import VectorEngine`` to
``from brinicle_etl import VectorEngine``. Arguments, return shapes and exception
types follow brinicle 0.1.3: invalid constructor arguments raise ValueError; state
and data errors raise RuntimeError (here :class:`EngineError`, a RuntimeError) with
a message that starts with the operation's name.

Writers take turns as brinicle's do: ``init`` waits (up to ``lock_timeout``, 600 s as in
brinicle) until no other writer holds the index, and this engine then holds it until
``finalize`` (or ``close``), so engines in other threads or processes queue behind it;
``delete_items``, ``rebuild_compact`` and ``optimize_graph`` wait their turn too. Searches
never wait.

While it holds the index, single ``ingest`` calls are synced in groups, within
``sync_window`` seconds (see :mod:`brinicle_etl.store.grouped`; ``sync_window=None`` syncs
each call); ``ingest_batch`` and ``finalize`` are durable when they return.

Where brinicle loses data or is surprising, this keeps the data: a staged session
survives ``close()`` and a crash, insert of an existing id is refused at
``finalize`` instead of creating a duplicate, and insert into an empty index builds it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from brinicle_etl._fs import LocalFile
from brinicle_etl.errors import BrinicleError, ConfigError, EngineError
from brinicle_etl.store import AnyCollection
from brinicle_etl.store.collection import Collection
from brinicle_etl.store.manifest import MANIFEST, CollectionConfig
from brinicle_etl.store.sharding import SHARDING, ShardedPlace
from brinicle_etl.store.shards import ShardedCollection
from brinicle_etl.types import DEFAULT_SYNC_WINDOW, SYNC_WINDOW, HnswParams, Metric, VectorDType

__all__ = ["VectorEngine"]

_DIST_FUNCS: dict[str, Metric] = {"l2": "l2sq", "cosine_distance": "cosine", "dot_product_distance": "ip"}

P = ParamSpec("P")
R = TypeVar("R")


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """Re-raise library errors as brinicle does: RuntimeError with the library's message."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except EngineError:
            raise
        except BrinicleError as exc:
            raise EngineError(str(exc)) from exc

    return wrapper


def _params(M: int, ef_construction: int, ef_search: int, build_n_threads: int, seed: int) -> dict[str, int]:
    return {
        "M": M,
        "ef_construction": ef_construction,
        "ef_search": ef_search,
        "build_n_threads": build_n_threads,
        "rng_seed": seed,
    }


class VectorEngine:
    """An HNSW index on disk at ``index_path`` (a directory), with brinicle's methods."""

    def __init__(
        self,
        index_path: str | os.PathLike[str],
        dim: int = 0,
        delta_ratio: float = 0.10,
        M: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        build_n_threads: int = 1,
        seed: int = 0,
        dist_func: str = "l2",
        n_shards: int = 1,
        *,
        dtype: VectorDType | None = None,
        lock_timeout: float = 600.0,
        sync_window: float | None = DEFAULT_SYNC_WINDOW,
    ):
        self._wait = lock_timeout
        if sync_window is not None:
            try:
                SYNC_WINDOW.check(sync_window)
            except ConfigError as exc:
                raise ValueError(f"{exc}, or None to sync every ingest call") from exc
        self._sync_window = sync_window
        if not 0 < delta_ratio <= 0.5:
            raise ValueError("delta_ratio must be in range (0, 0.5]")
        if n_shards < 1:
            raise ValueError("n_shards must be greater than 0")
        if dist_func not in _DIST_FUNCS:
            raise ValueError(f"dist_func must be one of {', '.join(map(repr, _DIST_FUNCS))}; got {dist_func!r}")
        path = Path(index_path)
        self._path = path
        # n_shards > 1: the index is split by id into shards searched as one (brinicle_etl.store.shards).
        sharded = ShardedPlace(path, path.name, LocalFile(path / SHARDING))
        self._col: AnyCollection
        if (path / MANIFEST).exists() or (path / SHARDING).exists():
            self._col = ShardedCollection.open(sharded) if (path / SHARDING).exists() else Collection(path)
            if dim and dim != self._col.dim:
                raise EngineError(f"dim mismatch: constructor requested {dim}, manifest has {self._col.dim}")
            return
        if dim <= 0:
            raise ValueError("dim must be greater than 0 when creating a new index")
        try:
            params = HnswParams.from_dict(_params(M, ef_construction, ef_search, build_n_threads, seed))
            config = CollectionConfig.of(
                None,
                {
                    "dim": dim,
                    "metric": _DIST_FUNCS[dist_func],
                    "dtype": dtype,
                    "params": params,
                    "delta_ratio": delta_ratio,
                },
            )
            if n_shards > 1:
                self._col = ShardedCollection.create(sharded, config, shards=n_shards, exist_ok=True)
            else:
                self._col = Collection.create(path, config, exist_ok=True)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @property
    def collection(self) -> AnyCollection:
        """The underlying brinicle_etl collection."""
        return self._col

    @property
    def dim(self) -> int:
        return self._col.dim

    @property
    def has_index(self) -> bool:
        return self._col.status().has_index

    @property
    def generation(self) -> int:
        return self._col.generation

    @property
    def n_shards(self) -> int:
        return len(self._col.shards) if isinstance(self._col, ShardedCollection) else 1

    @_translated
    def init(self, mode: str) -> None:
        if mode not in ("build", "insert", "upsert"):
            raise EngineError("init(mode): mode must be 'build'|'insert'|'upsert'")
        took = self._col.hold_writer_lock(wait=self._wait)  # this engine's turn, until finalize
        try:
            self._col.init(mode, wait=self._wait)  # type: ignore[arg-type]
        except BaseException:
            if took:
                self._col.release_writer_lock()
            raise

    @_translated
    def ingest(self, external_id: str, vec: Any) -> None:
        self._col.ingest(external_id, vec, wait=self._wait, sync_window=self._sync_window)

    @_translated
    def flush(self) -> None:
        """Write the ``ingest`` calls not synced yet (``sync_window``) to disk now."""
        self._col.flush(wait=self._wait)

    @_translated
    def ingest_batch(self, external_ids: Sequence[str], vectors: Any) -> int:
        return self._col.ingest_batch(external_ids, vectors, wait=self._wait)

    @_translated
    def finalize(
        self,
        optimize: bool = False,
        M: int = 0,
        ef_construction: int = 0,
        ef_search: int = 0,
        build_n_threads: int = 0,
        seed: int = 0,
    ) -> None:
        # brinicle: 0 means "the index's own value".
        overrides = {k: v for k, v in _params(M, ef_construction, ef_search, build_n_threads, seed).items() if v}
        try:
            self._col.finalize(optimize=optimize, params=overrides or None, wait=self._wait)
        finally:
            self._col.release_writer_lock()

    @_translated
    def delete_items(self, external_ids: Sequence[str], return_not_found: bool = False) -> tuple[int, list[str] | None]:
        result = self._col.delete(list(external_ids), return_not_found=return_not_found, wait=self._wait)
        return result.deleted_count, result.not_found

    @_translated
    def rebuild_compact(
        self,
        M: int | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
        build_n_threads: int | None = None,
        seed: int | None = None,
    ) -> None:
        given = {
            "M": M,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "build_n_threads": build_n_threads,
            "rng_seed": seed,
        }
        self._col.rebuild({k: v for k, v in given.items() if v is not None} or None, wait=self._wait)

    @_translated
    def search(self, q: Any, k: int = 10, efs: int = 64, threshold: float = float("inf"), n_jobs: int = 1) -> list[str]:
        return [hit[0] for hit in self._col.search(np.asarray(q, dtype=np.float32), k, ef=efs) if hit[1] <= threshold]

    @_translated
    def search_with_distance(
        self, q: Any, k: int = 10, efs: int = 64, threshold: float = float("inf"), n_jobs: int = 1
    ) -> list[tuple[str, float]]:
        hits = self._col.search(np.asarray(q, dtype=np.float32), k, ef=efs)
        return [(h.id, h.distance) for h in hits if h.distance <= threshold]

    @_translated
    def search_batch(
        self, Q: Any, k: int = 10, efs: int = 64, threshold: float = float("inf"), n_jobs: int = 1
    ) -> list[list[str]]:
        results = self._col.search_batch(np.asarray(Q, dtype=np.float32), k, ef=efs, threads=n_jobs)
        return [[h.id for h in hits if h.distance <= threshold] for hits in results]

    @_translated
    def needs_rebuild(self) -> bool:
        return self._col.status().needs_rebuild

    @_translated
    def optimize_graph(self) -> None:
        self._col.optimize(wait=self._wait)

    @_translated
    def close(self) -> None:
        """Write what is grouped, then let other writers go; a pending session stays staged on
        disk (``finalize`` it later)."""
        self._col.release_writer_lock()

    @_translated
    def destroy(self) -> None:
        self._col.destroy(wait=self._wait)
