"""Ingest sessions: ``init`` -> ``ingest`` / ``ingest_batch`` / ``ingest_binary`` -> ``finalize`` or ``abort``.

Staged vectors live in the collection's ``session.log`` (see :mod:`staging`), synced
before a call returns, so nothing acknowledged is lost to a crash before ``finalize``.
``finalize`` applies the whole session as one transaction or, on an id conflict,
nothing; either way the session ends.
"""

from __future__ import annotations

import tempfile
import uuid
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import IO, Any, Protocol, get_args

import numpy as np

from brinicle_etl._fs import disk_full_is_an_error, pwrite_all
from brinicle_etl.errors import ConfigError, ConflictError, InputError, LockedError, StateError
from brinicle_etl.store.grouped import Group
from brinicle_etl.store.manifest import Manifest
from brinicle_etl.store.snapshot import Snapshot
from brinicle_etl.store.staging import StagingLog, encode_key, encode_keys, key_block
from brinicle_etl.store.validate import as_matrix, as_vector
from brinicle_etl.store.writer import Transaction, WriteResult, unwind
from brinicle_etl.types import SYNC_WINDOW, HnswParams, Wait, WriteMode

__all__ = ["check_binary_rows", "SESSION_LOG", "BinaryIngest", "Sessions"]

SESSION_LOG = "session.log"


class SessionMirror(Protocol):
    """Where a session's log is also kept, on object storage, so that what was acknowledged
    survives the machine: each append's bytes, stored before the call returns."""

    def save_staged(self, path: Path, session_id: str, start: int, end: int) -> None: ...
    def restore_staged(self, path: Path, finalized: str | None) -> None: ...
    def seal_staged(self, session_id: str, end: int) -> bool: ...
    def finish_staged(self, session_id: str) -> None: ...


class Sessions:
    """A collection's ingest sessions, over the few things a session needs from it: the
    writer lock with a fresh snapshot (``writing``), a snapshot to look at, publication and
    compaction. :class:`~brinicle_etl.store.collection.Collection` exposes them."""

    def __init__(
        self,
        *,
        directory: Path,
        name: str,
        writing: Callable[[Wait], AbstractContextManager[Snapshot]],
        snapshot: Callable[[], Snapshot],
        publish: Callable[[Manifest], None],
        compact: Callable[[Snapshot], object],
        mirror: SessionMirror | None = None,
    ):
        self.directory, self.name = directory, name
        self.writing, self.snapshot, self._publish, self._compact = writing, snapshot, publish, compact
        self._log: StagingLog | None = None
        self._mirror = mirror
        # Whether the local log is known to equal the mirrored one (only this object appends
        # to it while it holds the lock); unknown at first and after any failure.
        self._in_step = False
        self.group = Group(lambda wait: self.flush(wait=wait))
        """Single-vector ingests not synced yet (see :mod:`brinicle_etl.store.grouped`)."""

    def open_group(self) -> None:
        """The collection now holds its writer lock: single-vector ingests may be grouped."""
        self._log = None  # known again only once read under this lock
        self.group.open()

    def close_group(self) -> None:
        """The collection is letting its writer lock go: write what is grouped first."""
        self.group.close()
        self.flush()

    def drop_group(self) -> None:
        """The collection is gone: what is grouped goes with it."""
        self.group.close()
        self.group.discard()

    def flush(self, *, wait: Wait = True) -> None:
        """Write the grouped single-vector ingests to the session log now, durably."""
        if self.group.pending:
            with self.writing(wait) as snap:
                self._write_group(snap)

    def _write_group(self, snap: Snapshot) -> None:
        """Under the writer lock, before anything else touches the session: append the group."""
        taken = self.group.take()
        if taken is None:
            return
        try:
            log = self.require(snap, "ingest")
            if log.header.id != taken.session_id:  # the lock was held throughout: a bug if seen
                raise StateError(
                    f"ingest: {len(taken.keys)} grouped vectors belong to session {taken.session_id}, "
                    f"but the pending session on {self.name!r} is {log.header.id}"
                )
            block, matrix = key_block(taken.keys), np.stack(taken.vectors)
            self._mirrored(log, lambda: log.append(block, matrix))
        except BaseException as exc:
            self.group.restore(taken)
            exc.add_note(f"(while writing {len(taken.keys)} earlier ingest calls, grouped, to the session log)")
            raise
        self.group.written(taken)

    @property
    def dim(self) -> int:
        return self.snapshot().manifest.config.dim

    def _pending(self, snap: Snapshot) -> StagingLog | None:
        if self._mirror is not None and not self._in_step:
            # The object store holds what was acknowledged: the local log follows it.
            self._mirror.restore_staged(self.directory / SESSION_LOG, snap.manifest.last_session)
            self._log = None
            self._in_step = True
        log = StagingLog.open(self.directory / SESSION_LOG)
        if log is None:
            self._log = None
            return None
        if log.header.id == snap.manifest.last_session:
            # Finalized, but the writer died before removing the log.
            log.discard()
            self._log = None
            return None
        if self._log is not None and self._log.header.id == log.header.id:
            return self._log
        self._log = log
        return log

    def require(self, snap: Snapshot, op: str) -> StagingLog:
        """The pending session's log (under the writer lock), or the error that there is none."""
        log = self._pending(snap)
        if log is None:
            raise self.no_session(op)
        return log

    def no_session(self, op: str) -> StateError:
        return StateError(f"{op}: no pending ingest session on {self.name!r}; call init() first")

    def staged(self, snap: Snapshot) -> StagingLog | None:
        """The pending session's log, only looking: no lock needed, nothing changed."""
        log = StagingLog.open(self.directory / SESSION_LOG)
        return log if log is not None and log.header.id != snap.manifest.last_session else None

    def init(self, mode: WriteMode, *, wait: Wait) -> None:
        if mode not in get_args(WriteMode):
            raise ConfigError(f"init(mode): mode must be 'build', 'insert' or 'upsert'; got {mode!r}")
        with self.writing(wait) as snap:
            pending = self._pending(snap)
            if pending is not None:
                raise StateError(
                    f"init: an ingest session is already pending on {self.name!r} "
                    f"(mode {pending.header.mode!r}, {pending.count} vectors staged); "
                    "call finalize() to apply it or abort() to discard it"
                )
            log = StagingLog.create(
                self.directory / SESSION_LOG, session_id=uuid.uuid4().hex, mode=mode, dim=snap.manifest.config.dim
            )
            if self._mirror is not None:
                try:
                    self._mirror.save_staged(log.path, log.header.id, 0, log.end)
                except BaseException:
                    log.discard()
                    self._in_step = False
                    raise
            self._log = log
            self.group.accept(log.header.id)

    def ingest(self, key: str, vector: Any, *, wait: Wait, sync_window: float | None = None) -> None:
        v = as_vector(vector, self.dim, "ingest")
        encoded = encode_key(key, "ingest")
        window = SYNC_WINDOW.check(sync_window) if sync_window is not None else None
        if self._mirror is not None:
            window = None  # on object storage another machine may finalize: every call is durable
        # A copy: the caller may reuse its array once the call returns.
        if window is not None and self.group.add(encoded, np.array(v, dtype=np.float32), window):
            return
        with self.writing(wait) as snap:
            self._write_group(snap)
            log = self.require(snap, "ingest")
            self._mirrored(log, lambda: log.append(key_block([encoded]), v.reshape(1, -1)))
            if window is not None:
                self.group.accept(log.header.id)  # the next calls may be grouped

    def ingest_batch(self, keys: Sequence[str], vectors: Any, *, wait: Wait) -> int:
        return self.stage_batch(keys, vectors, wait=wait).publish()

    def stage_batch(self, keys: Sequence[str], vectors: Any, *, wait: Wait) -> StagedRows:
        """:meth:`ingest_batch`'s append, the writer lock held until it is kept or cut away."""
        keys = list(keys)
        matrix = as_matrix(vectors, self.dim, "ingest_batch", keys)
        if len(matrix) != len(keys):
            raise InputError(f"ingest_batch: {len(keys)} ids but {len(matrix)} vectors")
        block = encode_keys(keys, "ingest_batch")
        return self._stage(lambda log: log.append(block, matrix), len(keys), wait)

    def stage_spooled(self, spool: RowSpool, *, wait: Wait) -> StagedRows:
        """Append ``spool``'s rows to the pending session's log, the writer lock held until
        the append is kept (``publish``: mirrored where there is a mirror) or cut away
        (``abort``): several shards' appends stand or fall together."""
        fd, width, rows, crc = spool.fileno(), spool.id_width, spool.count, spool.crc
        return self._stage(lambda log: log.append_spooled(fd, id_width=width, rows=rows, crc=crc), rows, wait)

    def _stage(self, append: Callable[[StagingLog], None], count: int, wait: Wait) -> StagedRows:
        stack = ExitStack()
        snap = stack.enter_context(self.writing(wait))
        try:
            self._write_group(snap)
            log = self.require(snap, "ingest_batch")
            start = log.end
            append(log)
        except BaseException as exc:
            unwind(stack, exc)
            raise
        return StagedRows(self, stack, log, start, count)

    def _mirrored(self, log: StagingLog, append: Callable[[], None]) -> None:
        """Append locally, then to the mirror; acknowledged only once both hold it."""
        if self._mirror is None:
            append()
            return
        start = log.end
        append()
        self.mirror_from(log, start)

    def mirror_from(self, log: StagingLog, start: int) -> None:
        """Store on the mirror what was appended locally from ``start``; if it cannot be, the
        local log is cut back (never acknowledged)."""
        if self._mirror is None:
            return
        try:
            self._mirror.save_staged(log.path, log.header.id, start, log.end)
        except BaseException:
            log.cut(start)
            self._in_step = False
            raise

    def finalize(self, optimize: bool, params: HnswParams | dict[str, Any] | None, *, wait: Wait) -> WriteResult:
        result = self.prepare_finalize(params, wait=wait).publish()
        if optimize:
            with self.writing(wait) as snap:
                if snap.manifest.needs_rebuild:
                    self._compact(snap)
        return result

    def prepare_finalize(self, params: HnswParams | dict[str, Any] | None, *, wait: Wait) -> PreparedFinalize:
        """The session's transaction, prepared under the writer lock (held until it is
        published or aborted). Staged data that can never apply (an insert of an existing
        id) ends the session here; anything else (a full disk, a crash) keeps it."""
        stack = ExitStack()
        snap = stack.enter_context(self.writing(wait))
        try:
            self.group.seal()  # a call racing the finalize waits for the lock, then is told
            self._write_group(snap)
            if self._mirror is not None:
                self._in_step = False  # read what every machine appended...
            log = self.require(snap, "finalize")
            # ...then close the session there, reading again if an append came first.
            while self._mirror is not None and not self._mirror.seal_staged(log.header.id, log.end):
                self._in_step = False
                log = self.require(snap, "finalize")
            current = snap.manifest.config.params
            merged = params if isinstance(params, HnswParams) else HnswParams.from_dict(params, base=current)
            keys, vectors = log.read()
            tx = Transaction(snap, log.header.mode, publish=self._publish, params=merged, op="finalize")
            stack.callback(tx.rollback)
            try:
                tx.add(keys, vectors)
                tx.prepare(session_id=log.header.id)
            except (ConflictError, InputError):
                self.end_session(log)
                raise
        except BaseException as exc:
            unwind(stack, exc)
            raise
        return PreparedFinalize(self, stack, tx, log)

    def end_session(self, log: StagingLog) -> None:
        self.group.discard()
        if self._mirror is not None:
            self._mirror.finish_staged(log.header.id)
        log.discard()
        self._log = None

    def abort(self, *, wait: Wait) -> int:
        with self.writing(wait) as snap:
            self.group.seal()
            log = self.require(snap, "abort")
            dropped = log.count + self.group.pending
            self.end_session(log)
        return dropped


class PreparedFinalize:
    """A session's finalize, prepared and holding the writer lock: :meth:`publish` applies it
    and ends the session; :meth:`abort` keeps the session (or, ``refused``, ends it)."""

    def __init__(self, sessions: Sessions, stack: ExitStack, tx: Transaction, log: StagingLog):
        self._sessions, self._stack, self._tx, self._log = sessions, stack, tx, log

    def publish(self) -> WriteResult:
        with self._stack:
            # A publish conflict (another machine first) keeps the session: finalize again.
            result = self._tx.commit()
            # Published (the manifest names the session): its staged data is garbage now.
            self._sessions.end_session(self._log)
        return result

    def abort(self, *, refused: bool) -> None:
        with self._stack:
            if refused:
                self._sessions.end_session(self._log)


class StagedRows:
    """Rows appended to a session's log, the writer lock still held (see :meth:`Sessions.stage_spooled`)."""

    def __init__(self, sessions: Sessions, stack: ExitStack, log: StagingLog, start: int, count: int):
        self._sessions, self._stack, self._log, self._start, self._count = sessions, stack, log, start, count

    def publish(self) -> int:
        with self._stack:
            self._sessions.mirror_from(self._log, self._start)
        return self._count

    def abort(self, *, refused: bool = False) -> None:
        with self._stack:
            self._log.cut(self._start)


class RowSpool:
    """Binary rows (``id_width`` id bytes right-padded with NUL, then ``dim`` float32 values)
    fed in pieces of any size, checked as whole rows arrive (an empty id, an id that is not
    UTF-8 text, a NaN or Inf value: an error naming the row as sent) and spooled to an
    unnamed temporary file in ``directory``, which vanishes with the process."""

    def __init__(self, directory: Path, *, id_width: int, dim: int):
        self.directory = directory
        self.id_width = id_width
        self.dim = dim
        self.row_bytes = id_width + 4 * dim
        self.dtype = np.dtype([("id", f"S{id_width}"), ("v", "<f4", (dim,))])
        self._file: IO[bytes] | None = None
        self._closed = False
        self._carry = b""
        self.seen = 0
        """Whole rows taken so far: errors number rows as sent."""
        self.crc = 0
        self.count = 0
        """Rows written to this spool."""

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream; whole rows are checked and spooled."""
        rows, _keys = self.take(data)
        self.write(rows)

    def take(self, data: bytes) -> tuple[np.ndarray, list[str]]:
        """The whole rows completed by ``data``, checked, with their ids (nothing spooled)."""
        self._check_open()
        buffer = self._carry + data if self._carry else data
        usable = len(buffer) - len(buffer) % self.row_bytes
        self._carry = bytes(buffer[usable:])
        rows = np.frombuffer(memoryview(buffer)[:usable], dtype=self.dtype)
        keys = check_binary_rows(rows, first=self.seen)
        self.seen += len(rows)
        return rows, keys

    def write(self, rows: np.ndarray) -> None:
        """Spool whole rows (checked by :meth:`take`)."""
        if not len(rows):
            return
        data = np.ascontiguousarray(rows).view(np.uint8).data
        fd = self.fileno()
        with disk_full_is_an_error(self.directory):
            pwrite_all(fd, data, self.count * self.row_bytes)
        self.crc = zlib.crc32(data, self.crc)
        self.count += len(rows)

    def check_aligned(self) -> None:
        """InputError if the stream ended inside a row."""
        if self._carry:
            raise InputError(
                f"ingest_batch: payload not aligned to rows: leftover {len(self._carry)} bytes, "
                f"rows are {self.row_bytes} bytes ({self.id_width}-byte id + {self.dim} float32)"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise StateError("ingest_batch: this binary ingest is already finished or aborted")

    def fileno(self) -> int:
        self._check_open()
        if self._file is None:
            with disk_full_is_an_error(self.directory):
                # no name (O_TMPFILE where the file system has it)
                self._file = tempfile.TemporaryFile(dir=self.directory)  # noqa: SIM115 (closed by close)
        return self._file.fileno()

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None


class BinaryIngest:
    """One streamed binary batch into the pending session: all rows, or none.

    Rows are checked and spooled as they arrive (:class:`RowSpool`, beside the collection)
    without the writer lock: a slow or stalled upload holds up no other writer, and a crash
    leaves nothing behind. :meth:`finish` takes the lock only to copy the checked rows into
    the session log as one record.
    """

    def __init__(self, sessions: Sessions, *, id_width: int):
        self._sessions = sessions
        # Without the lock: only look, so a missing session fails before any body is read.
        if sessions.staged(sessions.snapshot()) is None:
            raise sessions.no_session("ingest_batch")
        self._spool = RowSpool(sessions.directory, id_width=id_width, dim=sessions.dim)

    def __enter__(self) -> BinaryIngest:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.abort()

    @property
    def count(self) -> int:
        return self._spool.count

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream; whole rows are checked and spooled."""
        self._spool.feed(data)

    def finish(self, *, wait: Wait = True) -> int:
        """Stage every row at once, durably, into the session pending now; returns how many.

        ``wait`` is for the writer lock, as everywhere. On any error nothing is staged and
        the batch is over, except when the lock was busy (LockedError): then it may be retried."""
        try:
            self._spool.check_aligned()
            staged = self._sessions.stage_spooled(self._spool, wait=wait)
        except LockedError:
            raise
        except BaseException:
            self.abort()
            raise
        try:
            return staged.publish()
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything fed so far; the session is as it was before."""
        self._spool.close()


def check_binary_rows(rows: np.ndarray, *, first: int) -> list[str]:
    """The ids of binary rows (``id`` NUL-padded bytes, ``v`` float32 values), numbered from
    ``first`` in errors: an empty id, one that is not UTF-8 text, or a NaN/Inf value."""
    ids = rows["id"]
    empty = ids == b""
    if empty.any():
        raise InputError(f"ingest_batch: row {first + int(np.argmax(empty))} has an empty external id")
    finite = np.isfinite(rows["v"]).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InputError(f"ingest_batch: row {first + row} (id {_id(ids[row])!r}) contains NaN/Inf")
    keys = []
    for i, raw in enumerate(ids.tolist()):
        try:
            keys.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"ingest_batch: row {first + i} has an id that is not UTF-8 text") from None
    return keys


def _id(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
