"""One generation of a collection, opened for reading, and search over it.

Search asks each segment (main, delta, and the pending vectors a deferred write left
unindexed, compared exactly) for a few more candidates than ``k``, drops tombstoned rows,
and merges by distance. When tombstones eat too many candidates it
asks again for more, and past half the segment it switches to exact search, so a
query gets ``k`` results whenever ``k`` live rows exist.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from brinicle_etl._cpus import usable_cpus
from brinicle_etl.store.flat import ExactSet, FlatSegment
from brinicle_etl.store.manifest import CollectionConfig, Manifest, SegmentInfo
from brinicle_etl.store.picker import Picker, pick_rows
from brinicle_etl.store.refine import RERANK
from brinicle_etl.store.rows import KEY, RESERVED_COLUMNS, ROW_ID, IdMap, is_in_sorted, read_rows, read_tombstones
from brinicle_etl.store.segment import JOINT_MAX_FILES, Joint, Segment
from brinicle_etl.types import NO_KEY

__all__ = ["SEARCH_TABLE_COLUMNS", "AnySegment", "RowCache", "Snapshot"]

SEARCH_TABLE_COLUMNS = ("query", "rank", KEY, "distance", ROW_ID)
"""What :meth:`Snapshot.table` (``Collection.search_table``) puts before the rows' own columns."""

AnySegment = Segment | FlatSegment

# A filtered search compares the allowed rows exactly when there are at most EXACT_ALLOWED,
# or under EXACT_FRACTION_ONCE of the live rows (the graph would need too many candidates).
# A cached filter's rows (see Snapshot.filtered) are compared exactly up to EXACT_FRACTION of
# the live rows when their vectors fit in EXACT_BYTES and beside the other filters' kept
# vectors within EXACT_KEPT_BYTES (or the collection's own float32 vectors, if more): their
# vectors are gathered once and kept, so the filter's next query only compares.
# Measured at 100k x 128 with 10% allowed: 0.86 ms exact (recall 1) against 4.1 ms through
# the graph (recall 0.94).
EXACT_ALLOWED = 4096
EXACT_FRACTION_ONCE = 0.02
EXACT_FRACTION = 0.25
EXACT_BYTES = 64 << 20
EXACT_KEPT_BYTES = 256 << 20
FILTERS_KEPT = 64


_CPUS = usable_cpus()
"""The cores this process may run on (a container's CPU set, not the machine's)."""
_JOINT_SETS = 2
"""View sets of a snapshot's joint search: each query already takes a core per segment, and
each set maps every segment again (usearch builds per-node tables for each view)."""

_SLICED = 64
"""Up to this many rows are gathered by slices (a single search); more by a take per row file."""


class RowCache:
    """Row files read into memory, kept across generations (row files never change).

    ``full=False`` caches the key columns only (what search needs to name its hits);
    ``full=True`` every column (what a search that returns rows needs).
    """

    def __init__(self) -> None:
        self._tables: dict[tuple[str, bool], pa.Table] = {}
        self._pickers: dict[str, Picker] = {}
        self._lock = threading.Lock()

    def get(self, directory: Path, names: list[str], *, full: bool = False) -> list[pa.Table]:
        with self._lock:
            missing = [n for n in names if (n, full) not in self._tables]
        # One chunk per file: taking rows by position from it costs the rows taken, where a
        # table of many chunks is concatenated first (the whole file, for every search).
        loaded = {
            (n, full): read_rows(directory / n, None if full else [ROW_ID, KEY]).combine_chunks() for n in missing
        }
        with self._lock:
            self._tables.update(loaded)
            for stale in [k for k in self._tables if k[0] not in names]:
                del self._tables[stale]
            for gone in [n for n in self._pickers if n not in names]:
                del self._pickers[gone]
            return [self._tables[(n, full)] for n in names]

    def pickers(self, directory: Path, names: list[str]) -> list[Picker]:
        """A :class:`Picker` per row file (all its columns), kept as the files are."""
        tables = self.get(directory, names, full=True)
        with self._lock:
            for name, table in zip(names, tables, strict=True):
                if name not in self._pickers:
                    self._pickers[name] = Picker(table)
            return [self._pickers[n] for n in names]


def _graph(directory: Path, info: SegmentInfo, config: CollectionConfig) -> Segment:
    vectors = directory / info.vectors if info.vectors else None
    return Segment(directory / info.file, ef_search=config.params.ef_search, vectors=vectors, metric=config.metric)


class Snapshot:
    def __init__(self, directory: Path, manifest: Manifest, row_cache: RowCache, stamp: object):
        self.directory = directory
        self.manifest = manifest
        self.stamp = stamp
        self.main = [_graph(directory, info, manifest.config) for info in manifest.main]
        self.delta = _graph(directory, manifest.delta, manifest.config) if manifest.delta else None
        self.pending = (
            FlatSegment(directory / manifest.pending.file, metric=manifest.config.metric) if manifest.pending else None
        )
        self.dead = (
            read_tombstones(directory / manifest.tombstones) if manifest.tombstones else np.empty(0, dtype=np.uint64)
        )
        self._segments: list[tuple[AnySegment, SegmentInfo]] = [
            (seg, info)
            for seg, info in (
                *zip(self.main, manifest.main, strict=True),
                (self.delta, manifest.delta),
                (self.pending, manifest.pending),
            )
            if seg is not None and info is not None and info.live > 0
        ]
        self._row_cache = row_cache
        self._ids: IdMap | None = None
        self._row_parts: tuple[list[pa.Table], np.ndarray] | None = None
        self._pickers: list[Picker] | None = None
        self._row_columns: tuple[str, ...] | None = None
        self._joint: Joint | None = None
        self._joint_lock = threading.Lock()
        self._rows_lock = threading.Lock()
        self._ids_lock = threading.Lock()
        self._filtered: OrderedDict[str, np.ndarray] = OrderedDict()
        self._filtered_lock = threading.Lock()
        # id of a cached filter's row ids -> (that array, its live rows' vectors)
        self._exact_sets: dict[int, tuple[np.ndarray, ExactSet]] = {}

    @property
    def ids(self) -> IdMap:
        if self._ids is None:
            with self._ids_lock:
                if self._ids is None:
                    parts = self._row_cache.get(self.directory, [r.file for r in self.manifest.rows])
                    self._ids = IdMap(parts, self.dead)
        return self._ids

    def filtered(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The row ids a filter selects, sorted and unique, computed once per generation (the
        newest ``FILTERS_KEPT`` filters are kept); ``key`` names the filter and its language."""
        with self._filtered_lock:
            if key in self._filtered:
                self._filtered.move_to_end(key)
                return self._filtered[key]
        ids = np.unique(np.asarray(compute(), dtype=np.uint64))
        with self._filtered_lock:
            self._filtered[key] = ids
            while len(self._filtered) > FILTERS_KEPT:
                self._filtered.popitem(last=False)
        return ids

    def is_filtered(self, ids: np.ndarray) -> bool:
        """Whether ``ids`` is a row-id array :meth:`filtered` returned (sorted and unique already)."""
        with self._filtered_lock:
            return any(kept is ids for kept in self._filtered.values())

    def rows_at(self, row_ids: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The rows with these row ids (which must exist), in that order: taken from the row
        files they are in, in time proportional to how many are asked for."""
        parts, starts = self._parts()
        if not parts:
            return pa.table({ROW_ID: pa.array([], pa.uint64()), KEY: pa.array([], pa.string())})
        if not len(row_ids):
            first = parts[0] if columns is None else parts[0].select(columns)
            return first.slice(0, 0)
        which, offsets = self._located(row_ids, starts)
        touched = which.tolist()
        tables = {p: parts[p] if columns is None else parts[p].select(columns) for p in set(touched)}
        if len(row_ids) <= _SLICED:
            # One zero-copy slice per hit, in the order asked: a few microseconds each, where a
            # take costs tens of microseconds per file touched.
            pairs = zip(touched, offsets.tolist(), strict=True)
            return pa.concat_tables([tables[p].slice(o, 1) for p, o in pairs], promote_options="default")
        pieces, order = [], []
        for part, table in tables.items():
            picked = np.flatnonzero(which == part)
            pieces.append(table.take(pa.array(offsets[picked])))
            order.append(picked)
        # Back in the order asked: piece by piece, then each row to its place.
        joined = pa.concat_tables(pieces, promote_options="default")
        return joined if len(pieces) == 1 else joined.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def row_dicts(self, row_ids: np.ndarray) -> list[dict[str, Any]]:
        """The rows with these row ids (which must exist), in that order, as dicts of their own
        columns (not the store's: no row id, key or hashes); None where a row's file was written
        before a column was added."""
        starts = self._parts()[1]
        if self._pickers is None:
            self._pickers = self._row_cache.pickers(self.directory, [r.file for r in self.manifest.rows])
        if not len(row_ids):
            return []
        which, offsets = self._located(row_ids, starts)
        return pick_rows(self._pickers, which, offsets, self.row_columns())

    def row_columns(self) -> tuple[str, ...]:
        """The rows' own columns (not the store's), the union over the row files in their order."""
        if self._row_columns is None:
            own = [n for part in self._parts()[0] for n in part.column_names if n not in RESERVED_COLUMNS]
            self._row_columns = tuple(dict.fromkeys(own))
        return self._row_columns

    def _parts(self) -> tuple[list[pa.Table], np.ndarray]:
        """The row files' tables (every column) and the position of each one's first row."""
        with self._rows_lock:
            if self._row_parts is None:
                parts = self._row_cache.get(self.directory, [r.file for r in self.manifest.rows], full=True)
                starts = np.cumsum([0] + [p.num_rows for p in parts[:-1]]) if parts else np.zeros(0, np.int64)
                self._row_parts = (parts, np.asarray(starts, dtype=np.int64))
            return self._row_parts

    def _located(self, row_ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row id: the index of its row file, and its offset in that file."""
        positions = np.asarray(self.ids.positions(np.asarray(row_ids, dtype=np.uint64)), dtype=np.int64)
        which = np.searchsorted(starts, positions, side="right") - 1
        return which, positions - starts[which]

    def vectors(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors (float32) of ``row_ids``, and which of them have one."""
        out = np.empty((len(row_ids), self.manifest.config.dim), dtype=np.float32)
        found = np.zeros(len(row_ids), dtype=bool)
        ids = np.asarray(row_ids).astype(np.uint64)
        for seg in (*self.main, self.delta, self.pending):
            if seg is not None and len(ids):
                mask = ~found & seg.contains(ids)
                if mask.any():
                    out[mask] = seg.get(ids[mask])
                    found |= mask
        return out, found

    def rows(self, columns: list[str] | None = None) -> pa.Table:
        """Live rows: ``_row_id``, ``_key`` and the requested payload columns (all if None), by row id."""
        wanted = None if columns is None else list(dict.fromkeys([ROW_ID, KEY, *columns]))
        tables = [read_rows(self.directory / r.file, wanted) for r in self.manifest.rows]
        if not tables:
            return pa.table({ROW_ID: pa.array([], pa.uint64()), KEY: pa.array([], pa.string())})
        table = pa.concat_tables(tables, promote_options="default")
        if len(self.dead):
            table = table.filter(pa.array(~is_in_sorted(table.column(ROW_ID).to_numpy(), self.dead)))
        return table

    def table(
        self,
        matrix: np.ndarray,
        k: int,
        *,
        ef: int | None,
        threads: int,
        columns: list[str] | None,
        allowed: np.ndarray | None,
    ) -> pa.Table:
        """Results for many queries as one Arrow table (see ``Collection.search_table``):
        :data:`SEARCH_TABLE_COLUMNS`, then the rows' ``columns`` (``[]`` none, None all)."""
        if len(matrix) == 1 and allowed is None:
            one_ids, one_dists = self.search_one(matrix[0], k, ef=ef)
            row_ids, dists, counts = one_ids[None, :], one_dists[None, :], np.array([len(one_ids)])
        else:
            row_ids, dists, counts = self.search(matrix, k, ef=ef, threads=threads, allowed=allowed)
        valid = np.arange(row_ids.shape[1])[None, :] < counts[:, None]
        hit_ids = row_ids[valid]
        # valid is a prefix of each row, so a hit's column index is its rank
        query, rank = np.nonzero(valid)
        arrays: list[pa.Array | pa.ChunkedArray] = [
            pa.array(query.astype(np.int64)),
            pa.array(rank.astype(np.int64)),
            pa.array(self.ids.keys_for(hit_ids), pa.string()),
            pa.array(dists[valid].astype(np.float32)),
            pa.array(hit_ids.astype(np.uint64)),
        ]
        names = list(SEARCH_TABLE_COLUMNS)
        if columns is None or len(columns):
            rows = self.rows_at(hit_ids, columns)
            for name, column in zip(rows.column_names, rows.columns, strict=True):
                if name not in (ROW_ID, KEY):
                    arrays.append(column)
                    names.append(name)
        # One table built once: appending column by column makes a new table each time.
        return pa.Table.from_arrays(arrays, names=names)

    def recall(self, *, sample: int, k: int, ef: int | None, seed: int) -> float:
        """Sampled recall@k of the graph search against exact search, stored vectors as queries."""
        live_ids, _keys = self.ids.live()
        segments = self._segments
        with_vectors = np.concatenate(
            [live_ids[seg.contains(live_ids)] for seg, _info in segments] or [np.empty(0, np.uint64)]
        )
        if len(with_vectors) == 0:
            return 1.0
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(with_vectors, min(sample, len(with_vectors)), replace=False))
        parts = [seg.get(picked[mask]) for seg, _info in segments if (mask := seg.contains(picked)).any()]
        queries = np.concatenate(parts)
        k = min(k, len(with_vectors))
        approx, _, approx_n = self.search(queries, k, ef=ef, threads=0)
        truth, _, truth_n = self.search(queries, k, ef=None, threads=0, exact=True)
        found = sum(
            len(set(approx[i, : approx_n[i]].tolist()) & set(truth[i, : truth_n[i]].tolist()))
            for i in range(len(queries))
        )
        return found / max(1, int(truth_n.sum()))

    def segments(self) -> list[tuple[AnySegment, SegmentInfo]]:
        """Segments with at least one live vector (pending vectors last)."""
        return self._segments

    def search_one(self, query: np.ndarray, k: int, *, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
        """One query's (row ids, distances), nearest first.

        The path of every single search, so kept lean. The graph segments (main and delta)
        are searched at once, each on its own core, in one native call that merges them by
        distance: a query costs its largest segment rather than the sum (at 1M + a 100k
        delta, 2.8 ms against 3.7 ms at ef 384). A graph segment searched alone is asked
        once for as many candidates as :meth:`_search_segment` would ask first, without
        the batch path's array bookkeeping (~100 µs a segment). What that path would
        answer otherwise (exactly, past half a segment; again, when tombstones ate too
        many candidates; pending vectors) it answers.
        """
        found: list[tuple[np.ndarray, np.ndarray]] = []
        rest = self._segments
        joined = self._search_joint(query, k, ef)
        if joined is not None:
            found.append(joined)
            rest = [(seg, info) for seg, info in rest if not isinstance(seg, Segment)]
        for seg, info in rest:
            want = k if k < info.live else info.live
            count = want if not info.dead else _candidates(k, info)
            if isinstance(seg, Segment) and count * 2 < info.count:
                keys, dists = seg.search_one(query, count, ef=ef)
                if info.dead:
                    alive = ~is_in_sorted(keys, self.dead)
                    keys, dists = keys[alive][:want], dists[alive][:want]
                if len(keys) >= want:
                    found.append((keys, dists))
                    continue
            keys2, dists2 = self._search_segment(seg, info, query.reshape(1, -1), k, ef, 1)
            n = int(np.isfinite(dists2[0]).sum())
            found.append((keys2[0, :n], dists2[0, :n]))
        if len(found) == 1:
            return found[0][0], found[0][1].astype(np.float32, copy=False)
        if not found:
            return np.empty(0, np.uint64), np.empty(0, np.float32)
        keys = np.concatenate([f[0] for f in found])
        dists = np.concatenate([f[1].astype(np.float32, copy=False) for f in found])
        order = np.argsort(dists, kind="stable")[:k]
        return keys[order], dists[order]

    def _search_joint(self, query: np.ndarray, k: int, ef: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The live hits of one query over every graph segment at once, or None when that
        does not apply (one graph segment, one core, a segment small enough for exact search
        at this ``k``) or left fewer than ``k`` live hits (then each segment is asked alone)."""
        graphs = [(seg, info) for seg, info in self._segments if isinstance(seg, Segment)]
        if len(graphs) < 2 or len(graphs) > JOINT_MAX_FILES or _CPUS < 2:
            return None
        refined = [seg.refined for seg, _info in graphs if seg.refined is not None]
        if refined and len(refined) < len(graphs):
            return None  # an i8 graph written before vectors files beside one with them
        count = max(k if not info.dead else _candidates(k, info) for _seg, info in graphs)
        count *= RERANK if refined else 1
        if any(count * 2 >= info.count for _seg, info in graphs):
            return None
        if self._joint is None:
            with self._joint_lock:
                if self._joint is None:
                    self._joint = Joint([seg.path for seg, _info in graphs], sets=_JOINT_SETS)
        keys, dists, counts = self._joint.search(
            query.reshape(1, -1),
            count,
            ef=ef or self.manifest.config.params.ef_search,
            threads=min(len(graphs), _CPUS),
        )
        n = int(counts[0])
        keys, dists = keys[0, :n], dists[0, :n]
        if len(self.dead):
            alive = ~is_in_sorted(keys, self.dead)
            keys, dists = keys[alive], dists[alive]
        if refined:
            # Each key is in one segment: its exact distance there, inf in the others.
            dists = np.minimum.reduce([r.distances(query, keys) for r in refined])
            order = np.argsort(dists, kind="stable")
            keys, dists = keys[order], dists[order]
        if len(keys) < min(k, sum(info.live for _seg, info in graphs)):
            return None
        return keys[:k], dists[:k]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        ef: int | None,
        threads: int,
        allowed: np.ndarray | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row ids, distances, valid count per query), nearest first; rows padded past the count.

        ``allowed`` (sorted row ids) restricts the search to those rows, still returning
        ``k`` results per query whenever ``k`` of them are live. ``exact`` compares the
        queries with every vector instead of walking the graph.
        """
        nq = len(queries)
        if allowed is not None:
            given = allowed
            allowed = allowed[~is_in_sorted(allowed, self.dead)] if len(self.dead) else allowed
            n, share = len(allowed), len(allowed) / max(1, self.manifest.live_rows)
            if (
                n <= EXACT_ALLOWED
                or share < EXACT_FRACTION_ONCE
                or (share < EXACT_FRACTION and self._keeps(given, n * (self.manifest.config.dim * 4 + 8)))
            ):
                return self._search_exact(queries, k, allowed, given)
        parts = [
            self._search_segment(seg, info, queries, k, ef, threads, allowed, exact) for seg, info in self._segments
        ]
        if not parts:
            return (np.full((nq, 0), NO_KEY), np.full((nq, 0), np.inf, np.float32), np.zeros(nq, np.int64))
        if len(parts) == 1:
            keys, dists = parts[0]
        else:
            keys = np.concatenate([p[0] for p in parts], axis=1)
            dists = np.concatenate([p[1] for p in parts], axis=1)
            order = np.argsort(dists, axis=1, kind="stable")[:, :k]
            keys = np.take_along_axis(keys, order, axis=1)
            dists = np.take_along_axis(dists, order, axis=1)
        counts = np.isfinite(dists).sum(axis=1)
        return keys, dists, counts

    def _search_exact(
        self, queries: np.ndarray, k: int, allowed: np.ndarray, given: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Brute force over the allowed rows: cheaper than asking the graph for many candidates."""
        nq = len(queries)
        exact = self._exact_set(allowed, given)
        if not len(exact):
            return (np.full((nq, 0), NO_KEY), np.full((nq, 0), np.inf, np.float32), np.zeros(nq, np.int64))
        keys, nearest = exact.nearest(queries, k)
        return keys, nearest, np.full(nq, keys.shape[1], dtype=np.int64)

    def _exact_set(self, allowed: np.ndarray, given: np.ndarray) -> ExactSet:
        """The live allowed rows' vectors, gathered once per cached filter (see :meth:`filtered`:
        its row ids are the same array on every query)."""
        kept = self._kept_set(given)
        if kept is not None:
            return kept
        ids_parts, vec_parts = [], []
        for seg, _info in self._segments:
            here = allowed[seg.contains(allowed)]
            if len(here):
                ids_parts.append(here)
                vec_parts.append(seg.get(here))
        dim = self.manifest.config.dim
        exact = ExactSet(
            np.concatenate(ids_parts) if ids_parts else np.empty(0, np.uint64),
            np.concatenate(vec_parts) if vec_parts else np.empty((0, dim), np.float32),
            self.manifest.config.metric,
        )
        if self.is_filtered(given):  # else a one-off set of rows (keys passed to allow=)
            with self._filtered_lock:
                # Keyed by the array's id while holding the array itself: the id cannot be reused.
                self._exact_sets[id(given)] = (given, exact)
        return exact

    def _kept_set(self, given: np.ndarray) -> ExactSet | None:
        with self._filtered_lock:
            kept = self._exact_sets.get(id(given))
        return kept[1] if kept is not None and kept[0] is given else None

    def _keeps(self, given: np.ndarray, nbytes: int) -> bool:
        """Whether a cached filter's vectors are kept, or fit beside those kept (of filters
        still cached). Filters past that go through the graph: evicting kept vectors to
        gather others would gather on every query when queries cycle over more filters than fit."""
        if nbytes > EXACT_BYTES or not self.is_filtered(given):
            return False
        if self._kept_set(given) is not None:
            return True
        m = self.manifest
        budget = max(EXACT_KEPT_BYTES, m.live_rows * m.config.dim * 4)
        with self._filtered_lock:
            live = {id(ids) for ids in self._filtered.values()}
            for stale in [key for key in self._exact_sets if key not in live]:
                del self._exact_sets[stale]  # its filter is no longer cached
            return sum(e.nbytes for _a, e in self._exact_sets.values()) + nbytes <= budget

    def _search_segment(
        self,
        seg: AnySegment,
        info: SegmentInfo,
        queries: np.ndarray,
        k: int,
        ef: int | None,
        threads: int,
        allowed: np.ndarray | None = None,
        exact: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        nq = len(queries)
        live = info.live if allowed is None else int(seg.contains(allowed).sum())
        want = width = min(k, live)
        out_keys = np.full((nq, width), NO_KEY, dtype=np.uint64)
        out_dists = np.full((nq, width), np.inf, dtype=np.float32)
        if want == 0:
            return out_keys, out_dists
        # Grows fourfold on each shortfall, and past half the segment turns exact.
        count = min(info.count, _candidates(k, info, live))
        if exact or seg.exact_only:
            exact = True
            # Exactly the nearest k + rejected contain at least k live ones.
            count = min(info.count, k + info.count - live)
        pending = np.arange(nq)
        while len(pending):
            exact = exact or count * 2 >= info.count
            if exact and count * 2 >= info.count:
                count = info.count
            keys, dists, valid_n = seg.search(queries[pending], count, ef=ef, exact=exact, threads=threads)
            valid = np.arange(keys.shape[1])[None, :] < valid_n[:, None]
            if allowed is not None:
                valid &= is_in_sorted(keys, allowed)
            elif info.dead:
                valid &= ~is_in_sorted(keys, self.dead)
            done = (valid.sum(axis=1) >= want) | exact
            rows = pending[done]
            if len(rows):
                v = valid[done]
                order = np.argsort(~v, axis=1, kind="stable")[:, :width]
                picked_keys = np.take_along_axis(keys[done], order, axis=1)
                picked_dists = np.take_along_axis(dists[done].astype(np.float32), order, axis=1)
                ok = np.take_along_axis(v, order, axis=1)
                out_keys[rows] = np.where(ok, picked_keys, NO_KEY)
                out_dists[rows] = np.where(ok, picked_dists, np.inf)
            pending = pending[~done]
            count = min(info.count, count * 4)
        return out_keys, out_dists


def _candidates(k: int, info: SegmentInfo, live: int | None = None) -> int:
    """How many candidates to ask a segment for so that ``k`` survive: a share
    1 - live/count of them is expected to be rejected (tombstoned, or not allowed); ask
    for enough to cover that twice over."""
    rejected = 1 - (info.live if live is None else live) / info.count
    return k + math.ceil(2 * k * rejected / (1 - rejected)) + (4 if rejected else 0)
