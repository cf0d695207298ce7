"""Writes: a transaction streams rows into new files, then publishes them as one generation.

Everything here runs under the writer lock and only creates files under fresh names;
nothing is visible to readers until ``commit`` replaces the manifest. Rows can arrive
in many batches (so a source larger than memory streams through), vectors go into
the index as they come, and a failure at any point leaves the collection as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from brinicle_etl.errors import ConflictError, InputError, StateError, format_values
from brinicle_etl.store.files import new_name
from brinicle_etl.store.flat import write_flat
from brinicle_etl.store.manifest import Manifest, RowsFile, SegmentInfo
from brinicle_etl.store.refine import refined_name
from brinicle_etl.store.rows import ROW_ID, is_in_sorted, read_rows, write_rows, write_table, write_tombstones
from brinicle_etl.store.segment import Graphs, SegmentBuilder, build_graphs
from brinicle_etl.store.snapshot import Snapshot
from brinicle_etl.types import BuildProgress, HnswParams, WriteMode

__all__ = ["DeleteResult", "Transaction", "WriteResult", "compact", "index_pending"]

Publish = Callable[[Manifest], None]

PENDING_BYTES = 64 << 20
"""A deferred write leaves its vectors pending only while the collection's pending vectors
stay within this many bytes of float32; past that it links them itself, as a write that is
not deferred does. Until linked, every query compares every pending vector: 64 MiB (131,072
vectors of 128-d) costs about 2 ms a query on this project's machine."""


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
    """Keys that occur more than once, each named once, in sorted order."""
    if len(keys) < 2:
        return []
    # Sorting and comparing neighbours needs far less memory than a hash table of counts
    # on a build of millions of keys.
    ordered = keys.take(pc.array_sort_indices(keys))
    same = pc.equal(ordered[1:], ordered[:-1])
    if not pc.any(same).as_py():
        return []
    values: list[str] = pc.unique(ordered[1:].filter(same)).to_pylist()
    return values


class Transaction:
    """One atomic write, built up by :meth:`add` and :meth:`delete`, published by :meth:`commit`.

    ``build`` replaces the whole collection with what is added; ``insert`` refuses keys
    that exist; ``upsert`` replaces them. A key added twice, or both added and deleted,
    fails the commit. Lookups see the collection as it was when the transaction began.
    """

    def __init__(
        self,
        snap: Snapshot,
        mode: WriteMode,
        *,
        publish: Publish,
        params: HnswParams | None = None,
        op: str = "write",
        progress: BuildProgress | None = None,
        defer: bool = False,
    ):
        self.snapshot = snap
        self.mode = mode
        self.op = op
        self._publish = publish
        self._old = snap.manifest
        self._config = snap.manifest.config
        self._params = params or self._config.params
        self._progress = progress
        self.generation = self._old.generation + 1
        self._next_row_id = self._old.next_row_id
        self._keys: list[pa.Array] = []
        self._deleted_keys: list[pa.Array] = []
        self._rows: list[RowsFile] = []
        self._created: list[str] = []
        self._dead: list[np.ndarray] = []
        self._builder: Graphs | SegmentBuilder | None = None
        self._builds_main = mode == "build" or not self._old.main
        # Deferred: new vectors are kept here and published pending (see flat.py), not linked.
        self._defers = defer and not self._builds_main
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_room = PENDING_BYTES // (4 * self._config.dim) - (
            self._old.pending.live if self._old.pending else 0
        )
        self._updated = 0
        self._deleted = 0
        self._done = False
        self._committed = False
        self._prepared: Manifest | None = None

    # ---- reading the state the transaction started from ----

    def lookup(self, keys: pa.Array) -> np.ndarray:
        """Live row id of each key before this transaction, or -1."""
        if self.mode == "build":
            return np.full(len(keys), -1, dtype=np.int64)
        return self.snapshot.ids.lookup(keys)

    def vectors(self, row_ids: np.ndarray) -> np.ndarray:
        """Stored vectors of existing rows (float32), e.g. to carry them over unchanged."""
        out, found = self.snapshot.vectors(row_ids)
        if not found.all():
            raise StateError(f"{self.op}: {int((~found).sum())} existing row(s) have no stored vector")
        return out

    # ---- writing ----

    def add(
        self,
        keys: pa.Array,
        vectors: np.ndarray | None,
        rows: pa.Table | None = None,
        *,
        existing: np.ndarray | None = None,
    ) -> np.ndarray:
        """Stage rows (with vectors, or without for rows that are only stored); returns their row ids.

        ``existing`` may give each key's current row id (-1 for new keys) when the caller
        already looked them up against :attr:`snapshot`, saving the lookup.
        """
        self._check_open()
        n = len(keys)
        if vectors is not None and vectors.shape != (n, self._config.dim):
            raise InputError(f"{self.op}: expected a ({n}, {self._config.dim}) matrix of vectors, got {vectors.shape}")
        if rows is not None and rows.num_rows != n:
            raise InputError(f"{self.op}: {n} keys but {rows.num_rows} rows")
        dups = duplicate_keys(keys)
        if dups:
            raise ConflictError(
                f"{self.op}: ids repeated within one write: {format_values(dups)}; nothing was applied", keys=dups
            )
        if existing is None or self.mode == "build":
            existing = self.lookup(keys)
        elif len(existing) != n:
            raise InputError(f"{self.op}: {n} keys but {len(existing)} existing row ids")
        hit = existing >= 0
        if hit.any():
            if self.mode == "insert":
                taken = keys.filter(pa.array(hit)).to_pylist()
                raise ConflictError(
                    f"{self.op}: {len(taken)} id(s) already exist: {format_values(taken)}; "
                    "use mode 'upsert' to replace them; nothing was applied",
                    keys=taken,
                )
            self._dead.append(existing[hit].astype(np.uint64))
            self._updated += int(hit.sum())
        row_ids = np.arange(self._next_row_id, self._next_row_id + n, dtype=np.uint64)
        self._next_row_id += n
        self._keys.append(keys)
        if n == 0:
            return row_ids
        if vectors is not None:
            if self._defers and n <= self._pending_room:
                self._pending.append((row_ids, np.array(vectors, dtype=np.float32)))  # a copy: callers reuse arrays
                self._pending_room -= n
            else:
                self._linked().add(row_ids, vectors, self._progress)
        file = new_name("rows", self.generation, ".parquet")
        self._created.append(file)
        write_rows(self.snapshot.directory / file, row_ids, keys, rows)
        self._rows.append(RowsFile(file=file, count=n))
        return row_ids

    def _linked(self) -> Graphs | SegmentBuilder:
        """The graphs (a new main) or the segment (the delta, extended) this write links
        vectors into, holding what it had deferred so far."""
        if self._builder is None:
            directory = self.snapshot.directory
            if self._builds_main:
                self._builder = Graphs(self._config, self._params, directory=directory)
            else:
                self._builder = SegmentBuilder(self._config, self._params, self._old.delta, directory=directory)
        self._defers = False
        for row_ids, vectors in self._pending:
            self._builder.add(row_ids, vectors)
        self._pending.clear()
        return self._builder

    def delete(self, keys: pa.Array) -> pa.Array:
        """Remove live keys; returns the keys that were not found."""
        self._check_open()
        if self.mode == "build":
            raise StateError(f"{self.op}: a build replaces everything; there is nothing to delete")
        found = self.lookup(keys)
        hit = found >= 0
        self._dead.append(found[hit].astype(np.uint64))
        self._deleted_keys.append(keys.filter(pa.array(hit)))
        self._deleted += int(hit.sum())
        missing: pa.Array = keys.filter(pa.array(~hit))
        return missing

    def prepare(self, *, meta: dict[str, object] | None = None, session_id: str | None = None) -> None:
        """Validate the whole transaction and write its files, publishing nothing yet: what
        can fail, short of publication itself, fails here (several shards written as one
        prepare each, then publish each)."""
        self._check_open()
        try:
            self._prepared = self._finish(meta, session_id)
            self._builder = None  # saved: its memory can go while other shards prepare
        except BaseException:
            self.rollback()
            raise

    def commit(self, *, meta: dict[str, object] | None = None, session_id: str | None = None) -> WriteResult:
        """Publish the new generation (preparing it first, unless :meth:`prepare` did)."""
        if self._done:
            raise StateError(f"{self.op}: this transaction is already committed or rolled back")
        if self._prepared is None:
            self.prepare(meta=meta, session_id=session_id)
        elif meta is not None or session_id is not None:
            raise StateError(f"{self.op}: this transaction is prepared; its metadata was given to prepare()")
        assert self._prepared is not None
        try:
            self._publish(self._prepared)
        except BaseException:
            self.rollback()
            raise
        self._done = self._committed = True
        inserted = self._next_row_id - self._old.next_row_id - self._updated
        deleted = self._old.live_rows if self.mode == "build" else self._deleted
        return WriteResult(
            mode=self.mode, inserted=inserted, updated=self._updated, deleted=deleted, generation=self.generation
        )

    def rollback(self) -> None:
        """Drop every file this transaction wrote; the collection stays as it was. No-op after commit."""
        if self._committed:
            return
        self._done = True
        for file in self._created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.snapshot.directory / file)
        self._created.clear()

    def _check_open(self) -> None:
        if self._done:
            raise StateError(f"{self.op}: this transaction is already committed or rolled back")
        if self._prepared is not None:
            raise StateError(f"{self.op}: this transaction is prepared; commit or roll it back")

    def _finish(self, meta: dict[str, object] | None, session_id: str | None) -> Manifest:
        keys = pa.chunked_array(self._keys, type=pa.string()).combine_chunks() if self._keys else None
        if keys is not None:
            dups = duplicate_keys(keys) if len(self._keys) > 1 else []  # one add() checked its own keys
            if dups:
                raise ConflictError(
                    f"{self.op}: ids repeated within one write: {format_values(dups)}; nothing was applied", keys=dups
                )
            if self._deleted_keys:
                both = pa.chunked_array(self._deleted_keys, type=pa.string()).combine_chunks()
                if len(both) and pc.any(pc.is_in(both, keys)).as_py():
                    raise InputError(f"{self.op}: the same key cannot be both written and deleted in one change")

        old, directory = self._old, self.snapshot.directory
        dead = np.unique(np.concatenate(self._dead)) if self._dead else np.empty(0, dtype=np.uint64)
        pending = None if self.mode == "build" else self._pending_after(dead)
        saved: list[SegmentInfo] = []
        if self._builder is not None:
            kind = "main" if self._builds_main else "delta"
            builders = self._builder.parts if isinstance(self._builder, Graphs) else [self._builder]
            for builder in builders:
                file = new_name(kind, self.generation, ".usearch")
                self._created += [file, refined_name(file)]
                saved.append(builder.save(directory / file))
        updates: dict[str, object] = {"generation": self.generation, "next_row_id": self._next_row_id}
        if session_id:
            updates["last_session"] = session_id
        if meta is not None:
            updates["meta"] = meta

        if self.mode == "build":
            return dataclasses.replace(
                old,
                config=dataclasses.replace(self._config, params=self._params),
                main=tuple(saved),
                delta=None,
                pending=None,
                rows=tuple(self._rows),
                tombstones=None,
                dead_rows=0,
                **updates,  # type: ignore[arg-type]
            )

        main, delta = old.main, old.delta
        if len(dead):
            main = tuple(
                dataclasses.replace(info, dead=info.dead + int(graph.contains(dead).sum()))
                for info, graph in zip(main, self.snapshot.main, strict=True)
            )
            if delta is not None and self.snapshot.delta is not None:
                delta = dataclasses.replace(delta, dead=delta.dead + int(self.snapshot.delta.contains(dead).sum()))
        if saved:
            if self._builds_main:
                main = tuple(saved)
                updates["config"] = dataclasses.replace(self._config, params=self._params)
            else:
                delta = dataclasses.replace(saved[0], dead=delta.dead if delta else 0)
        tombstones = old.tombstones
        if len(dead):
            tombstones = new_name("tomb", self.generation, ".npy")
            self._created.append(tombstones)
            write_tombstones(directory / tombstones, np.union1d(self.snapshot.dead, dead))
        return dataclasses.replace(
            old,
            main=main,
            delta=delta,
            pending=pending,
            rows=old.rows + tuple(self._rows),
            tombstones=tombstones,
            dead_rows=old.dead_rows + len(dead),
            **updates,  # type: ignore[arg-type]
        )

    def _pending_after(self, dead: np.ndarray) -> SegmentInfo | None:
        """The pending vectors of the next generation. A write that links vectors links the
        old pending ones with its own; a deferred one rewrites them with its own (live ones
        only); a write of no vectors only counts the ones it tombstoned."""
        old, snap = self._old.pending, self.snapshot
        if self._builder is None and not self._pending:
            if old is None or snap.pending is None:
                return None
            return dataclasses.replace(old, dead=old.dead + int(snap.pending.contains(dead).sum()))
        parts = list(self._pending)
        if snap.pending is not None:
            parts.insert(0, snap.pending.vectors(np.union1d(snap.dead, dead)))
        if self._builder is not None:
            for row_ids, vectors in parts:
                self._builder.add(row_ids, vectors)
            return None
        file = new_name("pending", self.generation, ".npz")
        self._created.append(file)
        row_ids = np.concatenate([p[0] for p in parts])
        write_flat(snap.directory / file, row_ids, np.concatenate([p[1] for p in parts]))
        return SegmentInfo(file=file, count=len(row_ids))


class PreparedTransaction:
    """A prepared transaction holding its writer lock: :meth:`publish` commits it,
    :meth:`abort` rolls it back (see :mod:`brinicle_etl.store.sharding`)."""

    def __init__(self, stack: contextlib.ExitStack, tx: Transaction):
        self._stack, self.tx = stack, tx

    def publish(self) -> WriteResult:
        with self._stack:
            return self.tx.commit()

    def abort(self, *, refused: bool = False) -> None:
        self._stack.close()


def unwind(stack: contextlib.ExitStack, error: BaseException) -> None:
    """Close ``stack`` because of ``error``, letting its context managers see the error (and
    translate it: a full disk becomes a DiskFullError, raised from here); else returns, and
    the caller re-raises ``error``."""
    stack.__exit__(type(error), error, error.__traceback__)


def prepare_in(
    transaction: contextlib.AbstractContextManager[Transaction],
    body: Callable[[Transaction], None],
    *,
    meta: dict[str, object] | None = None,
) -> PreparedTransaction:
    """Enter ``transaction``, let ``body`` fill it and prepare it; the lock stays held."""
    stack = contextlib.ExitStack()
    tx = stack.enter_context(transaction)
    try:
        body(tx)
        tx.prepare(meta=meta)
    except BaseException as exc:
        unwind(stack, exc)
        raise
    return PreparedTransaction(stack, tx)


def index_pending(snap: Snapshot, progress: BuildProgress | None = None) -> Manifest | None:
    """The next generation with the pending vectors linked into the delta segment, or None
    when there are none."""
    old = snap.manifest
    if old.pending is None or snap.pending is None:
        return None
    generation = old.generation + 1
    row_ids, vectors = snap.pending.vectors(snap.dead)
    delta = old.delta
    if len(row_ids):
        builder = SegmentBuilder(old.config, old.config.params, old.delta, directory=snap.directory)
        builder.add(row_ids, vectors, progress)
        file = new_name("delta", generation, ".usearch")
        saved = builder.save(snap.directory / file)
        delta = dataclasses.replace(saved, dead=old.delta.dead if old.delta else 0)
    return dataclasses.replace(old, generation=generation, delta=delta, pending=None)


def compact(snap: Snapshot, params: HnswParams, progress: BuildProgress | None = None) -> Manifest:
    """The next generation with every live vector in fresh main graphs and the rows in one file."""
    old = snap.manifest
    generation = old.generation + 1
    parts = [seg.vectors(snap.dead) for seg, _ in snap.segments()]
    main: tuple[SegmentInfo, ...] = ()
    if parts:
        keys = np.concatenate([p[0] for p in parts])
        vectors = np.concatenate([p[1] for p in parts])
        named = partial(new_name, "main", generation, ".usearch")
        main = build_graphs(snap.directory, named, keys, vectors, old.config, params, progress)

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
        pending=None,
        rows=rows,
        tombstones=None,
        dead_rows=0,
    )
