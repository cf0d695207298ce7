"""A collection: vectors in usearch segments, rows in Parquet, one manifest naming them.

Reads never lock: each call reads the current generation (:mod:`~brinicle_etl.store.current`
reopens it when a writer replaced the manifest, in any process). Writes take the writer lock
(:mod:`~brinicle_etl.store.turn`: per write, or held across a session), build new files
(:mod:`~brinicle_etl.store.writer`), and publish them by replacing the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import pyarrow as pa

from brinicle_etl._fs import LocalFile, disk_full_is_an_error
from brinicle_etl.errors import (
    AlreadyExistsError,
    ConfigError,
    NotFoundError,
)
from brinicle_etl.store import indexing
from brinicle_etl.store.collection_reads import CollectionReads
from brinicle_etl.store.current import Current
from brinicle_etl.store.files import remove_unreferenced
from brinicle_etl.store.lock import lock_key, writer_lock
from brinicle_etl.store.manifest import (
    MANIFEST,
    CollectionConfig,
    ConfigSettings,
    Manifest,
    manifest_bytes,
    read_manifest,
    write_manifest,
)
from brinicle_etl.store.remote import DEFAULT_RETENTION_SECONDS, RemoteCollection, VacuumResult
from brinicle_etl.store.sessions import SESSION_LOG, BinaryIngest, PreparedFinalize, RowSpool, Sessions, StagedRows
from brinicle_etl.store.snapshot import Snapshot
from brinicle_etl.store.turn import WriterTurn
from brinicle_etl.store.validate import as_keys, as_write
from brinicle_etl.store.writer import (
    DeleteResult,
    PreparedTransaction,
    Transaction,
    WriteResult,
    compact,
    index_pending,
    prepare_in,
)
from brinicle_etl.types import (
    BuildProgress,
    HnswParams,
    Metric,
    VectorDType,
    Wait,
    WriteMode,
    check_choice,
)

__all__ = ["Collection", "CollectionStatus"]


log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class CollectionStatus:
    """A collection's settings and counts. ``main_count``, ``delta_count`` and ``pending_count``
    count live vectors (pending: written by a deferred write, found by exact search, being
    linked into the delta in the background)."""

    name: str
    dim: int
    metric: Metric
    dtype: VectorDType
    params: HnswParams
    delta_ratio: float
    live_count: int
    main_count: int
    delta_count: int
    deleted_count: int
    generation: int
    bytes_on_disk: int
    pending_count: int
    needs_rebuild: bool
    has_index: bool
    session_mode: WriteMode | None
    staged_count: int
    shards: tuple[CollectionStatus, ...] = ()
    """A sharded collection's shards, each with its own figures (the fields above are totals)."""


class Collection(CollectionReads):
    """Open an existing collection directory. Use :meth:`create` (or a ``Store``) to make one.

    Reads and search are :class:`~brinicle_etl.store.collection_reads.CollectionReads`'."""

    def __init__(
        self, directory: str | os.PathLike[str], *, name: str | None = None, remote: RemoteCollection | None = None
    ):
        self.directory = Path(directory)
        self.name = name or self.directory.name
        # On object storage ``directory`` is the local cache of the newest generation.
        self._remote = remote
        if remote is not None:
            remote.pull()
        if not (self.directory / MANIFEST).exists():
            raise NotFoundError(f"collection {self.name!r} not found at {self.directory}")
        self._current = Current(self.directory, name=self.name, remote=remote)
        self._sessions = Sessions(
            directory=self.directory,
            name=self.name,
            writing=self._writing,
            snapshot=self._snapshot,
            publish=self._publish,
            compact=lambda snap: self._compact(snap, None, None),
            mirror=remote,
        )
        self._turn = WriterTurn(
            self.directory,
            self.name,
            opened=self._sessions.open_group,
            closing=self._sessions.close_group,
            unwritten=lambda: self._sessions.group.pending,
        )
        self._snapshot()

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        config: CollectionConfig | None = None,
        *,
        meta: dict[str, Any] | None = None,
        name: str | None = None,
        exist_ok: bool = False,
        remote: RemoteCollection | None = None,
        first_row_id: int = 0,
        **settings: Unpack[ConfigSettings],
    ) -> Collection:
        """Create an empty collection with ``config``, or with its settings as keywords
        (``dim=384, metric="cosine"``...). With ``exist_ok``, open it instead if it exists
        with the same dim. Its rows are numbered from ``first_row_id`` (a shard's range)."""
        config = CollectionConfig.of(config, settings)
        path = Path(directory)
        label = name or path.name
        first = Manifest(config=config, meta=meta or {}, next_row_id=first_row_id)
        if remote is not None:
            try:
                remote.create(first)
            except AlreadyExistsError:
                if not exist_ok:
                    raise
            return cls._checked_dim(cls(path, name=label, remote=remote), config)
        if exist_ok and (path / MANIFEST).exists():
            # Without the writer lock: a collection being written to (say, a shard another step
            # ingests into) is opened, not waited for, and its writer is never made to wait.
            return cls._checked_dim(cls(path, name=label), config)
        with disk_full_is_an_error(path):
            path.mkdir(parents=True, exist_ok=True)
            # Created if absent, without the writer lock: of several processes creating it at
            # once one does, and none makes a writer already at work in it fail as locked.
            if not LocalFile(path / MANIFEST).create(manifest_bytes(first)) and not exist_ok:
                raise AlreadyExistsError(f"collection {label!r} already exists at {path}")
        return cls._checked_dim(cls(path, name=label), config)

    @staticmethod
    def _checked_dim(collection: Collection, config: CollectionConfig) -> Collection:
        if collection.config.dim != config.dim:
            raise ConfigError(
                f"collection {collection.name!r} exists with dim {collection.config.dim}, not {config.dim}"
            )
        return collection

    def snapshot(self) -> Snapshot:
        """The current generation as opened for reading (what every search of this object reads
        until a newer one is published): for readers that search several collections as one."""
        return self._snapshot()

    @property
    def marker(self) -> str:
        """The file whose presence says the collection exists (its manifest)."""
        return self._current.manifest_path

    # ---- reading (the rest: CollectionReads) -------------------------------------------

    def __repr__(self) -> str:
        return f"<Collection {self.name!r} at {str(self.directory)!r}>"

    def status(self) -> CollectionStatus:
        snap = self._snapshot()
        m = snap.manifest
        pending = self._sessions.staged(snap)
        files = [MANIFEST, *m.files()] + ([SESSION_LOG] if pending else [])
        size = 0
        for f in files:
            with suppress(FileNotFoundError):
                size += os.path.getsize(self.directory / f)
        return CollectionStatus(
            name=self.name,
            dim=m.config.dim,
            metric=m.config.metric,
            dtype=m.config.dtype,
            params=m.config.params,
            delta_ratio=m.config.delta_ratio,
            live_count=m.live_rows,
            main_count=sum(graph.live for graph in m.main),
            delta_count=m.delta.live if m.delta else 0,
            deleted_count=m.dead_rows,
            generation=m.generation,
            bytes_on_disk=size,
            pending_count=m.pending.live if m.pending else 0,
            needs_rebuild=m.needs_rebuild,
            has_index=bool(m.main),
            session_mode=pending.header.mode if pending else None,
            staged_count=(pending.count if pending else 0) + self._sessions.group.pending,
        )

    # ---- ingest sessions (brinicle's init -> ingest -> finalize) ----------------------

    def init(self, mode: WriteMode, *, wait: Wait = False) -> None:
        """Start an ingest session; nothing is visible until :meth:`finalize`."""
        self._sessions.init(mode, wait=wait)

    def ingest(self, key: str, vector: Any, *, wait: Wait = True, sync_window: float | None = None) -> None:
        """Stage one vector; it is on disk when this returns, unless ``sync_window`` is given.

        ``sync_window`` (seconds): while this object holds the writer lock
        (:meth:`hold_writer_lock`, as ``VectorEngine`` does from ``init`` to ``finalize``),
        the vector may instead be grouped with other calls and be on disk within that many
        seconds (see :mod:`brinicle_etl.store.grouped`); :meth:`flush` writes the group now."""
        self._sessions.ingest(key, vector, wait=wait, sync_window=sync_window)

    def flush(self, *, wait: Wait = True) -> None:
        """Write grouped single-vector ingests (``sync_window``) to the session log now."""
        self._sessions.flush(wait=wait)

    def ingest_batch(self, keys: Sequence[str], vectors: Any, *, wait: Wait = True) -> int:
        """Stage many vectors in one durable append; returns how many."""
        return self._sessions.ingest_batch(keys, vectors, wait=wait)

    def ingest_binary(self, *, id_width: int = 32) -> BinaryIngest:
        """Stage rows of ``id_width`` id bytes (right-padded with NUL) and ``dim`` float32 values,
        fed in pieces of any size: brinicle's binary batch format, streamed.

        Returns a :class:`BinaryIngest`: ``feed`` it bytes, then ``finish()`` (all rows
        staged at once, durably) or ``abort()`` (nothing staged). Only ``finish`` takes
        the writer lock.
        """
        return BinaryIngest(self._sessions, id_width=id_width)

    def finalize(
        self, optimize: bool = False, params: HnswParams | dict[str, Any] | None = None, *, wait: Wait = True
    ) -> WriteResult:
        """Apply the session atomically. On an id conflict nothing is applied and the session ends."""
        return self._sessions.finalize(optimize, params, wait=wait)

    def stage_batch(self, keys: Sequence[str], vectors: Any, *, wait: Wait = True) -> StagedRows:
        """:meth:`ingest_batch`, holding the writer lock until the rows are kept or cut away."""
        return self._sessions.stage_batch(keys, vectors, wait=wait)

    def stage_spooled(self, spool: RowSpool, *, wait: Wait = True) -> StagedRows:
        """Append checked binary rows to the pending session, holding the writer lock until
        they are kept or cut away (several shards' rows as one batch)."""
        return self._sessions.stage_spooled(spool, wait=wait)

    def prepare_finalize(
        self, params: HnswParams | dict[str, Any] | None = None, *, wait: Wait = True
    ) -> PreparedFinalize:
        """:meth:`finalize` up to publication, holding the writer lock (several shards as one)."""
        return self._sessions.prepare_finalize(params, wait=wait)

    def abort(self, *, wait: Wait = True) -> int:
        """Discard the pending session; returns how many staged vectors were dropped."""
        return self._sessions.abort(wait=wait)

    # ---- writing -------------------------------------------------------------------

    def hold_writer_lock(self, *, wait: Wait = False) -> bool:
        """Take the writer lock and keep it until :meth:`release_writer_lock` (or until this
        object is dropped): the writes made through this object in between do not take it
        again, and every other writer waits. brinicle's session (init ... finalize) as one
        writer's turn. Returns whether it took the lock now (False: already held)."""
        return self._turn.hold(wait=wait)

    def release_writer_lock(self) -> None:
        """Let the writer lock go, once grouped ingests are written (if that fails, it raises
        and the lock stays held: nothing staged is left without its writer)."""
        self._turn.release()

    @contextmanager
    def _writing(self, wait: Wait) -> Iterator[Snapshot]:
        with self._turn.lock(wait):
            snap = self._snapshot(fresh=True)
            remove_unreferenced(self.directory, snap.manifest.files())
            # A full disk anywhere below: whatever generation is current stays, and what the
            # write had created goes now rather than at the next write.
            with disk_full_is_an_error(self.directory, cleanup=self._remove_unpublished):
                yield snap

    def _remove_unpublished(self) -> None:
        remove_unreferenced(self.directory, read_manifest(self.directory).files())

    def _publish(self, manifest: Manifest) -> None:
        if self._remote is not None:
            # The commit point on object storage; a writer that lost the race raises here.
            self._remote.push(read_manifest(self.directory), manifest)
        write_manifest(self.directory, manifest)
        self._current.published()
        # Published: what follows is housekeeping, and must not fail the write.
        with suppress(OSError):
            remove_unreferenced(self.directory, manifest.files())
        if manifest.pending is not None and self._remote is None:
            indexing.start(lock_key(self.directory), self._index_in_background)

    def _index_in_background(self, started: Callable[[], None]) -> None:
        with indexing.turn(lambda seconds: writer_lock(self.directory, wait=seconds, name=self.name)) as held:
            if not held:
                return
            started()
            snap = self._snapshot(fresh=True)
            with disk_full_is_an_error(self.directory, cleanup=self._remove_unpublished):
                manifest = index_pending(snap)
                if manifest is not None:
                    self._publish(manifest)

    def index_pending(self, *, wait: Wait = False) -> bool:
        """Link the vectors deferred writes left pending into the index now (a background
        job does it after each such write: this is for one that could not run). A job of
        this process that is linking them is let finish first; returns whether this call
        found any left to link."""
        with self._writing(wait) as snap:
            manifest = index_pending(snap)
            if manifest is None:
                return False
            self._publish(manifest)
            return True

    def write(
        self,
        keys: Any,
        vectors: Any = None,
        *,
        mode: WriteMode = "upsert",
        rows: pa.Table | None = None,
        delete: Any = None,
        params: HnswParams | None = None,
        meta: dict[str, Any] | None = None,
        wait: Wait = False,
        progress: BuildProgress | None = None,
    ) -> WriteResult:
        """Write rows in one atomic step: ``build`` replaces all, ``insert`` adds new keys, ``upsert`` both.

        ``vectors`` may be None for rows stored without vectors. ``delete`` removes keys
        in the same generation. An insert of an existing key, or a key given twice,
        raises ConflictError and writes nothing.
        """
        return self.prepare_write(
            keys,
            vectors,
            mode=mode,
            rows=rows,
            delete=delete,
            params=params,
            meta=meta,
            wait=wait,
            progress=progress,
        ).publish()

    def prepare_write(
        self,
        keys: Any,
        vectors: Any = None,
        *,
        mode: WriteMode = "upsert",
        rows: pa.Table | None = None,
        delete: Any = None,
        params: HnswParams | None = None,
        meta: dict[str, Any] | None = None,
        wait: Wait = False,
        progress: BuildProgress | None = None,
    ) -> PreparedTransaction:
        """:meth:`write` up to publication: checked, written, holding the writer lock until
        ``publish()`` or ``abort()`` (several shards written as one)."""
        check_choice("mode", mode, WriteMode)
        key_array, matrix = as_write(keys, vectors, rows, self.dim, "write")
        delete_array = as_keys(delete, "write") if delete is not None else None

        def body(tx: Transaction) -> None:
            tx.add(key_array, matrix, rows)
            if delete_array is not None and len(delete_array):
                tx.delete(delete_array)

        return prepare_in(self.transaction(mode, params=params, wait=wait, progress=progress), body, meta=meta)

    @contextmanager
    def transaction(
        self,
        mode: WriteMode,
        *,
        params: HnswParams | None = None,
        wait: Wait = False,
        progress: BuildProgress | None = None,
        op: str = "write",
        defer_index: bool = False,
    ) -> Iterator[Transaction]:
        """Hold the writer lock and stream a write through a :class:`Transaction`.

        Nothing is visible until ``tx.commit()``; leaving the block without committing
        (or with an exception) discards everything the transaction wrote. ``defer_index``
        publishes new vectors pending (found by exact search at once, linked into the index
        by a background job: see :mod:`~brinicle_etl.store.indexing`) instead of linking
        them before the commit; never on object storage, where another machine may write next.
        """
        check_choice("mode", mode, WriteMode)
        with self._writing(wait) as snap:
            tx = Transaction(
                snap,
                mode,
                publish=self._publish,
                params=params,
                op=op,
                progress=progress,
                defer=defer_index and self._remote is None,
            )
            try:
                yield tx
            finally:
                tx.rollback()  # a no-op once committed

    def delete(self, keys: Any, *, return_not_found: bool = False, wait: Wait = False) -> DeleteResult:
        """Delete live keys. Keys not found (including already deleted ones) are listed if asked."""
        key_array = pa.array(list(dict.fromkeys(as_keys(keys, "delete").to_pylist())), pa.string())
        with self.transaction("upsert", wait=wait, op="delete") as tx:
            missing = tx.delete(key_array)
            not_found = missing.to_pylist() if return_not_found else None
            if len(missing) == len(key_array):
                return DeleteResult(deleted_count=0, not_found=not_found, generation=tx.generation - 1)
            result = tx.commit()
        return DeleteResult(deleted_count=result.deleted, not_found=not_found, generation=result.generation)

    def rebuild(
        self,
        params: HnswParams | dict[str, Any] | None = None,
        *,
        wait: Wait = False,
        progress: BuildProgress | None = None,
    ) -> int:
        """Compact every live vector into fresh main graphs (see ``segment.GRAPH_ROWS``); returns the new generation.

        Keeps the collection's own HNSW params unless new ones are given (they are then persisted).
        """
        with self._writing(wait) as snap:
            return self._compact(snap, params, progress)

    def optimize(self, *, wait: Wait = False) -> bool:
        """Rebuild only if ``needs_rebuild``, else link pending vectors if there are any;
        returns whether it did either."""
        with self._writing(wait) as snap:
            if not snap.manifest.needs_rebuild:
                manifest = index_pending(snap)
                if manifest is not None:
                    self._publish(manifest)
                return manifest is not None
            self._compact(snap, None, None)
            return True

    def _compact(
        self, snap: Snapshot, params: HnswParams | dict[str, Any] | None, progress: BuildProgress | None
    ) -> int:
        current = snap.manifest.config.params
        merged = params if isinstance(params, HnswParams) else HnswParams.from_dict(params, base=current)
        manifest = compact(snap, merged, progress)
        self._publish(manifest)
        return manifest.generation

    def destroy(self, *, wait: Wait = False) -> None:
        """Delete the collection's directory and every file in it."""
        trash = self.directory.parent / f".dropped-{self.directory.name}-{secrets.token_hex(4)}"
        with self._turn.lock(wait):
            if self._remote is not None:
                self._remote.destroy()
            self._sessions.drop_group()
            os.replace(self.directory, trash)
        self.release_writer_lock()
        shutil.rmtree(trash, ignore_errors=True)

    def vacuum(self, *, retention_seconds: float = DEFAULT_RETENTION_SECONDS, wait: Wait = False) -> VacuumResult:
        """Remove what no reader can still need. On object storage: objects of generations
        superseded more than ``retention_seconds`` ago (see
        :meth:`~brinicle_etl.store.remote.RemoteCollection.vacuum`); locally, where every write
        removes the files it replaced, what a crashed writer left."""
        with self._turn.lock(wait):
            manifest = read_manifest(self.directory)
            removed = remove_unreferenced(self.directory, manifest.files())
        if self._remote is not None:
            return self._remote.vacuum(retention_seconds)
        return VacuumResult(removed=removed, bytes_freed=0, kept_generations=[manifest.generation])

    def set_meta(self, meta: dict[str, Any], *, wait: Wait = False) -> None:
        """Replace the collection's free-form metadata (a new generation, nothing else changes)."""
        with self._writing(wait) as snap:
            self._publish(dataclasses.replace(snap.manifest, generation=snap.manifest.generation + 1, meta=meta))
