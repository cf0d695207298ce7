"""The read side of a sharded collection: what it holds, and search over every shard at once.

Reads fan out to every shard at once and merge by distance, so a search returns ``k``
hits whenever ``k`` live rows match. Shards without tombstones or pending vectors are
searched in one native call over all their segments (:class:`~brinicle_etl.store.segment.Joint`).
Writes are :class:`~brinicle_etl.store.shards.ShardedCollection`'s.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from brinicle_etl._cpus import usable_cpus
from brinicle_etl.errors import ConfigError, CorruptCollectionError
from brinicle_etl.store.collection import Collection, CollectionStatus
from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.refine import RERANK, Refined, rescored, valid_keys
from brinicle_etl.store.segment import JOINT_MAX_FILES, Joint
from brinicle_etl.store.sharding import ROW_ID_BITS, SHARDING, ShardedPlace, shard_of
from brinicle_etl.store.snapshot import Snapshot
from brinicle_etl.store.validate import as_keys, as_matrix, as_vector, check_ef, check_k
from brinicle_etl.types import Hit, RowHit, hits

__all__ = ["ShardedReads"]

T = TypeVar("T")
AnyHit = TypeVar("AnyHit", Hit, RowHit)


class ShardedReads:
    """A collection split into :attr:`shards` by key, read as one."""

    def __init__(self, place: ShardedPlace, shards: Sequence[Collection]):
        self.place = place
        self.name = place.name
        self.shards = shards
        self.marker = str(place.directory / SHARDING)
        """The file whose presence says the collection exists (locally: its ``sharding.json``)."""
        # Reads have a pool of their own (writes another): a rebuild of every shard must not
        # queue the searches that meanwhile go shard by shard.
        self._pool = ThreadPoolExecutor(max_workers=min(4 * len(self.shards), 64), thread_name_prefix="shard-read")
        self._filters: dict[str, tuple[tuple[int, ...], list[Snapshot], np.ndarray, tuple[np.ndarray, ...]]] = {}
        self._joint: tuple[tuple[int, ...], list[Snapshot], Joint, list[Refined]] | None = None
        self._joint_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ShardedCollection {self.name!r} shards={len(self.shards)} rows={len(self)}>"

    def shard(self, i: int) -> Collection:
        if type(i) is not int or not 0 <= i < len(self.shards):
            raise ConfigError(f"shard must be from 0 to {len(self.shards) - 1} for {self.name!r}; got {i!r}")
        return self.shards[i]

    def _each(self, call: Callable[[Collection], T]) -> list[T]:
        """``call`` on every shard at once (usearch and file reads release the GIL)."""
        return list(self._pool.map(lambda i: call(self.shards[i]), range(len(self.shards))))

    def _routed(self, keys: pa.Array) -> dict[int, np.ndarray]:
        """The shards ``keys`` belong to, each with the positions of its keys."""
        owner = shard_of(keys.to_pylist(), len(self.shards))
        return {i: np.flatnonzero(owner == i) for i in np.unique(owner).tolist()}

    # ---- what it is ----------------------------------------------------------------

    @property
    def config(self) -> CollectionConfig:
        return self.shards[0].config

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def meta(self) -> dict[str, Any]:
        """The first shard's metadata that has a schema (a shard nothing was written to has none)."""
        metas = [s.meta for s in self.shards]
        return next((m for m in metas if "schema" in m), metas[0])

    @property
    def generation(self) -> int:
        """The sum of the shards' generations: it grows with every commit of any shard."""
        return sum(s.generation for s in self.shards)

    def generations(self) -> list[int]:
        return [s.generation for s in self.shards]

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def status(self) -> CollectionStatus:
        """Totals over the shards, and each shard's own status in ``shards``."""
        parts = self._each(Collection.status)
        first = parts[0]
        modes = {p.session_mode for p in parts} - {None}
        return replace(
            first,
            name=self.name,
            live_count=sum(p.live_count for p in parts),
            main_count=sum(p.main_count for p in parts),
            delta_count=sum(p.delta_count for p in parts),
            pending_count=sum(p.pending_count for p in parts),
            deleted_count=sum(p.deleted_count for p in parts),
            generation=sum(p.generation for p in parts),
            bytes_on_disk=sum(p.bytes_on_disk for p in parts),
            needs_rebuild=any(p.needs_rebuild for p in parts),
            has_index=any(p.has_index for p in parts),
            session_mode=modes.pop() if len(modes) == 1 else None,
            staged_count=sum(p.staged_count for p in parts),
            shards=tuple(parts),
        )

    # ---- reading -------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(itertools.chain.from_iterable(self._each(Collection.keys)))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.shards[int(shard_of([key], len(self.shards))[0])]

    def rows(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Live rows of every shard, shard by shard (in row-id order, as row ids name their shard)."""
        return _concat(self._each(lambda s: s.rows(columns)))

    def vectors(self, keys: Sequence[str]) -> np.ndarray:
        key_array = as_keys(keys, "vectors")
        out = np.empty((len(key_array), self.dim), dtype=np.float32)
        for i, positions in self._routed(key_array).items():
            out[positions] = self.shards[i].vectors(key_array.take(pa.array(positions)).to_pylist())
        return out

    def shard_ef(self, ef: int | None, k: int) -> int:
        """The beam width each shard is searched with when ``ef`` is asked of the collection.

        Each shard holds about 1/N of the rows and so about k/N of a query's true neighbours;
        searching every shard with the whole ``ef`` would cost N searches for a recall the
        collection never asked for. ``ef / N^(2/3)`` (at least ``k``) kept recall@10 at or
        above the unsharded collection's at the same ``ef`` in ``benchmarks/bench_shards.py``."""
        wanted: int = check_ef(ef) or self.config.params.ef_search
        spread: float = len(self.shards) ** (2 / 3)
        return max(k, math.ceil(wanted / spread - 1e-9))  # 8 ** (2/3) is 3.9999...

    def _joined(self) -> tuple[list[Snapshot], Joint, list[Refined]] | None:
        """Every shard's current segments as one multi-index, when none has tombstones or
        pending vectors (the common case after a build; the per-shard path handles them),
        with the vectors files its candidates are re-scored on (i8 graphs; none otherwise)."""
        snaps = [shard.snapshot() for shard in self.shards]
        stamp = tuple(map(id, snaps))  # a new generation is a new snapshot; cached ones stay alive
        cached = self._joint
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2], cached[3]
        segments = [(seg, info) for snap in snaps for seg, info in snap.segments()]
        refined = [seg.refined for seg, _info in segments if seg.refined is not None]
        if (
            not segments
            or len(segments) > JOINT_MAX_FILES
            # pending vectors, and i8 graphs written before vectors files beside others: shard by shard
            or any(info.dead or seg.exact_only for seg, info in segments)
            or 0 < len(refined) < len(segments)
        ):
            self._joint = None  # let the old generations' files and views go
            return None
        with self._joint_lock:
            if self._joint is None or self._joint[0] != stamp:
                self._joint = (stamp, snaps, Joint([seg.path for seg, _info in segments]), refined)
            return self._joint[1], self._joint[2], self._joint[3]

    def _search_joined(self, matrix: np.ndarray, k: int, ef: int, threads: int) -> list[list[Hit]] | None:
        joined = self._joined()
        if joined is None:
            return None
        snaps, joint, refined = joined
        try:
            row_ids, dists, counts = joint.search(matrix, k * RERANK if refined else k, ef=ef, threads=threads)
        except (FileNotFoundError, CorruptCollectionError):
            # A writer replaced a generation and removed its files while they were opened:
            # this search goes shard by shard (each reopens), the next builds the joint anew.
            self._joint = None
            return None
        if refined:
            row_ids, dists = rescored(refined, matrix, valid_keys(row_ids, counts), k)
            counts = np.isfinite(dists).sum(axis=1)
        valid = np.arange(row_ids.shape[1])[None, :] < counts[:, None]
        hit_ids = row_ids[valid]
        owner = (hit_ids >> np.uint64(ROW_ID_BITS)).astype(np.int64)
        keys: list[str] = [""] * len(hit_ids)
        for i in np.unique(owner).tolist():
            at = np.flatnonzero(owner == i)
            for position, key in zip(at.tolist(), snaps[i].ids.keys_for(hit_ids[at]), strict=True):
                keys[position] = key
        flat = dists[valid].tolist()
        out, start = [], 0
        for n in counts.tolist():
            out.append(hits(keys[start : start + n], flat[start : start + n]))
            start += n
        return out

    def search(self, query: Any, k: int = 10, *, ef: int | None = None, allow: Any = None) -> list[Hit]:
        """The ``k`` nearest live rows of all shards, nearest first."""
        k = check_k(k, "search")
        ef = self.shard_ef(ef, k)
        if allow is None:
            q = as_vector(query, self.dim, "search")
            joined = self._search_joined(q.reshape(1, -1), k, ef, min(len(self.shards), usable_cpus()))
            if joined is not None:
                return joined[0]
        if allow is not None:
            allowed = as_keys(allow, "search")
            targets = [(self.shards[i], allowed.take(pa.array(p))) for i, p in self._routed(allowed).items()]
            parts = list(self._pool.map(lambda t: t[0].search(query, k, ef=ef, allow=t[1]), targets))
        else:
            parts = self._each(lambda s: s.search(query, k, ef=ef))
        return _nearest(parts, k)

    def search_batch(
        self, queries: Any, k: int = 10, *, ef: int | None = None, threads: int = 0, allow: Any = None
    ) -> list[list[Hit]]:
        matrix = as_matrix(queries, self.dim, "search_batch")
        k = check_k(k, "search_batch")
        ef = self.shard_ef(ef, k)
        if allow is None and len(matrix):
            joined = self._search_joined(matrix, k, ef, threads or usable_cpus())
            if joined is not None:
                return joined
        per_shard = self._threads(threads)
        parts = self._each(lambda s: s.search_batch(matrix, k, ef=ef, threads=per_shard, allow=allow))
        return [_nearest(hits, k) for hits in zip(*parts, strict=True)]

    def search_rows(
        self, queries: Any, k: int = 10, *, ef: int | None = None, threads: int = 0, allow_row_ids: Any = None
    ) -> list[list[RowHit]]:
        """As :meth:`Collection.search_rows`, over every shard."""
        k, parts = self._fan_out(
            queries,
            k,
            ef,
            threads,
            allow_row_ids,
            lambda shard, matrix, k, ef, threads, allowed: shard.search_rows(
                matrix, k, ef=ef, threads=threads, allow_row_ids=allowed
            ),
        )
        merged = [_nearest(found, k) for found in zip(*parts, strict=True)]
        # Every hit with every column: a column added by a write that reached some shards only
        # is None in the others' rows, as in one collection's rows written before it.
        names = tuple(dict.fromkeys(n for shard in self.shards for n in shard.snapshot().row_columns()))
        return [
            [h if tuple(h.row) == names else h._replace(row={n: h.row.get(n) for n in names}) for h in hits]
            for hits in merged
        ]

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
        """As :meth:`Collection.search_table`, over every shard."""
        k, parts = self._fan_out(
            queries,
            k,
            ef,
            threads,
            allow_row_ids,
            lambda shard, matrix, k, ef, threads, allowed: shard.search_table(
                matrix, k, ef=ef, threads=threads, columns=columns, allow=allow, allow_row_ids=allowed
            ),
        )
        table = _concat(parts)
        if not table.num_rows:
            return table
        table = table.sort_by([("query", "ascending"), ("distance", "ascending")])
        query = table.column("query").to_numpy()
        starts = np.searchsorted(query, query, side="left")
        rank = np.arange(len(query)) - starts
        table = table.set_column(table.schema.get_field_index("rank"), "rank", pa.array(rank, pa.int64()))
        return table.filter(pa.array(rank < k))

    def _fan_out(
        self,
        queries: Any,
        k: int,
        ef: int | None,
        threads: int,
        allow_row_ids: np.ndarray | None,
        call: Callable[[Collection, np.ndarray, int, int, int, np.ndarray | None], T],
    ) -> tuple[int, list[T]]:
        """The queries and ``k`` checked once, then ``call(shard, matrix, k, ef, threads, allowed)``
        on every shard at once, each with its ef, its share of the threads and its part of the
        allowed row ids; the checked ``k`` and each shard's answer, in shard order."""
        matrix = as_matrix(queries, self.dim, "search")
        k = check_k(k, "search")
        shard_ef = self.shard_ef(ef, k)
        per_shard = self._threads(threads)
        mine = None if allow_row_ids is None else self._split(allow_row_ids)

        def one(i: int) -> T:
            return call(self.shards[i], matrix, k, shard_ef, per_shard, None if mine is None else mine[i])

        return k, list(self._pool.map(one, range(len(self.shards))))

    def _threads(self, threads: int) -> int:
        total = threads or usable_cpus()
        return max(1, total // len(self.shards))

    def recall(self, *, sample: int = 100, k: int = 10, ef: int | None = None, seed: int = 0) -> float:
        """Sampled recall@k of each shard's index, averaged over the shards weighted by rows."""
        sizes = [len(s) for s in self.shards]
        if not sum(sizes):
            return 1.0
        shard_ef = self.shard_ef(ef, k)  # as searches run
        found = self._each(lambda s: s.recall(sample=sample, k=k, ef=shard_ef, seed=seed))
        return float(np.average(found, weights=sizes))

    def filtered(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Row ids a filter selects (over every shard's rows), computed once per set of shard
        snapshots (not generation numbers: a collection dropped and created again elsewhere
        reaches the same numbers with other rows)."""
        snaps = [shard.snapshot() for shard in self.shards]
        stamp = tuple(map(id, snaps))  # the cache keeps the snapshots alive, so ids are not reused
        cached = self._filters.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[2]
        found = np.unique(np.asarray(compute(), dtype=np.uint64))
        # Each shard's share is kept in that shard's own filter cache, so its search finds
        # it there and compares its rows' kept vectors (Snapshot.search).
        split = _by_shard(found, len(snaps))
        parts = tuple(snap.filtered(key, partial(np.asarray, part)) for snap, part in zip(snaps, split, strict=True))
        if len(self._filters) > 256:
            self._filters.clear()
        self._filters[key] = (stamp, snaps, found, parts)
        return found

    def _split(self, row_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """Row ids by shard: a cached filter's own parts, else split here."""
        for entry in list(self._filters.values()):
            if entry[2] is row_ids:
                return entry[3]
        return _by_shard(np.asarray(row_ids, np.uint64), len(self.shards))

    def cached_rows(self) -> pa.Table:
        return _concat(self._each(Collection.cached_rows))

    def row_files(self) -> list[Any]:
        return list(itertools.chain.from_iterable(s.row_files() for s in self.shards))

    def deleted_row_ids(self) -> np.ndarray:
        return np.concatenate([s.deleted_row_ids() for s in self.shards])


def _by_shard(row_ids: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
    """Row ids split by the shard they name (the high bits), in shard order."""
    owner = row_ids >> np.uint64(ROW_ID_BITS)
    return tuple(row_ids[owner == i] for i in range(count))


def _nearest(parts: Iterable[list[AnyHit]], k: int) -> list[AnyHit]:
    """The ``k`` nearest of the shards' hits (each list nearest first)."""
    return list(itertools.islice(heapq.merge(*parts, key=lambda h: h.distance), k))


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Tables of the shards as one; a shard that has no rows yet may lack payload columns."""
    kept = [t for t in tables if t.num_rows] or list(tables[:1])
    return pa.concat_tables(kept, promote_options="default")
