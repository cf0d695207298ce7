"""Turning a change into the next generation's files and manifest.

Everything here runs under the writer lock and only creates new files; nothing is
visible to readers until the caller publishes the returned manifest. Validation
(duplicate keys, insert conflicts) happens before the first file is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from brinicle_etl.errors import ConflictError, InputError, format_values
from brinicle_etl.store.files import new_name
from brinicle_etl.store.manifest import Manifest, RowsFile, SegmentInfo
from brinicle_etl.store.rows import ROW_ID, is_in_sorted, read_rows, write_rows, write_table, write_tombstones
from brinicle_etl.store.segment import build_segment, extend_segment
from brinicle_etl.store.snapshot import Snapshot
from brinicle_etl.types import HnswParams, WriteMode

__all__ = ["Change", "DeleteResult", "WriteResult", "apply_change", "compact"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True, kw_only=True)
class Change:
    """One atomic write: rows to add (with or without vectors) and keys to delete."""

    mode: WriteMode
    keys: pa.Array
    vectors: np.ndarray | None
    rows: pa.Table | None = None
    delete: pa.Array | None = None
    params: HnswParams | None = None
    meta: dict[str, object] | None = None
    session_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WriteResult:
    """What a write did: ``inserted`` new keys, ``updated`` replaced keys, ``deleted`` removed keys."""

    mode: WriteMode
    inserted: int
    updated: int
    deleted: int
    generation: int


@dataclass(frozen=True, kw_only=True, slots=True)
class DeleteResult:
    deleted_count: int
    not_found: list[str] | None
    generation: int


def duplicate_keys(keys: pa.Array) -> list[str]:
    counts = pc.value_counts(keys)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    values: list[str] = repeated.field("values").to_pylist()
    return values


def apply_change(
    snap: Snapshot, change: Change, *, name: str, progress: Progress | None = None
) -> tuple[Manifest, WriteResult]:
    old = snap.manifest
    config = old.config
    n = len(change.keys)
    op = "finalize" if change.session_id else "write"

    if change.vectors is not None and change.vectors.shape != (n, config.dim):
        raise InputError(f"{op}: expected a ({n}, {config.dim}) matrix of vectors, got {change.vectors.shape}")
    dups = duplicate_keys(change.keys)
    if dups:
        raise ConflictError(
            f"{op}: ids repeated within one write: {format_values(dups)}; nothing was applied", keys=dups
        )
    if change.delete is not None and len(change.delete) and pc.any(pc.is_in(change.delete, change.keys)).as_py():
        raise InputError(f"{op}: the same key cannot be both written and deleted in one change")

    generation = old.generation + 1
    params = change.params or config.params
    row_ids = np.arange(old.next_row_id, old.next_row_id + n, dtype=np.uint64)
    has_vectors = change.vectors is not None and n > 0

    if change.mode == "build":
        main = None
        if has_vectors:
            assert change.vectors is not None
            file = new_name("main", generation, ".usearch")
            count = build_segment(snap.directory / file, row_ids, change.vectors, config, params, progress)
            main = SegmentInfo(file=file, count=count)
        rows = _write_rows_file(snap, generation, row_ids, change)
        manifest = dataclasses.replace(
            old,
            config=dataclasses.replace(config, params=params),
            generation=generation,
            next_row_id=old.next_row_id + n,
            main=main,
            delta=None,
            rows=rows,
            tombstones=None,
            dead_rows=0,
        )
        result = WriteResult(mode="build", inserted=n, updated=0, deleted=old.live_rows, generation=generation)
        return _finish(manifest, change), result

    existing = snap.ids.lookup(change.keys)
    hit = existing >= 0
    if change.mode == "insert" and hit.any():
        taken = change.keys.filter(pa.array(hit)).to_pylist()
        raise ConflictError(
            f"{op}: {len(taken)} id(s) already exist: {format_values(taken)}; "
            "use mode 'upsert' to replace them; nothing was applied",
            keys=taken,
        )
    removed = np.empty(0, dtype=np.int64)
    if change.delete is not None and len(change.delete):
        found = snap.ids.lookup(change.delete)
        removed = found[found >= 0]
    dead_new = np.unique(np.concatenate([existing[hit], removed]).astype(np.uint64))

    main, delta = old.main, old.delta
    main_dead, delta_dead = _dead_per_segment(snap, dead_new)
    if main is not None:
        main = dataclasses.replace(main, dead=main.dead + main_dead)
    if delta is not None:
        delta = dataclasses.replace(delta, dead=delta.dead + delta_dead)
    if has_vectors:
        assert change.vectors is not None
        if main is None:
            file = new_name("main", generation, ".usearch")
            count = build_segment(snap.directory / file, row_ids, change.vectors, config, params, progress)
            main = SegmentInfo(file=file, count=count)
        else:
            file = new_name("delta", generation, ".usearch")
            source = snap.directory / old.delta.file if old.delta else None
            count = extend_segment(source, snap.directory / file, row_ids, change.vectors, config, params)
            delta = SegmentInfo(file=file, count=count, dead=delta.dead if delta else 0)

    tombstones = old.tombstones
    if len(dead_new):
        all_dead = np.union1d(snap.dead, dead_new)
        tombstones = new_name("tomb", generation, ".npy")
        write_tombstones(snap.directory / tombstones, all_dead)
    rows = old.rows + _write_rows_file(snap, generation, row_ids, change)
    manifest = dataclasses.replace(
        old,
        generation=generation,
        next_row_id=old.next_row_id + n,
        main=main,
        delta=delta,
        rows=rows,
        tombstones=tombstones,
        dead_rows=old.dead_rows + len(dead_new),
    )
    updated = int(hit.sum())
    result = WriteResult(
        mode=change.mode, inserted=n - updated, updated=updated, deleted=len(removed), generation=generation
    )
    return _finish(manifest, change), result


def _finish(manifest: Manifest, change: Change) -> Manifest:
    updates: dict[str, object] = {}
    if change.session_id:
        updates["last_session"] = change.session_id
    if change.meta is not None:
        updates["meta"] = change.meta
    return dataclasses.replace(manifest, **updates) if updates else manifest  # type: ignore[arg-type]


def _dead_per_segment(snap: Snapshot, dead: np.ndarray) -> tuple[int, int]:
    if not len(dead):
        return 0, 0
    in_main = int(snap.main.contains(dead).sum()) if snap.main else 0
    in_delta = int(snap.delta.contains(dead).sum()) if snap.delta else 0
    return in_main, in_delta


def _write_rows_file(snap: Snapshot, generation: int, row_ids: np.ndarray, change: Change) -> tuple[RowsFile, ...]:
    if not len(row_ids):
        return ()
    file = new_name("rows", generation, ".parquet")
    write_rows(snap.directory / file, row_ids, change.keys, change.rows)
    return (RowsFile(file=file, count=len(row_ids)),)


def compact(snap: Snapshot, params: HnswParams, progress: Progress | None = None) -> Manifest:
    """The next generation with every live vector in one fresh main and the rows in one file."""
    old = snap.manifest
    generation = old.generation + 1
    parts = [seg.vectors(snap.dead) for seg, _ in snap.segments()]
    main = None
    if parts:
        keys = np.concatenate([p[0] for p in parts])
        vectors = np.concatenate([p[1] for p in parts])
        file = new_name("main", generation, ".usearch")
        count = build_segment(snap.directory / file, keys, vectors, old.config, params, progress)
        main = SegmentInfo(file=file, count=count)

    rows = old.rows
    if old.dead_rows or len(old.rows) > 1:
        tables = [read_rows(snap.directory / r.file) for r in old.rows]
        table = pa.concat_tables(tables, promote_options="default")
        if len(snap.dead):
            alive = ~is_in_sorted(table.column(ROW_ID).to_numpy(), snap.dead)
            table = table.filter(pa.array(alive))
        rows = ()
        if table.num_rows:
            file = new_name("rows", generation, ".parquet")
            write_table(snap.directory / file, table)
            rows = (RowsFile(file=file, count=table.num_rows),)
    return dataclasses.replace(
        old,
        config=dataclasses.replace(old.config, params=params),
        generation=generation,
        main=main,
        delta=None,
        rows=rows,
        tombstones=None,
        dead_rows=0,
    )
