"""Search from SQL: DuckDB functions over a store's collections.

``register(con, store)`` gives a DuckDB connection:

- ``brinicle_search(collection, query, k := 10, filter := NULL)``: a table of the nearest
  rows: ``_key``, ``_distance``, then the collection's columns, nearest first;
- ``brinicle_search_ids(collection, query, k := 10, filter := NULL)``: a list of
  ``{key, distance}`` structs, for ``unnest`` and for searching a table of queries;
- ``brinicle_rows(collection)``: the collection's live rows (``_key`` and its columns);
- ``brinicle_embed(collection, text)``: the text's vector under the collection's model.

A query is text (embedded with the collection's own model) or a vector: a ``FLOAT[]``
or ``FLOAT[N]`` literal, a prepared parameter or a column. ``filter`` is a SQL predicate
on the collection's columns (``'price < 100 AND category = ''footwear'''``); the search
is restricted to matching rows and still returns ``k`` of them when ``k`` match.
Distances follow usearch: ``1 - cos`` for cosine, ``1 - dot`` for ip, squared L2 for l2sq.

DuckDB cannot take table functions from Python, so the table-shaped functions are TEMP
macros over vectorised Arrow UDFs; register them on every connection that needs them.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import func

from brinicle_etl.embed import ModelRegistry
from brinicle_etl.errors import InputError
from brinicle_etl.search import embed_query
from brinicle_etl.store import AnyCollection, Store
from brinicle_etl.store.rows import KEY, RESERVED_COLUMNS, ROW_ID
from brinicle_etl.types import K, RowHit

__all__ = ["connect", "register", "run"]

ARROW = func.PythonUDFType.ARROW
# Distances are DOUBLE holding each float32's shortest decimal (0.2101, not 0.21010000407...),
# so round(_distance, 3) and plain output print as a reader expects.
_HIT = pa.struct([("key", pa.string()), ("distance", pa.float64())])
# brinicle_search gets each hit with its row as JSON, typed back by json_transform with the
# collection's row type (a constant per query, as DuckDB folds it at bind time): the rows of the
# hits only, never a scan of the row files.
_HIT_ROW = pa.struct([*_HIT, ("row", pa.string())])
_HITS = pa.list_(_HIT)
_HIDDEN = "(" + ", ".join(f"'{c}'" for c in RESERVED_COLUMNS if c != KEY) + ")"


def _hit_type(*, row: bool = False) -> Any:
    fields = {"key": duckdb.sqltype("VARCHAR"), "distance": duckdb.sqltype("DOUBLE")}
    if row:
        fields["row"] = duckdb.sqltype("VARCHAR")
    return duckdb.struct_type(fields)


def _duck_type(kind: pa.DataType) -> Any:
    """The DuckDB type json_transform gives a value of Arrow type ``kind``, as a JSON structure."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "VARCHAR"
    if pa.types.is_boolean(kind):
        return "BOOLEAN"
    if pa.types.is_integer(kind):
        name = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}[kind.bit_width]
        return name if pa.types.is_signed_integer(kind) else "U" + name
    if pa.types.is_floating(kind):
        return "DOUBLE" if kind.bit_width == 64 else "FLOAT"
    if pa.types.is_date(kind):
        return "DATE"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else "TIMESTAMP"
    if pa.types.is_decimal(kind):
        return f"DECIMAL({kind.precision},{kind.scale})"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return "VARCHAR"  # bytes travel as hex text (JSON has no bytes)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_duck_type(kind.value_type)]
    return "JSON"


def _json_value(value: Any) -> Any:
    """A row value as JSON takes it: dates and times in ISO form, NaN and infinities as DuckDB spells them."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


class _Functions:
    """The Python side of the SQL functions, bound to one store."""

    def __init__(self, store: Store, registry: ModelRegistry, cursor: duckdb.DuckDBPyConnection):
        self.store = store
        self.registry = registry
        self._cursor = cursor
        self._cursor_lock = threading.Lock()
        self._row_types: dict[tuple[str, ...], dict[str, Any]] = {}

    def _collection(self, name: str) -> AnyCollection:
        return self.store.open(name)

    # ---- rows ----

    def _paths(self, col: AnyCollection) -> list[str]:
        return [str(p) for p in col.row_files()] or [str(self._empty_rows())]

    def files(self, names: pa.Array) -> pa.Array:
        return pa.array([self._paths(self._collection(n)) for n in names.to_pylist()], pa.list_(pa.string()))

    def dead(self, names: pa.Array) -> pa.Array:
        out = [self._collection(n).deleted_row_ids() for n in names.to_pylist()]
        return pa.array([d.tolist() for d in out], pa.list_(pa.uint64()))

    def row_type(self, names: pa.Array) -> pa.Array:
        """Each collection's row as a JSON structure for json_transform: the key, the distance,
        then every column of its row files (their union, in file order)."""
        return pa.array([json.dumps(self._row_type(self._collection(n))) for n in names.to_pylist()], pa.string())

    def _row_type(self, col: AnyCollection) -> dict[str, Any]:
        files = tuple(str(p) for p in col.row_files())
        cached = self._row_types.get(files)
        if cached is None:
            shape: dict[str, Any] = {"_key": "VARCHAR", "_distance": "DOUBLE"}
            for path in files:
                for field in pq.read_schema(path):
                    if field.name not in RESERVED_COLUMNS:
                        shape.setdefault(field.name, _duck_type(field.type))
            if len(self._row_types) > 256:
                self._row_types.clear()
            cached = self._row_types[files] = shape
        return cached

    def _empty_rows(self) -> Path:
        """A Parquet file with no rows, for a collection that has none yet (read_parquet needs a file)."""
        path = self.store.config_dir / "empty-rows.parquet"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{threading.get_ident()}")
            pq.write_table(pa.table({ROW_ID: pa.array([], pa.uint64()), KEY: pa.array([], pa.string())}), tmp)
            tmp.replace(path)
        return path

    # ---- search ----

    def _allowed_rows(self, col: AnyCollection, predicate: str) -> np.ndarray:
        """Row ids of live rows matching a SQL predicate, cached per generation."""

        def compute() -> np.ndarray:
            # The UDF cannot query the connection that is running it; a cursor of its own can.
            sql = f"SELECT {ROW_ID} FROM read_parquet(?, union_by_name := true) WHERE ({predicate})"
            with self._cursor_lock:
                try:
                    found = self._cursor.execute(sql, [self._paths(col)]).fetchnumpy()[ROW_ID]
                except duckdb.Error as exc:
                    # DuckDB's message points into our internal query; keep what it says, not where.
                    reason = " ".join(str(exc).split("\nLINE ")[0].split())
                    raise InputError(f"filter {predicate!r} on {col.name!r} failed: {reason}") from exc
            return np.asarray(found, dtype=np.uint64)  # dead rows are dropped by the search itself

        return col.filtered(f"sql:{predicate}", compute)

    def search(self, names: pa.Array, queries: pa.Array, ks: pa.Array, filters: pa.Array) -> pa.Array:
        return self._search(names, queries, ks, filters, row_ids=False)

    def search_rows(self, names: pa.Array, queries: pa.Array, ks: pa.Array, filters: pa.Array) -> pa.Array:
        return self._search(names, queries, ks, filters, row_ids=True)

    def _search(
        self, names: pa.Array, queries: pa.Array, ks: pa.Array, filters: pa.Array, *, row_ids: bool
    ) -> pa.Array:
        """Registered with untyped (ANY) parameters, so one function takes text and vector
        queries alike and dispatches on the Arrow type here."""
        names, queries, ks, filters = _flat(names), _flat(queries), _flat(ks), _flat(filters)
        text = _is_text(queries.type)
        if not text and not _is_numeric_list(queries.type):
            raise InputError(f"search: the query must be text or a list of numbers (FLOAT[]); got {queries.type}")
        if not _is_text(filters.type):
            raise InputError(f"search: filter must be a SQL predicate as text; got {filters.type}")
        if not pa.types.is_integer(ks.type):
            raise InputError(f"search: k must be an integer between {K.low} and {K.high}; got {ks.type}")
        n = len(names)
        if n == 1 and not text and not row_ids and not filters[0].as_py().strip():
            return self._search_one(names[0].as_py(), queries, ks[0].as_py())
        name_list, k_list, filter_list = names.to_pylist(), ks.to_pylist(), filters.to_pylist()
        # Rows of one call usually share collection, k and filter: one batch search each.
        groups: dict[tuple[str, int, str], list[int]] = {}
        for i in range(n):
            groups.setdefault((name_list[i], k_list[i], filter_list[i]), []).append(i)
        parts: list[pa.Array] = []
        order = np.empty(n, dtype=np.int64)  # row -> position in the concatenated parts
        done = 0
        for (name, k, predicate), rows in groups.items():
            col = self._collection(name)
            if text:
                matrix = embed_query(col, [queries[i].as_py() for i in rows], self.registry)
            else:
                matrix = _vectors(queries, rows, col.dim)
            allowed = self._allowed_rows(col, predicate) if predicate.strip() else None
            if row_ids:
                found = col.search_rows(matrix, k, allow_row_ids=allowed)
                counts = np.array([len(hits) for hits in found], dtype=np.int64)
                flat = [hit for hits in found for hit in hits]
                distances = _printable(np.array([hit.distance for hit in flat], np.float32))
                columns = [pa.array([hit.id for hit in flat], pa.string()), pa.array(distances)]
                columns.append(_rows_as_json(flat, distances.tolist()))
            else:
                table = col.search_table(matrix, k, allow_row_ids=allowed)
                counts = np.bincount(table.column("query").to_numpy(), minlength=len(rows))
                columns = [
                    table.column(KEY).combine_chunks(),
                    pa.array(_printable(table.column("distance").to_numpy())),
                ]
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            hits = pa.StructArray.from_arrays(columns, fields=list(_HIT_ROW if row_ids else _HIT))
            parts.append(pa.ListArray.from_arrays(pa.array(offsets), hits))
            order[rows] = np.arange(done, done + len(rows))
            done += len(rows)
        if len(parts) == 1:
            return parts[0]
        return pa.concat_arrays(parts).take(pa.array(order))

    def _search_one(self, name: str, query: pa.Array, k: int) -> pa.Array:
        """One vector query, the statement an analyst types. A search pulls most of the CPU
        caches through the graph, so every step around it is paid for cold: this path takes
        as few as it can (measured in benchmarks/bench_sql.py)."""
        col = self._collection(name)
        found = col.search(_vectors(query, [0], col.dim)[0], k)
        distances = _printable(np.array([h.distance for h in found], np.float32)).tolist()
        # (key, distance) tuples fill the structs in one call
        return pa.array([list(zip([h.id for h in found], distances, strict=True))], _HITS)

    def embed(self, names: pa.Array, texts: pa.Array) -> pa.Array:
        out: list[list[float] | None] = [None] * len(names)
        name_list, text_list = names.to_pylist(), texts.to_pylist()
        groups: dict[str, list[int]] = {}
        for i, (name, text) in enumerate(zip(name_list, text_list, strict=True)):
            if name is not None and text is not None:
                groups.setdefault(name, []).append(i)
        for name, rows in groups.items():
            vectors = embed_query(self._collection(name), [text_list[i] for i in rows], self.registry)
            for pos, i in enumerate(rows):
                out[i] = vectors[pos].tolist()
        return pa.array(out, pa.list_(pa.float32()))


def _rows_as_json(found: Sequence[RowHit], distances: Sequence[float]) -> pa.Array:
    """Each hit's row as a JSON object: its key, its distance and its columns."""
    return pa.array(
        [
            json.dumps({"_key": hit.id, "_distance": d, **{n: _json_value(v) for n, v in hit.row.items()}})
            for hit, d in zip(found, distances, strict=True)
        ],
        pa.string(),
    )


def _printable(distances: np.ndarray) -> np.ndarray:
    """float32 distances as the doubles their shortest decimal forms denote."""
    return np.asarray(distances, np.float32).astype(str).astype(np.float64)


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """DuckDB may hand a UDF chunked arrays; the code below wants one array."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _is_numeric_list(kind: pa.DataType) -> bool:
    lists = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not lists:
        return False
    value = kind.value_type
    return bool(pa.types.is_floating(value) or pa.types.is_integer(value) or pa.types.is_decimal(value))


def _vectors(queries: pa.Array, rows: Sequence[int], dim: int) -> np.ndarray:
    """The query vectors of ``rows`` as a float32 matrix; a wrong length names the row."""
    if len(rows) == 1:
        # One query, the statement an analyst types: its own slice, without the batch
        # kernels (take, value_lengths, flatten), which cost more than the copy.
        values = queries[rows[0]].values
        lengths = np.array([len(values)])
    else:
        picked = queries.take(pa.array(rows)) if len(rows) != len(queries) else queries
        if not isinstance(picked.type, pa.ListType) or picked.type.value_type != pa.float32():
            picked = picked.cast(pa.list_(pa.float32()))
        lengths = picked.value_lengths().to_numpy(zero_copy_only=False)
        values = picked.flatten()
    wrong = np.flatnonzero(lengths != dim)
    if len(wrong):
        raise InputError(
            f"search: dimension mismatch: query vector {rows[int(wrong[0])] + 1} has {lengths[wrong[0]]} values, "
            f"the collection {dim}"
        )
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    matrix: np.ndarray = values.to_numpy(zero_copy_only=False)
    return matrix.reshape(len(rows), dim)


def register(
    con: duckdb.DuckDBPyConnection,
    store: Store | str | Path | None = None,
    *,
    registry: ModelRegistry | None = None,
) -> duckdb.DuckDBPyConnection:
    """Make ``con`` able to search the collections of ``store`` (see the module docstring)."""
    st = store if isinstance(store, Store) else Store(store)
    fns = _Functions(st, registry or st.models, con.cursor())
    varchar = duckdb.sqltype("VARCHAR")
    floats = duckdb.list_type(duckdb.sqltype("FLOAT"))
    hits = duckdb.list_type(_hit_type())
    # Deterministic (side_effects=False) so DuckDB folds constant calls at bind time:
    # read_parquet needs its file list then.
    con.create_function(
        "__brinicle_files", fns.files, [varchar], duckdb.list_type(varchar), type=ARROW, side_effects=False
    )
    con.create_function(
        "__brinicle_dead",
        fns.dead,
        [varchar],
        duckdb.list_type(duckdb.sqltype("UBIGINT")),
        type=ARROW,
        side_effects=False,
    )
    # No parameter types: DuckDB then passes any type (the query is text or a list of numbers).
    con.create_function("__brinicle_search", fns.search, None, hits, type=ARROW)
    con.create_function(
        "__brinicle_search_rows", fns.search_rows, None, duckdb.list_type(_hit_type(row=True)), type=ARROW
    )
    con.create_function("brinicle_embed", fns.embed, [varchar, varchar], floats, type=ARROW)
    con.create_function("__brinicle_row_type", fns.row_type, [varchar], varchar, type=ARROW, side_effects=False)
    for statement in _MACROS:
        con.execute(statement)
    return con


_MACROS = [
    """
    CREATE OR REPLACE TEMP MACRO __brinicle_all_rows(c) AS TABLE
        SELECT * FROM read_parquet(__brinicle_files(c), union_by_name := true)
        WHERE _row_id NOT IN (SELECT unnest(__brinicle_dead(c)))
    """,
    f"""
    CREATE OR REPLACE TEMP MACRO brinicle_rows(c) AS TABLE
        SELECT COLUMNS(lambda x: x NOT IN {_HIDDEN}) FROM __brinicle_all_rows(c)
    """,
    # A NULL query, k or collection gives NULL hits (DuckDB skips the call); no filter is ''.
    """
    CREATE OR REPLACE TEMP MACRO brinicle_search_ids(c, q, k := 10, filter := NULL) AS
        __brinicle_search(c, q, k, coalesce(filter, ''))
    """,
    # The hits come with their rows (as JSON, typed back here): no row file is scanned.
    """
    CREATE OR REPLACE TEMP MACRO brinicle_search(c, q, k := 10, filter := NULL) AS TABLE
        SELECT unnest(json_transform(h.row, __brinicle_row_type(c)))
        FROM (SELECT unnest(__brinicle_search_rows(c, q, k, coalesce(filter, '')), recursive := true)) AS h
        ORDER BY h.distance, h.key
    """,
]


def connect(store: Store | str | Path | None = None, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A new DuckDB connection with the functions registered against ``store``."""
    return register(duckdb.connect(database), store)


def run(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table | None:
    """Run one SQL statement; its result as Arrow, or None for a statement without one.

    DuckDB errors become :class:`InputError`, so callers see one readable message.
    """
    try:
        relation = con.sql(query)
    except duckdb.Error as exc:
        raise InputError(str(exc)) from exc
    if relation is None:
        return None
    try:
        return relation.to_arrow_table()
    except duckdb.Error as exc:
        raise InputError(str(exc)) from exc
