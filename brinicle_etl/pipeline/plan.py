"""Plan: classify every incoming row against the collection, in DuckDB.

Each row gets a content hash (MD5 over every column, stable across versions, so a
re-run next year still recognises unchanged rows) and, when its vector is generated,
a hash of the text that is embedded. Joined on the key against what the collection
holds, every row is new, unchanged, changed (same text: the stored vector is carried
over; new text: re-embedded) or, under a policy, a conflict to refuse or skip.
Duplicate keys within the input are found before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from brinicle_etl.errors import ConfigError, ConflictError, InputError, format_values
from brinicle_etl.types import ConflictOn, ConflictPolicy, DuplicatePolicy, WriteMode

__all__ = ["DuplicatePolicy", "Hasher", "Plan", "Planner", "RowKind", "typed_key"]


# Per-row outcome codes in Plan.kind.
NEW, UNCHANGED, CHANGED_SAME_TEXT, CHANGED, DROPPED = 0, 1, 2, 3, 4
RowKind = int

_SEP, _NULL = "chr(31)", "chr(30)"


def _arrow(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> pa.Table:
    relation = con.sql(sql, params=params)
    assert relation is not None
    return relation.to_arrow_table()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to do with each source row (by position) and with the collection's other rows.

    ``write``: the row is written; ``reuse``: the stored row whose vector it carries over
    (-1: none); ``old``: the stored row with the same key (-1: a new key).
    """

    rows: int
    keys: pa.Array
    write: np.ndarray
    reuse: np.ndarray
    old: np.ndarray
    inserted: int
    updated: int
    skipped: int
    unchanged: int
    duplicates_dropped: int
    conflicts: list[Any] = field(default_factory=list)
    deletes: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))

    @property
    def embed(self) -> np.ndarray:
        """Rows written with a vector that must be computed (no stored vector to carry over)."""
        result: np.ndarray = self.write & (self.reuse < 0)
        return result


class Hasher:
    """Content hashes of rows, computed in DuckDB."""

    def __init__(self) -> None:
        self._con = duckdb.connect()

    def close(self) -> None:
        self._con.close()

    def __call__(
        self, frame: pl.DataFrame, columns: Sequence[str], text: pl.Series | None
    ) -> tuple[pa.Array, pa.Array | None]:
        """MD5 of each row over ``columns`` (in that order), and of its embedded text."""
        table = frame.select(columns).to_arrow()
        if text is not None:
            table = table.append_column("__text", text.to_arrow())
        parts = ", ".join(f"coalesce(CAST({_quote(c)} AS VARCHAR), {_NULL})" for c in columns)
        text_hash = ", md5(__text) AS th" if text is not None else ""
        self._con.register("batch_arrow", table)
        try:
            out = _arrow(self._con, f"SELECT md5(concat_ws({_SEP}, {parts})) AS h{text_hash} FROM batch_arrow")
        finally:
            self._con.unregister("batch_arrow")
        return out.column("h").combine_chunks(), (out.column("th").combine_chunks() if text is not None else None)


class Planner:
    """Collects keys and hashes batch by batch, then decides in one query.

    ``existing`` holds the collection's live rows: ``_row_id``, ``_key``, ``_hash``, ``_text_hash``.
    """

    def __init__(
        self, existing: pa.Table, *, key_field: str | None, where: Callable[[int], str], key_kind: str | None = None
    ):
        self._con = duckdb.connect()
        self._con.register("existing_arrow", existing)
        self._con.execute("CREATE TEMP TABLE existing AS SELECT * FROM existing_arrow")
        self._con.unregister("existing_arrow")
        self._con.execute("CREATE TEMP TABLE incoming (pos BIGINT, key VARCHAR, h VARCHAR, th VARCHAR)")
        self._key_field = key_field
        self._key_kind = key_kind
        self._where = where
        self._rows = 0

    def close(self) -> None:
        self._con.close()

    def add(self, offset: int, keys: pa.Array, row_hash: pa.Array, text_hash: pa.Array | None) -> None:
        n = len(keys)
        table = pa.table(
            {
                "pos": pa.array(np.arange(offset, offset + n, dtype=np.int64)),
                "key": keys,
                "h": row_hash,
                "th": text_hash if text_hash is not None else pa.nulls(n, pa.string()),
            }
        )
        self._con.register("batch_arrow", table)
        try:
            self._con.execute("INSERT INTO incoming SELECT * FROM batch_arrow")
        finally:
            self._con.unregister("batch_arrow")
        self._rows = max(self._rows, offset + n)

    def duplicates(self, limit: int = 20) -> tuple[int, list[tuple[str, list[int]]]]:
        """How many keys occur more than once, and the first ``limit`` with their positions."""
        total = self._con.execute(
            "SELECT count(*) FROM (SELECT key FROM incoming GROUP BY key HAVING count(*) > 1)"
        ).fetchall()[0]
        rows = self._con.execute(
            "SELECT key, list(pos ORDER BY pos) FROM incoming GROUP BY key HAVING count(*) > 1 "
            "ORDER BY min(pos) LIMIT ?",
            [limit],
        ).fetchall()
        return int(total[0]), [(k, list(p)) for k, p in rows]

    def finish(
        self,
        *,
        mode: WriteMode,
        on_conflict: ConflictPolicy,
        on_duplicate: DuplicatePolicy,
        sync: bool,
        conflict_on: ConflictOn = "change",
    ) -> Plan:
        if mode == "insert" and on_conflict == "update":
            raise ConfigError("mode 'insert' never replaces rows; use mode 'upsert' with on_conflict='update'")
        con = self._con
        n_dups, examples = self.duplicates()
        source = "incoming"
        if n_dups:
            if on_duplicate == "error":
                listed = ", ".join(
                    f"{k!r} ({', '.join(self._where(p) for p in positions[:3])})" for k, positions in examples[:5]
                )
                field = f"primary key {self._key_field!r}" if self._key_field else "row content"
                raise InputError(
                    f"duplicate {field} in the source: {n_dups} value(s) occur more than once, e.g. {listed}; "
                    "nothing was written; fix the source or pass on_duplicate='keep_last' to keep the last occurrence"
                )
            con.execute(
                "CREATE TEMP TABLE kept AS SELECT * FROM incoming QUALIFY pos = max(pos) OVER (PARTITION BY key)"
            )
            source = "kept"
        kinds = con.execute(
            f"""
            SELECT k.pos,
                   coalesce(e._row_id::BIGINT, -1) AS old,
                   CASE WHEN e._key IS NULL THEN {NEW}
                        WHEN e._hash = k.h AND (k.th IS NULL OR e._text_hash = k.th) THEN {UNCHANGED}
                        WHEN k.th IS NOT NULL AND e._text_hash = k.th THEN {CHANGED_SAME_TEXT}
                        ELSE {CHANGED} END AS kind
            FROM {source} k LEFT JOIN existing e ON e._key = k.key
            """
        ).fetchnumpy()
        kind = np.full(self._rows, DROPPED, dtype=np.int8)
        old = np.full(self._rows, -1, dtype=np.int64)
        kind[kinds["pos"]] = kinds["kind"]
        old[kinds["pos"]] = kinds["old"]
        dropped = int((kind == DROPPED).sum())
        keys = _arrow(con, "SELECT key FROM incoming ORDER BY pos").column(0).combine_chunks()

        changed = (kind == CHANGED) | (kind == CHANGED_SAME_TEXT)
        # Under conflict_on="key" an identical row collides too, but is still never rewritten.
        collided = changed | (kind == UNCHANGED) if conflict_on == "key" else changed
        conflict_keys = keys.filter(pa.array(collided)).to_pylist() if mode != "build" else []
        conflicts = [typed_key(k, self._key_kind) for k in conflict_keys]
        if conflicts and on_conflict == "error":
            n = len(conflicts)
            what = f"{n} of the incoming key(s)" if conflict_on == "key" else f"different content for {n} row(s)"
            raise ConflictError(
                f"primary key {self._key_field!r} already holds {what}: "
                f"{format_values(conflicts)}; nothing was written; pass on_conflict='update' to replace them "
                "or on_conflict='skip' to keep the stored rows",
                keys=conflicts,
                field=self._key_field,
            )

        if mode == "build":
            # Everything is rewritten; stored vectors are carried over where the text did not change.
            write = kind != DROPPED
            reuse = np.where((kind == UNCHANGED) | (kind == CHANGED_SAME_TEXT), old, -1)
            updated, skipped = int(changed.sum()), 0
        else:
            write = (kind == NEW) | (changed & (on_conflict == "update"))
            reuse = np.where(write & (kind == CHANGED_SAME_TEXT), old, -1)
            updated = int(collided.sum()) if on_conflict == "update" else 0
            skipped = int(collided.sum()) if on_conflict == "skip" else 0
        unchanged = int(((kind == UNCHANGED) & ~collided).sum()) if mode != "build" else int((kind == UNCHANGED).sum())

        deletes = pa.array([], pa.string())
        if sync or mode == "build":
            sql = f"SELECT e._key FROM existing e ANTI JOIN {source} k ON k.key = e._key ORDER BY e._row_id"
            deletes = _arrow(con, sql).column(0).combine_chunks().cast(pa.string())
        return Plan(
            rows=self._rows,
            keys=keys.cast(pa.string()),
            write=write,
            reuse=reuse,
            old=old,
            inserted=int((kind == NEW).sum()),
            updated=updated,
            skipped=skipped,
            unchanged=unchanged,
            duplicates_dropped=dropped,
            conflicts=conflicts,
            deletes=deletes,
        )


def typed_key(key: str, kind: str | None) -> Any:
    """A key as the user's primary-key type (for conflict lists): ``'12'`` -> 12 for int keys."""
    if kind == "int64":
        try:
            return int(key)
        except ValueError:
            return key
    return key
