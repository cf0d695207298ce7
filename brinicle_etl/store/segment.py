"""usearch files: building them and searching them. The only module that touches usearch.

A segment is one immutable usearch file whose keys are row ids. Readers open it as
memory-mapped views; usearch serialises calls on one index object, so a segment
keeps a small pool of views (cheap: they share the mapping) to let threads search
in parallel.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from usearch.index import Index, Indexes

try:
    from usearch.compiled import ScalarKind

    _UNKNOWN_DTYPE: Any = ScalarKind.Unknown
except ImportError:  # pragma: no cover - older usearch: the public search is used
    _UNKNOWN_DTYPE = None

from brinicle_etl._cpus import usable_cpus
from brinicle_etl._fs import free_bytes, fsync_file
from brinicle_etl.errors import ConfigError, CorruptCollectionError
from brinicle_etl.store.manifest import CollectionConfig, SegmentInfo
from brinicle_etl.store.order import insert_order
from brinicle_etl.store.reach import unreachable
from brinicle_etl.store.refine import RERANK, Kept, open_refined, refined_name, refines, valid_keys
from brinicle_etl.types import NO_KEY, BuildProgress, HnswParams, Metric

__all__ = [
    "GRAPH_ROWS",
    "GRAPHS_MOST",
    "JOINT_MAX_FILES",
    "Graphs",
    "Joint",
    "Segment",
    "SegmentBuilder",
    "build_graphs",
]

V = TypeVar("V")

_USEARCH_METRIC = {"cosine": "cos", "ip": "ip", "l2sq": "l2sq"}
_ADD_CHUNK = 32_768
_RELINK_FIRST_EF = 4
_RELINK_EF = 64
_RELINK_COUNT = 4
_RELINK_COPIES = 64
JOINT_MAX_FILES = 64
"""More segments than this (a collection of many shards) are searched shard by shard."""
_JOINT_VIEW_BUDGET = 256
GRAPH_ROWS = 1 << 23
"""A build fills one graph up to this many vectors (8,388,608), then starts another, up to one
graph per core the build uses (at most :data:`GRAPHS_MOST`); past that each chunk goes to the
smallest. A single query searches the graphs together, a core each, in one native call (see
``Snapshot._search_joint``); a batch, one graph after the other. Split at 1M (two graphs on two
cores), a build ran 1.28-1.35x faster (each insert walks a smaller graph: results/graph.md,
peers.md), and a single query at a high ef answered faster (1.34 ms at recall 0.960 against
2.10 ms at 0.951), but at the default ef 64 it took 0.55-0.78 ms against one graph's 0.39
(64-d, k=10): every graph is walked, and one native call over two costs more than the walk
saves. Queries are many and a build is once, so a graph holds millions of vectors, and only
a build past that splits, where one graph's build takes hours."""
GRAPHS_MOST = 8
"""Every query walks every graph: a reader with fewer cores than the builder had pays for
each one, so a build makes no more than this many, whatever its threads."""


def _new_index(config: CollectionConfig, params: HnswParams) -> Any:
    return Index(
        ndim=config.dim,
        metric=_USEARCH_METRIC[config.metric],
        # Always explicit: usearch's default dtype depends on the CPU.
        dtype=config.dtype,
        connectivity=params.M,
        expansion_add=params.ef_construction,
        expansion_search=params.ef_search,
    )


def _add(
    index: Any,
    keys: np.ndarray,
    vectors: np.ndarray,
    metric: Metric,
    params: HnswParams,
    progress: BuildProgress | None,
) -> None:
    """Add in chunks, region by region (:mod:`~brinicle_etl.store.order`), in an order drawn
    from ``rng_seed`` (which fixes every node's level)."""
    total = len(keys)
    order = insert_order(vectors, metric, params.rng_seed)
    # usearch reads 0 as the machine's cores, which a container's CPU set may not include.
    threads = params.build_n_threads or usable_cpus()
    for start in range(0, total, _ADD_CHUNK):
        part = order[start : start + _ADD_CHUNK]
        index.add(keys[part], np.ascontiguousarray(vectors[part]), threads=threads)
        if progress:
            progress(min(start + _ADD_CHUNK, total), total)


def _link_unreachable(index: Any, path: Path) -> bool:
    """Add again, alone, the nodes of the index just saved at ``path`` that no search can
    reach; returns whether there were any (then the file is stale).

    Two threads linking at once can strand a node (unum-cloud/USearch#735: 3-10 of 300 8-d
    vectors in most builds, still so in 2.26), and a later insert that prunes a neighbour
    list can cut the last edge to one (3 of 1M text-like vectors in one build). Both are
    found by walking the saved graph (:mod:`~brinicle_etl.store.reach`: ~2 s at 1M),
    or, for a file layout that module does not read, by every node searching for itself.
    """
    lost = unreachable(path, edges_at_level_0=index.levels_stats[0].edges)
    if lost is None:
        lost = _unfound(index)
    if not len(lost):
        return False
    vectors = np.vstack(index.get(lost, dtype=np.float32))
    if len(lost) > _RELINK_COPIES:
        # Copies of one vector: neighbour lists keep few of the twins at distance 0, so many
        # copies go unlinked (and never all find themselves among a few nearest), and
        # re-adding each alone would cost a one-thread build of them for little (a search
        # finds their reachable twin, at the same distance).
        _, distances = _self_search(index, vectors, ef=_RELINK_EF, count=1)
        copies = distances[:, 0] <= 0
        if copies.sum() > max(_RELINK_COPIES, len(index) // 100):
            lost, vectors = lost[~copies], vectors[~copies]
            if not len(lost):
                return False
    index.remove(lost)
    index.add(lost, vectors, threads=1)  # one thread links without the race
    return True


def _unfound(index: Any) -> np.ndarray:
    """Keys of the nodes that do not find themselves: a first pass at ef 4 for every node
    (measured at 100k x 128: ~15% miss, mostly hard to reach, not stranded), and only those
    again at ef 64 among a few nearest, because a stranded duplicate's nearest is its
    reachable twin at distance 0."""
    keys = np.asarray(index.keys, dtype=np.uint64)
    missed_parts = []
    for start in range(0, len(keys), _ADD_CHUNK):
        part = keys[start : start + _ADD_CHUNK]
        vectors = np.vstack(index.get(part, dtype=np.float32))
        first = _self_search(index, vectors, ef=_RELINK_FIRST_EF, count=1)
        missed = first[0][:, 0] != part
        if missed.any():
            nearest, _ = _self_search(index, vectors[missed], ef=_RELINK_EF, count=_RELINK_COUNT)
            missed_parts.append(part[missed][~(nearest == part[missed][:, None]).any(axis=1)])
    return np.concatenate(missed_parts) if missed_parts else np.empty(0, np.uint64)


def _self_search(index: Any, vectors: np.ndarray, *, ef: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    previous = index.expansion_search
    index.expansion_search = ef
    try:
        keys, distances, _ = _search_many(index, vectors, count, exact=False, threads=0)
    finally:
        index.expansion_search = previous
    return keys, distances


def _save(index: Any, path: Path, *, sync: bool = True) -> None:
    try:
        index.save(str(path))
    except RuntimeError as exc:
        # usearch reports a short write as "Failed to serialize into stream", without errno.
        if free_bytes(path.parent) < index.serialized_length:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise
    if sync:
        fsync_file(path)


def _search_many(
    index: Any, queries: np.ndarray, count: int, *, exact: bool, threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, distances, valid counts) for a matrix of queries, always padded to ``count`` columns.

    Calls the compiled search directly when it is there: usearch's Python wrapper builds
    result objects per call that cost a measurable share of a fast query (usearch 2.x;
    the public method is the fallback).
    """
    threads = threads or usable_cpus()
    compiled = getattr(index, "_compiled", None)
    if compiled is not None and _UNKNOWN_DTYPE is not None:
        keys, dists, counts = compiled.search_many(
            queries, count=count, exact=exact, threads=threads, dtype=_UNKNOWN_DTYPE
        )[:3]
        return keys, dists, counts
    found = index.search(queries, count, exact=exact, threads=threads)
    if len(queries) == 1:  # the wrapper hands back one query's matches unpadded
        n = len(found.keys)
        keys = np.full((1, count), NO_KEY, dtype=np.uint64)
        dists = np.full((1, count), np.inf, dtype=np.float32)
        keys[0, :n] = found.keys
        dists[0, :n] = found.distances
        return keys, dists, np.array([n])
    return np.asarray(found.keys), np.asarray(found.distances), np.asarray(found.counts)


class SegmentBuilder:
    """A usearch index being filled in memory: fresh, or a copy of an existing file to extend."""

    def __init__(
        self,
        config: CollectionConfig,
        params: HnswParams,
        source: SegmentInfo | None = None,
        *,
        directory: Path,
    ):
        self.params = params
        self._metric = config.metric
        # An i8 graph's vectors as given, written beside it (see refine.py); a scratch file
        # holds them until then.
        self._kept = Kept(directory, config.dim) if refines(config.dtype) else None
        if source is None:
            self.index = _new_index(config, params)
            return
        self.index = _restore(directory / source.file, view=False)
        self.index.expansion_add = params.ef_construction
        if self._kept is not None:
            if source.vectors:
                old = open_refined(directory / source.vectors, metric=config.metric)
                self._kept.part(old.keys, old.vectors)
            else:  # written before i8 segments kept their vectors: the codes are all there is
                keys = np.asarray(self.index.keys, dtype=np.uint64)
                self._kept.part(keys, _decoded(self.index, keys))

    def add(self, keys: np.ndarray, vectors: np.ndarray, progress: BuildProgress | None = None) -> None:
        _add(self.index, keys, vectors, self._metric, self.params, progress)
        if self._kept is not None:
            self._kept.keep(keys, vectors)

    def __len__(self) -> int:
        return len(self.index)

    def save(self, path: Path) -> SegmentInfo:
        """Write the index durably to ``path``, every node reachable, and the vectors file
        beside it when its dtype keeps one."""
        vectors = None
        if self._kept is not None:
            vectors = refined_name(path.name)
            self._kept.write(path.parent / vectors)
        _save(self.index, path, sync=False)
        if _link_unreachable(self.index, path):
            _save(self.index, path, sync=False)
        fsync_file(path)
        return SegmentInfo(file=path.name, count=len(self.index), vectors=vectors)


class Graphs:
    """The graphs of a build (see :data:`GRAPH_ROWS`): vectors fill one graph, then the next."""

    def __init__(self, config: CollectionConfig, params: HnswParams, *, directory: Path, total: int | None = None):
        self._config, self._params, self._directory = config, params, directory
        # One graph per core the build uses: one thread builds one graph, as before.
        self._most = min(params.build_n_threads or usable_cpus(), GRAPHS_MOST)
        # Known in advance (a rebuild): as many graphs as it takes, of equal size, rather
        # than full ones and a small last one.
        self._rows = GRAPH_ROWS
        if total is not None and total > GRAPH_ROWS:
            self._rows = math.ceil(total / min(self._most, math.ceil(total / GRAPH_ROWS)))
        self.parts: list[SegmentBuilder] = []

    def add(self, keys: np.ndarray, vectors: np.ndarray, progress: BuildProgress | None = None) -> None:
        total, done = len(keys), 0
        while done < total:
            part, room = self._next()
            take = min(room, total - done)
            step = None if progress is None else _offset(progress, done, total)
            part.add(keys[done : done + take], vectors[done : done + take], step)
            done += take

    def _next(self) -> tuple[SegmentBuilder, int]:
        """The graph the next vectors go to, and how many it takes before the choice is made again."""
        if self.parts and len(self.parts[-1]) < self._rows:
            return self.parts[-1], self._rows - len(self.parts[-1])
        if len(self.parts) < self._most:
            self.parts.append(SegmentBuilder(self._config, self._params, directory=self._directory))
            return self.parts[-1], self._rows
        return min(self.parts, key=len), _ADD_CHUNK

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)


def _offset(progress: BuildProgress, base: int, total: int) -> BuildProgress:
    return lambda done, _of: progress(base + done, total)


def build_graphs(
    directory: Path,
    named: Callable[[], str],
    keys: np.ndarray,
    vectors: np.ndarray,
    config: CollectionConfig,
    params: HnswParams,
    progress: BuildProgress | None = None,
) -> tuple[SegmentInfo, ...]:
    """Write fresh HNSW graphs of ``vectors`` under ``keys`` (see :data:`GRAPH_ROWS`) into
    ``directory``, each under a file name ``named()`` gives, with the vectors file beside it
    when its dtype keeps one."""
    graphs = Graphs(config, params, directory=directory, total=len(keys))
    graphs.add(keys, vectors, progress)
    return tuple(part.save(directory / named()) for part in graphs.parts)


def _decoded(index: Any, keys: np.ndarray) -> np.ndarray:
    """The vectors of ``keys`` as the index holds them, in float32, a chunk at a time."""
    vectors = np.empty((len(keys), index.ndim), dtype=np.float32)
    for start in range(0, len(keys), _ADD_CHUNK):
        part = keys[start : start + _ADD_CHUNK]
        vectors[start : start + len(part)] = np.vstack(index.get(part, dtype=np.float32))
    return vectors


def _restore(path: Path, *, view: bool) -> Any:
    try:
        index: Any = Index.restore(str(path), view=view)
    except (RuntimeError, ValueError, OSError) as exc:
        raise CorruptCollectionError(f"cannot open index file {path}: {exc}") from exc
    if index is None:
        if not path.exists():
            raise FileNotFoundError(path)
        raise CorruptCollectionError(f"{path} is not a usearch index file")
    return index


class _Views(Generic[V]):
    """Views of one file (or one set of files), lent to one thread at a time: usearch
    serialises calls on one index object, and views are cheap (they share the mapping).
    At most ``most`` are opened; past that a thread waits for one to come back."""

    def __init__(self, open_view: Callable[[], V], *, most: int):
        self._open_view = open_view
        self._idle: queue.SimpleQueue[V] = queue.SimpleQueue()
        self._idle.put(open_view())
        self._opened = 1
        self._most = most
        self._lock = threading.Lock()

    @contextmanager
    def lend(self) -> Iterator[V]:
        view = self.take()
        try:
            yield view
        finally:
            self._idle.put(view)

    def take(self) -> V:
        """A view for this thread alone; hand it back with :meth:`give_back`."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            fresh = self._opened < self._most
            self._opened += fresh
        if not fresh:
            return self._idle.get()
        try:
            return self._open_view()
        except BaseException:
            with self._lock:  # its place in the pool is free again
                self._opened -= 1
            raise

    def give_back(self, view: V) -> None:
        self._idle.put(view)


class Segment:
    """A read-only usearch file, searched through a pool of memory-mapped views; with its
    vectors file (an i8 graph's, see refine.py), candidates are re-scored on it."""

    exact_only = False

    def __init__(self, path: Path, *, ef_search: int, vectors: Path | None = None, metric: str = "cosine"):
        self.path = path
        self._ef = ef_search
        self._views = _Views(lambda: _restore(path, view=True), most=max(2, usable_cpus()))
        with self._views.lend() as first:
            self.count = len(first)
        self.refined = open_refined(vectors, metric=metric) if vectors is not None else None
        if self.refined is not None and self.refined.count != self.count:
            raise CorruptCollectionError(
                f"{vectors} holds {self.refined.count} vectors for the {self.count} of {path.name}"
            )

    def search(
        self, queries: np.ndarray, count: int, *, ef: int | None, exact: bool, threads: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``count`` per query: (keys, distances, how many are valid per row)."""
        refined = self.refined
        wide = count if refined is None else count * RERANK
        if refined is not None and (exact or wide * 2 >= self.count):
            keys, dists = refined.nearest(queries, count)  # cheaper than a graph walk that wide
            return _padded(keys, dists, count)
        with self._views.lend() as index:
            want_ef = ef or self._ef
            if index.expansion_search != want_ef:
                index.expansion_search = want_ef
            found = _search_many(index, queries, wide, exact=exact, threads=threads)
        if refined is None:
            return found
        keys, dists = refined.rescore(queries, valid_keys(found[0], found[2]), count)
        return _padded(keys, dists, count)

    def search_one(self, query: np.ndarray, count: int, *, ef: int | None) -> tuple[np.ndarray, np.ndarray]:
        """One query's valid matches: (keys, distances). The path of every single search, so
        written out by hand: a view taken from the pool without a context manager, and the
        compiled search called directly (together ~5 µs of a 40-100 µs query)."""
        refined = self.refined
        wide = count if refined is None else count * RERANK
        if refined is not None and wide * 2 >= self.count:
            keys, dists = refined.nearest(query.reshape(1, -1), count)
            return keys[0], dists[0]
        views = self._views
        index = views.take()
        try:
            want_ef = ef or self._ef
            if index.expansion_search != want_ef:
                index.expansion_search = want_ef
            keys, dists, counts = _search_many(index, query.reshape(1, -1), wide, exact=False, threads=1)
        finally:
            views.give_back(index)
        n = int(counts[0])
        if refined is not None:
            return refined.rescore_one(query, keys[0, :n], count)
        return keys[0, :n], dists[0, :n]

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if self.refined is not None:
            return self.refined.contains(np.asarray(keys).reshape(-1))
        with self._views.lend() as index:
            found: np.ndarray = np.asarray(index.contains(keys), dtype=bool).reshape(-1)
            return found

    def get(self, keys: np.ndarray) -> np.ndarray:
        if self.refined is not None:
            return self.refined.get(keys)
        with self._views.lend() as index:
            vectors: np.ndarray = np.vstack(index.get(keys, dtype=np.float32))
            return vectors

    def vectors(self, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All live (key, float32 vector) pairs, for compaction.

        From the vectors file when there is one (the vectors as given); else read back
        through usearch's own conversion, so re-adding them to an index of the same dtype
        reproduces the stored values.
        """
        if self.refined is not None:
            return self.refined.live(dead)
        with self._views.lend() as index:
            keys = np.asarray(index.keys, dtype=np.uint64)
            if len(dead):
                keys = keys[~np.isin(keys, dead)]
            return keys, _decoded(index, keys)


def _padded(keys: np.ndarray, dists: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Results widened to ``count`` columns (``NO_KEY`` / inf), with the valid count per row."""
    nq, width = keys.shape
    if width < count:
        keys = np.concatenate([keys, np.full((nq, count - width), NO_KEY, dtype=np.uint64)], axis=1)
        dists = np.concatenate([dists, np.full((nq, count - width), np.inf, dtype=np.float32)], axis=1)
    return keys, dists.astype(np.float32, copy=False), np.isfinite(dists).sum(axis=1)


class Joint:
    """Several segment files searched as one in a single native call (usearch's ``Indexes``,
    which fans out in C++ threads and merges by distance): a sharded collection's fan-out
    without a Python call per shard. Keys must be unique across the files. Each view set
    maps every file, so the sets are few: :data:`JOINT_MAX_FILES` files at most, and
    :data:`_JOINT_VIEW_BUDGET` views over all sets."""

    def __init__(self, paths: list[Path], *, sets: int | None = None):
        if len(paths) > JOINT_MAX_FILES:
            raise ConfigError(f"a joint search takes at most {JOINT_MAX_FILES} files; got {len(paths)}")
        self.paths = paths
        most = max(1, min(sets or usable_cpus(), _JOINT_VIEW_BUDGET // max(1, len(paths))))
        self._views = _Views(self._open, most=most)

    def _open(self) -> tuple[Any, list[Any]]:
        views = [_restore(path, view=True) for path in self.paths]
        return Indexes(indexes=views), views

    def search(
        self, queries: np.ndarray, count: int, *, ef: int, threads: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top ``count`` over every file per query: (keys, distances, how many are valid per row)."""
        with self._views.lend() as (joint, views):
            for view in views:
                if view.expansion_search != ef:
                    view.expansion_search = ef
            found = joint.search(queries, count, threads=threads)
        keys, dists = np.asarray(found.keys), np.asarray(found.distances)
        if keys.ndim == 1:  # one query comes back as one row
            return keys[None, :], dists[None, :], np.array([len(keys)])
        return keys, dists, np.asarray(found.counts)
