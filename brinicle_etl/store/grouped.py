"""Single-vector ``ingest`` calls made durable in groups: one append and one sync for many calls.

A writer that holds a local collection for its whole session (``VectorEngine`` between
``init`` and ``finalize``) may stage vectors without syncing each call, as Redis'
``appendfsync everysec`` and Postgres' ``synchronous_commit=off`` do. The group is appended to
the session log as one record, synced, when its oldest row is ``sync_window`` seconds old (a
background thread), by the call that finds :data:`GROUP_ROWS` rows waiting, before anything
else this writer does to the session (another append, ``finalize``, ``abort``), before the
lock is let go, and at interpreter exit. So a crash (SIGKILL, power loss) loses at most the
calls of the last ``sync_window`` seconds, nothing else; ``ingest_batch`` and binary batches
stay durable when they return.

Rows are taken only for the session known under the lock this writer holds: no other writer
can finalize or abort it meanwhile (on object storage another machine could, so mirrored
sessions never group), and ``finalize`` / ``abort`` seal the group before they start, so a
call racing them waits for the lock and is told the session is over instead of being kept
for a session that is gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["GROUP_ROWS", "Group"]

GROUP_ROWS = 4096
"""The call that finds this many rows waiting writes them (and itself) at once: memory stays
small and a crash right after a burst of calls loses little."""

_EXIT_WAIT = 30.0
"""At interpreter exit, how long to wait for the writer lock to write what is grouped."""

log = logging.getLogger("brinicle_etl.store")


@dataclass(frozen=True, slots=True)
class Taken:
    """A group taken out to be written: the session it belongs to, its keys and vectors."""

    session_id: str
    keys: list[bytes]
    vectors: list[np.ndarray]


class Group:
    """The rows staged in memory since the last sync, with the thread that writes them in time.

    ``flush(wait)`` (given by the session) takes the writer lock and writes what :meth:`take`
    returns. Rows are accepted only while the group is open (the collection holds its writer
    lock: :meth:`open` / :meth:`close`) and bound to a session (:meth:`accept`, called under
    that lock; :meth:`seal` ends it).
    """

    def __init__(self, flush: Callable[[float], None]):
        self._flush = flush
        self._wake = threading.Condition(threading.Lock())
        self._open = False
        self._session: str | None = None
        self._rows_session = ""  # the session the held rows were accepted for
        self._keys: list[bytes] = []
        self._vectors: list[np.ndarray] = []
        self._in_flight = 0  # rows taken by a write that has not finished yet
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._failed = False
        _groups.add(self)

    def open(self) -> None:
        """The collection took its writer lock: rows may be grouped once a session is accepted."""
        with self._wake:
            self._open, self._session = True, None

    def close(self) -> None:
        """The collection is letting its lock go: no more rows (those held stay until written)."""
        with self._wake:
            self._open, self._session = False, None

    def accept(self, session_id: str) -> None:
        """Under the writer lock: the pending session is ``session_id``; rows may join it."""
        with self._wake:
            if self._open:
                self._session = session_id

    def seal(self) -> None:
        """Under the writer lock, before the session is finalized or aborted: no more rows."""
        with self._wake:
            self._session = None

    @property
    def pending(self) -> int:
        """Rows not known to be on disk: waiting, or taken by a write still running."""
        return len(self._keys) + self._in_flight

    def add(self, key: bytes, vector: np.ndarray, window: float) -> bool:
        """Hold one row, to be on disk within ``window`` seconds; False if it is not taken (the
        caller writes it durably itself, after what is grouped): no session accepted, a full
        group, or a background write that failed (the caller's write reports why)."""
        with self._wake:
            if self._session is None or self._failed or len(self._keys) >= GROUP_ROWS:
                return False
            if not self._keys:
                self._rows_session = self._session
                _unwritten.add(self)
            self._keys.append(key)
            self._vectors.append(vector)
            deadline = time.monotonic() + window
            if deadline < self._deadline:
                self._deadline = deadline
                self._wake.notify()
            self._start()
            return True

    def take(self) -> Taken | None:
        """Everything held, to be written now: :meth:`written` or :meth:`restore` after."""
        with self._wake:
            if not self._keys:
                return None
            taken = Taken(self._rows_session, self._keys, self._vectors)
            self._in_flight += len(self._keys)
            self._keys, self._vectors, self._deadline = [], [], float("inf")
            return taken

    def written(self, taken: Taken) -> None:
        with self._wake:
            self._in_flight -= len(taken.keys)
            self._failed = False
            if not self._keys:
                _unwritten.discard(self)

    def restore(self, taken: Taken) -> None:
        """Put back rows that could not be written, ahead of any held since (order is kept),
        and try again after a pause."""
        with self._wake:
            self._in_flight -= len(taken.keys)
            self._rows_session = taken.session_id
            self._keys = taken.keys + self._keys
            self._vectors = taken.vectors + self._vectors
            self._deadline = min(self._deadline, time.monotonic() + 1.0)
            self._start()

    def discard(self) -> int:
        """Drop what is held (the session was aborted or the collection dropped); how many rows."""
        with self._wake:
            dropped = len(self._keys)
            self._keys, self._vectors, self._deadline, self._failed = [], [], float("inf"), False
            _unwritten.discard(self)
            return dropped

    def _start(self) -> None:
        if self._thread is None and not self._failed:
            self._thread = threading.Thread(target=self._run, name="brinicle-grouped-sync", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._keys or self._failed:
                    self._thread = None
                    return
                delay = self._deadline - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
            try:
                self._flush(True)
            except Exception:
                # Kept in memory; the next call writes them in its own thread and raises why.
                with self._wake:
                    self._failed = True
                log.warning(
                    "writing %d grouped ingest calls failed; the next call retries", self.pending, exc_info=True
                )

    def _after_fork(self) -> None:
        """In a forked child: the rows and the lock are the parent's, not this process's."""
        self._wake = threading.Condition(threading.Lock())
        self._open, self._session, self._thread, self._failed = False, None, None, False
        self._keys, self._vectors, self._in_flight, self._deadline = [], [], 0, float("inf")


_groups: weakref.WeakSet[Group] = weakref.WeakSet()
_unwritten: set[Group] = set()
"""Groups holding rows: kept alive (with their collection and its lock) until written."""


def _forget_in_child() -> None:
    _unwritten.clear()
    for group in list(_groups):
        group._after_fork()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _write_at_exit() -> None:
    for group in list(_unwritten):
        group.close()
        if group.pending:
            try:
                group._flush(_EXIT_WAIT)
            except Exception as exc:  # nothing to raise to at exit: say what was lost
                print(f"brinicle-etl: {group.pending} staged vectors were not written: {exc}", file=sys.stderr)
