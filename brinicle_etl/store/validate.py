"""Checking what callers hand the store: vectors, keys, k and ef. Errors say which row is bad."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from brinicle_etl.errors import DimensionError, InputError
from brinicle_etl.store.staging import encode_keys
from brinicle_etl.types import EF, K

__all__ = ["as_keys", "as_matrix", "as_vector", "check_ef", "check_k"]


def as_matrix(vectors: Any, dim: int, op: str, keys: Sequence[str] | pa.Array | None = None) -> np.ndarray:
    """A C-contiguous float32 (n, dim) matrix of finite values, or InputError saying which row is bad."""
    try:
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{op}: vectors must be numbers: {exc}") from exc
    if matrix.ndim == 1 and matrix.size == 0:
        matrix = matrix.reshape(0, dim)
    if matrix.ndim != 2:
        raise InputError(f"{op}: expected a 2-D matrix of vectors, got {matrix.ndim} dimension(s)")
    if matrix.shape[1] != dim:
        raise DimensionError(f"{op}: dimension mismatch: vectors have {matrix.shape[1]} values, the collection {dim}")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        col = int(np.argmin(np.isfinite(matrix[row])))
        key = keys[row] if keys is not None else None
        key = key.as_py() if isinstance(key, pa.Scalar) else key
        where = f"row {row}" + (f" (id {key!r})" if keys is not None else "")
        raise InputError(f"{op}: vector contains NaN/Inf at {where}, index {col}")
    return matrix


def as_vector(vector: Any, dim: int, op: str) -> np.ndarray:
    if type(vector) is np.ndarray and vector.dtype == np.float32 and vector.flags.c_contiguous:
        v = vector  # the common case on the search path: no copy, no conversion
    else:
        try:
            v = np.ascontiguousarray(vector, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{op}: vector must be numbers: {exc}") from exc
    if v.ndim != 1:
        raise InputError(f"{op}: expected one vector, got an array of {v.ndim} dimensions")
    if v.shape[0] != dim:
        raise DimensionError(f"{op}: dimension mismatch: vector has {v.shape[0]} values, the collection {dim}")
    # One reduction answers for finite vectors; only a non-finite (or overflowing) dot looks closer.
    if not math.isfinite(v.dot(v)) and not np.isfinite(v).all():
        raise InputError(f"{op}: vector contains NaN/Inf at index {int(np.argmin(np.isfinite(v)))}")
    return v


def as_keys(keys: Any, op: str) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if isinstance(keys, pa.Array):
        if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            raise InputError(f"{op}: ids must be strings, got an Arrow array of {keys.type}")
        if keys.null_count:
            raise InputError(f"{op}: ids must not be null")
        return keys.cast(pa.string())
    if isinstance(keys, str):
        raise InputError(f"{op}: expected a list of ids, got a single string")
    items = list(keys)
    encode_keys(items, op)  # rejects non-strings and text that is not valid Unicode
    return pa.array(items, type=pa.string())


def as_write(keys: Any, vectors: Any, rows: pa.Table | None, dim: int, op: str) -> tuple[pa.Array, np.ndarray | None]:
    """The keys of a write and their vectors (None: rows stored without vectors), checked
    against each other and against ``rows``."""
    key_array = as_keys(keys, op)
    matrix = None
    if vectors is not None:
        matrix = as_matrix(vectors, dim, op, key_array)
        if len(matrix) != len(key_array):
            raise InputError(f"{op}: {len(key_array)} ids but {len(matrix)} vectors")
    if rows is not None and rows.num_rows != len(key_array):
        raise InputError(f"{op}: {len(key_array)} ids but {rows.num_rows} rows")
    return key_array, matrix


def check_k(k: object, op: str) -> int:
    return K.check(k, name=f"{op}: k")


def check_ef(ef: int | None) -> int | None:
    return None if ef is None else EF.check(ef)
