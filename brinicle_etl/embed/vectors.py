"""Precomputed vectors: JSON arrays in a text column, or list / fixed-size array columns."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from brinicle_etl._cpus import usable_cpus
from brinicle_etl.errors import InputError

__all__ = ["parse_vectors", "vector_digest"]


def parse_vectors(column: pl.Series, *, dim: int | None, where: Callable[[int], str]) -> np.ndarray:
    """A (n, dim) float32 matrix from ``column``; a null, malformed, wrong-length or NaN/Inf
    vector is an error naming its row (``where(i)``) and the column.

    ``dim=None`` takes the length of the first vector.
    """
    name = column.name
    if column.null_count():
        i = int(column.is_null().arg_max())  # type: ignore[arg-type]
        raise InputError(f"{where(i)}, column {name!r}: the vector is missing")
    if column.dtype == pl.String:
        try:
            column = column.str.json_decode(pl.List(pl.Float64))
        except pl.exceptions.PolarsError:
            _raise_first_malformed(column, name, where)
        if column.null_count():  # "null" in the file decodes to a null list
            i = int(column.is_null().arg_max())  # type: ignore[arg-type]
            raise InputError(f"{where(i)}, column {name!r}: the vector is missing")
    if isinstance(column.dtype, pl.Array):
        column = column.arr.to_list()
    if not isinstance(column.dtype, pl.List) or not (
        column.dtype.inner is not None and column.dtype.inner.is_numeric()
    ):
        raise InputError(f"column {name!r} has type {column.dtype}; vectors must be arrays of numbers")
    if len(column) == 0:
        return np.empty((0, dim or 0), dtype=np.float32)
    lengths = column.list.len()
    want = dim if dim is not None else int(lengths[0])
    wrong = lengths != want
    if wrong.any():
        i = int(wrong.arg_max())  # type: ignore[arg-type]
        raise InputError(f"{where(i)}, column {name!r}: the vector has {lengths[i]} values, expected {want}")
    matrix = column.explode().to_numpy().astype(np.float32, copy=False).reshape(len(column), want)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InputError(f"{where(i)}, column {name!r}: the vector contains NaN or Inf")
    return np.ascontiguousarray(matrix)


def _raise_first_malformed(column: pl.Series, name: str, where: Callable[[int], str]) -> None:
    for i, text in enumerate(column.to_list()):
        if text is None:
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where(i)}, column {name!r}: not a JSON array ({exc.msg})") from None
        if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise InputError(f"{where(i)}, column {name!r}: expected a JSON array of numbers, got {text[:60]!r}")
        if not all(np.isfinite(v) for v in value):
            raise InputError(f"{where(i)}, column {name!r}: the vector contains NaN or Inf")
    raise InputError(f"column {name!r}: cannot parse the vectors as JSON arrays of numbers")


_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def vector_digest(matrix: np.ndarray) -> pl.Series:
    """A digest of each row's float32 bytes (FNV-1a over 32-bit words), as text.

    Stable across machines and library versions, and far cheaper than printing the
    floats, so precomputed vectors join the row's content hash at little cost.
    """
    words = np.ascontiguousarray(matrix, dtype="<f4").view("<u4")
    parts = min(usable_cpus(), max(1, len(words) // _DIGEST_ROWS_PER_THREAD))
    if parts > 1:
        # numpy lets go of the GIL in each step: the rows' digests are independent.
        with ThreadPoolExecutor(parts) as pool:
            h = np.concatenate(list(pool.map(_fnv, np.array_split(words, parts))))
    else:
        h = _fnv(words)
    return pl.Series("vector_digest", h).cast(pl.String)


_DIGEST_ROWS_PER_THREAD = 8192


def _fnv(words: np.ndarray) -> np.ndarray:
    h = np.full(len(words), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(words.shape[1]):
            h ^= words[:, j].astype(np.uint64)
            h *= _FNV_PRIME
    return h
