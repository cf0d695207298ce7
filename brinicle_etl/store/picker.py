"""Rows picked by position from row files held in memory, as Python values.

A search returning rows wants ten or so rows as dicts. Arrow's ``take`` and ``to_pylist``
cost ~10 µs a call whatever the row count, and a search touching four row files makes a
dozen such calls: more than the graph search itself. Numbers and strings are read here
value by value straight from the Arrow buffers through numpy views (no copy of the
column); every other type through Arrow's scalars.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["Picker", "pick_rows"]

Column = Callable[[int], Any]
"""The value at a position of one column, as ``to_pylist`` would give it."""


def _with_nulls(array: pa.Array, value: Column) -> Column:
    if array.null_count == 0:
        return value
    bits = np.frombuffer(array.buffers()[0], dtype=np.uint8)
    offset = array.offset

    def or_none(i: int) -> Any:
        at = i + offset
        return value(i) if bits[at >> 3] >> (at & 7) & 1 else None

    return or_none


def _numbers(array: pa.Array) -> Column:
    raw = np.frombuffer(array.buffers()[1], dtype=array.type.to_pandas_dtype())
    data = raw[array.offset : array.offset + len(array)]
    return _with_nulls(array, data.item)


def _strings(array: pa.Array) -> Column:
    wide = pa.types.is_large_string(array.type)
    bounds = np.frombuffer(array.buffers()[1], dtype=np.int64 if wide else np.int32)
    bounds = bounds[array.offset : array.offset + len(array) + 1]
    # An array of empty strings may come without a data buffer.
    data, at = memoryview(array.buffers()[2] or b""), bounds.item
    return _with_nulls(array, lambda i: str(data[at(i) : at(i + 1)], "utf-8"))


def _arrow(array: pa.Array) -> Column:
    return lambda i: array[i].as_py()


def _missing(_i: int) -> None:
    return None


_NUMBERS = (pa.types.is_integer, pa.types.is_float32, pa.types.is_float64)


def _column(array: pa.Array) -> Column:
    kind = array.type
    if array.null_count == len(array):
        return _arrow(array)  # its value buffers may be absent
    if any(test(kind) for test in _NUMBERS):
        return _numbers(array)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _strings(array)
    return _arrow(array)


class Picker:
    """Values by position from one row file's table (one chunk per column, as the row cache
    keeps them); a column's reader is made the first time it is asked for."""

    def __init__(self, table: pa.Table):
        self._table = table
        self._columns: dict[str, Column] = {}
        self._lock = threading.Lock()

    def columns(self, names: tuple[str, ...]) -> list[Column]:
        """A reader per name; one giving None for a column the file does not have (it was
        written before the column was added)."""
        with self._lock:
            for name in names:
                if name not in self._columns:
                    if name in self._table.column_names:
                        chunked = self._table.column(name)
                        array = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
                        self._columns[name] = _column(array)
                    else:
                        self._columns[name] = _missing
            return [self._columns[n] for n in names]


def pick_rows(
    pickers: Sequence[Picker], which: np.ndarray, offsets: np.ndarray, names: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Rows as dicts of ``names``, one per (file index, offset) pair, in that order."""
    readers = {p: pickers[p].columns(names) for p in set(which.tolist())}
    return [
        dict(zip(names, [read(o) for read in readers[p]], strict=True))
        for p, o in zip(which.tolist(), offsets.tolist(), strict=True)
    ]
