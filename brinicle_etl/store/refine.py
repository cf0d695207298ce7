"""The vectors of an 8-bit graph as given, kept beside its file: searches re-score on them.

usearch's ``i8`` keeps each vector as 8-bit codes. Building and walking such a graph is
cheaper than ``bf16`` (``benchmarks/results/graph.md``), but its distances are coarse: alone,
recall@10 stops near 0.93-0.95 at any ef. So a segment of an ``i8`` collection keeps the
float32 vectors in a file beside the graph: a search asks the graph for :data:`RERANK`
times as many candidates and ranks them by their exact distances, and lookups and
compaction read the vectors here, so nothing is lost to the codes.

The file is two ``.npy`` records one after the other, the keys (sorted, uint64) and then
their vectors (float32, a row per key), read through memory maps: a query touches only
its candidates' rows.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from pathlib import Path, PurePath
from typing import Any, BinaryIO

import numpy as np

from brinicle_etl._fs import fsync_file
from brinicle_etl.errors import CorruptCollectionError
from brinicle_etl.store.files import new_name
from brinicle_etl.store.flat import exact_distances, nearest_of
from brinicle_etl.store.rows import sorted_positions
from brinicle_etl.types import NO_KEY

__all__ = ["RERANK", "Kept", "Refined", "open_refined", "refined_name", "refines", "write_refined"]

RERANK = 4
"""Candidates asked of the graph per result wanted. At 1M x 128 text-like vectors, an i8
graph re-scored from 4x k reaches the recall of the bf16 graph at the same ef, or better."""
_WRITE_ROWS = 65_536
_SCAN_ROWS = 65_536
_CELLS = 1 << 22
"""Queries are re-scored in chunks of at most this many candidate floats (16 MB)."""


def refines(dtype: str) -> bool:
    """Whether a segment of this vector dtype keeps its vectors beside the graph."""
    return dtype == "i8"


def refined_name(file: str) -> str:
    """The name of the vectors file beside the graph file ``file``."""
    return str(PurePath(file).with_suffix(".f32"))


def _header(fh: BinaryIO, dtype: str, shape: tuple[int, ...]) -> None:
    np.lib.format.write_array_header_1_0(
        fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    )


def write_refined(path: Path, parts: list[tuple[np.ndarray, np.ndarray]], dim: int) -> None:
    """Write the (keys, vectors) ``parts`` durably to ``path`` as one file sorted by key,
    a block of rows at a time (never a sorted copy of them all)."""
    keys = np.concatenate([k for k, _v in parts]) if parts else np.empty(0, np.uint64)
    order = np.argsort(keys, kind="stable")
    ends = np.cumsum([len(k) for k, _v in parts])
    with open(path, "wb") as fh:
        _header(fh, "<u8", (len(keys),))
        fh.write(np.ascontiguousarray(keys[order], dtype="<u8").data)
        _header(fh, "<f4", (len(keys), dim))
        for start in range(0, len(order), _WRITE_ROWS):
            rows = order[start : start + _WRITE_ROWS]
            part = np.searchsorted(ends, rows, side="right")
            block = np.empty((len(rows), dim), dtype="<f4")
            for i in np.unique(part).tolist():
                mine = part == i
                block[mine] = parts[i][1][rows[mine] - (ends[i - 1] if i else 0)]
            fh.write(block.data)
    fsync_file(path)


class Kept:
    """The vectors a build is given, for its vectors file: appended to a scratch file in the
    collection's directory as they come (a 10M x 768 build would hold 30 GB of them in
    memory), their keys in memory. Parts already on disk (an extended segment's vectors
    file) are read from where they are. A scratch file left by a crash is a managed file:
    the next write removes it."""

    def __init__(self, directory: Path, dim: int):
        self._directory = directory
        self._dim = dim
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._keys: list[np.ndarray] = []
        self._scratch: Path | None = None
        self._fh: BinaryIO | None = None

    def part(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Vectors to take as they are (not copied: they must not change before the save)."""
        self._parts.append((keys, vectors))

    def keep(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if self._fh is None:
            self._scratch = self._directory / new_name("spill", 0, ".f32")
            self._fh = open(self._scratch, "wb")  # noqa: SIM115 - open until the save
        self._fh.write(np.ascontiguousarray(vectors, dtype="<f4").data)
        self._keys.append(np.array(keys, dtype=np.uint64))

    def write(self, path: Path) -> None:
        """Write them all to ``path``, sorted by key, and let the scratch file go."""
        parts = list(self._parts)
        if self._fh is not None and self._scratch is not None:
            self._fh.close()
            keys = np.concatenate(self._keys)
            if len(keys):
                parts.append((keys, np.memmap(self._scratch, dtype="<f4", mode="r", shape=(len(keys), self._dim))))
        try:
            write_refined(path, parts, self._dim)
        finally:
            self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._scratch is not None:
            self._scratch.unlink(missing_ok=True)
        self._fh = self._scratch = None


def _read_header(fh: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    if fortran:
        raise CorruptCollectionError(f"{path} holds a Fortran-ordered array")
    return shape, dtype, fh.tell()


class Refined:
    """A segment's vectors by key, memory-mapped: looked up, re-scored against queries,
    scanned exactly."""

    def __init__(self, path: Path, *, metric: str):
        self.path = path
        self._metric = metric
        try:
            with open(path, "rb") as fh:
                key_shape, key_dtype, at = _read_header(fh, path)
                fh.seek(at + 8 * key_shape[0])
                shape, dtype, vectors_at = _read_header(fh, path)
            self.keys = np.fromfile(path, dtype="<u8", count=key_shape[0], offset=at)
            if (
                key_dtype != np.dtype("<u8")
                or dtype != np.dtype("<f4")
                or len(shape) != 2
                or shape[0] != len(self.keys)
            ):
                raise CorruptCollectionError(
                    f"{path}: expected sorted keys (uint64) and a float32 row per key; "
                    f"got {key_dtype} x {key_shape} and {dtype} x {shape}"
                )
            if path.stat().st_size != vectors_at + 4 * shape[0] * shape[1]:
                raise CorruptCollectionError(f"{path} is cut short or has bytes past its vectors")
            # A plain array over the mapping: indexing a np.memmap costs ~10 us more a call.
            self.vectors: np.ndarray = (
                np.memmap(path, dtype="<f4", mode="r", offset=vectors_at, shape=shape).view(np.ndarray)
                if shape[0]
                else np.empty(shape, np.float32)
            )
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, IndexError) as exc:
            raise CorruptCollectionError(f"cannot read vectors file {path}: {exc}") from exc
        if len(self.keys) > 1 and not bool(np.all(self.keys[1:] > self.keys[:-1])):
            raise CorruptCollectionError(f"{path}: its keys are not sorted and unique")
        self.count = len(self.keys)

    def positions(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each key's row here (0 where absent) and whether it is here."""
        return sorted_positions(np.asarray(keys, dtype=np.uint64), self.keys)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.positions(keys)[1]

    def get(self, keys: np.ndarray) -> np.ndarray:
        at, found = self.positions(np.asarray(keys).reshape(-1))
        if not found.all():
            raise KeyError(f"{int((~found).sum())} key(s) have no vector in {self.path.name}")
        return np.asarray(self.vectors[at], dtype=np.float32)

    def live(self, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (key, vector) pair but the ``dead`` keys'."""
        alive = ~np.isin(self.keys, dead) if len(dead) else np.ones(self.count, dtype=bool)
        return self.keys[alive], np.asarray(self.vectors[alive], dtype=np.float32)

    def scored(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Each query's exact distance to each of its own candidate keys; inf for a key not here."""
        nq, width = candidates.shape
        queries = np.asarray(queries, dtype=np.float32)
        at, found = self.positions(candidates)
        dists = np.empty((nq, width), dtype=np.float32)
        step = max(1, _CELLS // max(1, width * self.vectors.shape[1]))
        for start in range(0, nq, step):
            mine = at[start : start + step]
            rows = np.asarray(self.vectors[mine.reshape(-1)], dtype=np.float32).reshape(*mine.shape, -1)
            dists[start : start + step] = _paired(queries[start : start + step], rows, self._metric)
        dists[~found] = np.inf
        return dists

    def rescore(self, queries: np.ndarray, candidates: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Per query, the ``count`` nearest of its candidate keys (``NO_KEY`` pads) by exact
        distance: (keys, distances), padded with ``NO_KEY`` / inf."""
        return rescored([self], queries, candidates, count)

    def rescore_one(self, query: np.ndarray, candidates: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`rescore` for one query and its valid candidates (a 1-d array), without the
        batch's padding: the path of every single i8 search, ~30 us less. A key not here
        is left out."""
        dists = self.distances(query, candidates)
        order = np.argsort(dists, kind="stable")[:count]
        order = order[np.isfinite(dists[order])]  # missing keys are inf: they sort last
        return candidates[order], dists[order]

    def distances(self, query: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """One query's exact distance to each of ``keys``; inf for a key not here."""
        at, found = self.positions(keys)
        dists = np.full(len(keys), np.inf, dtype=np.float32)
        if found.any():
            dists[found] = _one(query, self.vectors[at[found]], self._metric)
        return dists

    def nearest(self, queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over every vector: (keys, distances) per query, ``min(count,
        self.count)`` columns. A few queries at a time, each against every row in one
        pass (when ``count`` nears the segment's size, merging blocks would sort it again
        and again), rows read a block at a time."""
        step = max(1, _CELLS // max(1, self.count))
        parts = [self._nearest(queries[i : i + step], count) for i in range(0, len(queries), step)]
        if not parts:
            return np.empty((0, min(count, self.count)), np.uint64), np.empty((0, min(count, self.count)), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _nearest(self, queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        dists = np.empty((len(queries), self.count), dtype=np.float32)
        for start in range(0, self.count, _SCAN_ROWS):
            block = np.asarray(self.vectors[start : start + _SCAN_ROWS], dtype=np.float32)
            dists[:, start : start + len(block)] = exact_distances(queries, block, self._metric)
        return nearest_of(self.keys, dists, count)


_opened: weakref.WeakValueDictionary[tuple[str, int, int, int, str], Refined] = weakref.WeakValueDictionary()
_opened_lock = threading.Lock()


def open_refined(path: Path, *, metric: str) -> Refined:
    """The vectors file at ``path``, shared by every segment that has it open: a segment's
    files never change, and a reader opening the next generation would read the keys of
    the same main again (80 MB at 10M rows). Held only while in use (weakly): a removed
    generation's file is let go with its last segment."""
    st = os.stat(path)
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, metric)
    with _opened_lock:
        found = _opened.get(key)
    if found is not None:
        return found
    refined = Refined(path, metric=metric)
    with _opened_lock:
        return _opened.setdefault(key, refined)


def valid_keys(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A graph search's keys with every column past a row's valid count set to ``NO_KEY``:
    usearch leaves those unwritten, and they may hold any key."""
    return np.where(np.arange(keys.shape[1])[None, :] < np.asarray(counts)[:, None], keys, NO_KEY)


def rescored(
    refined: list[Refined], queries: np.ndarray, candidates: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``count`` nearest of its candidate keys (``NO_KEY`` pads) by exact
    distance, each key scored by the vectors file that holds it (several graphs' candidates,
    one search): (keys, distances), padded with ``NO_KEY`` / inf."""
    dists = np.minimum.reduce([r.scored(queries, candidates) for r in refined])
    order = np.argsort(dists, axis=1, kind="stable")[:, :count]
    keys = np.take_along_axis(candidates, order, axis=1)
    dists = np.take_along_axis(dists, order, axis=1)
    keys[~np.isfinite(dists)] = NO_KEY
    return keys, dists


def _one(query: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Distances of one query (dim,) to rows (w, dim), as :func:`_paired` measures them."""
    query = np.asarray(query, dtype=np.float32)
    dots = rows @ query
    if metric == "cosine":
        # Each norm apart, as _paired takes them: their product squared can overflow float32.
        norms = np.sqrt(np.einsum("wd,wd->w", rows, rows)) * math.sqrt(float(query @ query))
        out: np.ndarray = 1.0 - dots / np.maximum(norms, 1e-30)
    elif metric == "ip":
        out = 1.0 - dots
    else:
        out = np.maximum(float(query @ query) - 2.0 * dots + np.einsum("wd,wd->w", rows, rows), 0.0)
    return out.astype(np.float32, copy=False)


def _paired(queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Distances of each query (nq, dim) to its own rows (nq, w, dim), as usearch measures them."""
    dots = np.einsum("qd,qwd->qw", queries, rows)
    if metric == "cosine":
        norms = np.linalg.norm(rows, axis=2) * np.linalg.norm(queries, axis=1)[:, None]
        out: np.ndarray = 1.0 - dots / np.maximum(norms, 1e-30)
    elif metric == "ip":
        out = 1.0 - dots
    else:
        out = (queries * queries).sum(1)[:, None] - 2.0 * dots + (rows * rows).sum(2)
        np.maximum(out, 0.0, out=out)
    return out.astype(np.float32, copy=False)
