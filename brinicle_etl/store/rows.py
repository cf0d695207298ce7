"""Row files (Parquet) and tombstones: which key each row id carries, and which rows are live.

Row ids are handed out in increasing order and each write appends one file, so the
``_row_id`` column, read file after file in manifest order, is sorted. That lets a
sorted array plus ``searchsorted`` map usearch keys back to external ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from brinicle_etl._fs import fsync_file
from brinicle_etl.errors import CorruptCollectionError

__all__ = [
    "HASH",
    "KEY",
    "RESERVED_COLUMNS",
    "ROW_ID",
    "TEXT_HASH",
    "IdMap",
    "read_rows",
    "read_tombstones",
    "write_rows",
    "write_table",
    "write_tombstones",
]

ROW_ID = "_row_id"
KEY = "_key"
HASH, TEXT_HASH = "_hash", "_text_hash"
RESERVED_COLUMNS = (ROW_ID, KEY, HASH, TEXT_HASH)
"""Stored beside a table's own columns: the row id and key (the store's) and the content and
text hashes that decide what an ingest re-embeds (the pipeline's). No source column may take
these names, and no reader shows them as a row's fields."""


def write_rows(path: Path, row_ids: np.ndarray, keys: pa.Array, payload: pa.Table | None) -> None:
    columns: dict[str, pa.Array | pa.ChunkedArray] = {ROW_ID: pa.array(row_ids, pa.uint64()), KEY: keys}
    table = pa.table(columns)
    if payload is not None:
        for name, column in zip(payload.column_names, payload.columns, strict=True):
            table = table.append_column(name, column)
    write_table(path, table)


def write_table(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path, compression="zstd")
    fsync_file(path)


def read_rows(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise CorruptCollectionError(f"cannot read rows file {path}: {exc}") from exc


def write_tombstones(path: Path, dead: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.asarray(dead, dtype=np.uint64))
    fsync_file(path)


def read_tombstones(path: Path) -> np.ndarray:
    try:
        dead: np.ndarray = np.load(path)
        return dead
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise CorruptCollectionError(f"cannot read tombstones {path}: {exc}") from exc


def sorted_positions(values: np.ndarray, sorted_set: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise, where each of ``values`` is in a sorted array (0 where absent) and
    whether it is there (any shape)."""
    if len(sorted_set) == 0:
        return np.zeros(values.shape, dtype=np.int64), np.zeros(values.shape, dtype=bool)
    pos = np.searchsorted(sorted_set, values)
    np.minimum(pos, len(sorted_set) - 1, out=pos)
    found: np.ndarray = sorted_set[pos] == values
    return pos, found


def is_in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Elementwise membership of ``values`` in a sorted array (any shape)."""
    return sorted_positions(values, sorted_set)[1]


class IdMap:
    """Row id <-> key for one generation. Built from the row files' first two columns."""

    def __init__(self, parts: Sequence[pa.Table], dead: np.ndarray):
        if parts:
            self.row_ids = np.concatenate([p.column(ROW_ID).to_numpy() for p in parts]).astype(np.uint64)
            chunks = [c for p in parts for c in p.column(KEY).chunks]
        else:
            self.row_ids = np.empty(0, dtype=np.uint64)
            chunks = []
        keys = pa.chunked_array(chunks, type=pa.string()).cast(pa.large_string()).combine_chunks()
        self.keys: pa.Array = keys
        # Keys are decoded straight from Arrow's buffers: a search turns ten row ids
        # into strings in about a microsecond, without a Python string per row in memory.
        _validity, offsets, data = keys.buffers()
        offsets_array = np.frombuffer(offsets, dtype=np.int64)[keys.offset : keys.offset + len(keys) + 1]
        # (start, end) of each key: one gather per search instead of two
        self._bounds = np.stack([offsets_array[:-1], offsets_array[1:]], axis=1)
        self._data = data.to_pybytes() if data is not None else b""
        self._dead = dead
        self._live: tuple[np.ndarray, pa.Array] | None = None
        # Row id -> position: an offset when the ids are contiguous (after a build or
        # rebuild), else a dense table when that costs at most a few bytes per row,
        # else binary search. The first two cost one memory access per hit.
        n = len(self.row_ids)
        self._base = int(self.row_ids[0]) if n else 0
        span = int(self.row_ids[-1]) - self._base + 1 if n else 0
        self._table: np.ndarray | None = None
        self._contiguous = span == n
        if not self._contiguous and span <= 4 * n + 4096:
            self._table = np.zeros(span, dtype=np.int64)
            self._table[self.row_ids - np.uint64(self._base)] = np.arange(n)

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        if self._contiguous:
            return row_ids if self._base == 0 else row_ids - np.uint64(self._base)
        if self._table is not None:
            found: np.ndarray = self._table[row_ids.astype(np.int64) - self._base]
            return found
        return np.searchsorted(self.row_ids, row_ids)

    def keys_for(self, row_ids: np.ndarray) -> list[str]:
        """External keys of the given row ids (which must exist)."""
        data = self._data
        return [data[s:e].decode() for s, e in self._bounds.take(self.positions(row_ids), axis=0).tolist()]

    def live(self) -> tuple[np.ndarray, pa.Array]:
        """Row ids and keys of live rows."""
        if self._live is None:
            alive = ~is_in_sorted(self.row_ids, self._dead)
            self._live = (self.row_ids[alive], self.keys.filter(pa.array(alive)))
        return self._live

    def lookup(self, keys: pa.Array) -> np.ndarray:
        """Live row id of each key, or -1 where the key has no live row (as int64)."""
        live_ids, live_keys = self.live()
        if len(keys) == 0 or len(live_keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        positions = pc.index_in(keys.cast(pa.large_string()), value_set=live_keys)
        found = positions.is_valid().to_numpy(zero_copy_only=False)
        out = np.full(len(keys), -1, dtype=np.int64)
        out[found] = live_ids[positions.drop_null().to_numpy()].astype(np.int64)
        return out
