"""Single-vector ``ingest`` calls made durable in groups: one append and one sync for many calls.

A writer that holds a collection for its whole session (``VectorEngine`` between ``init`` and
``finalize``) may stage vectors without syncing each call, as Redis' ``appendfsync everysec``
and Postgres' ``synchronous_commit=off`` do. The group is appended to the session log as one
record, synced, when it reaches :data:`GROUP_ROWS` rows, when its oldest row is ``sync_window``
seconds old (a background thread), before anything else this writer does to the session
(another append, ``finalize``, ``abort``), before the lock is let go, and at interpreter exit.
So a crash (SIGKILL, power loss) loses at most the calls of the last ``sync_window`` seconds,
and nothing else; ``ingest_batch`` and binary batches stay durable when they return.

Grouping only applies while this writer holds the lock: no other writer can finalize or abort
the session under it, so every grouped row reaches the session it was staged for.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["GROUP_ROWS", "Group", "Taken"]

GROUP_ROWS = 4096
"""A group this large is written at once, whatever its age: memory stays small and a crash
right after a burst of calls loses little."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A group taken out to be written: the session it belongs to, its keys and vectors."""

    session_id: str
    keys: list[bytes]
    vectors: list[np.ndarray]


class Group:
    """The rows staged in memory since the last sync, with the thread that writes them in time.

    ``flush`` (given by the session) takes the writer lock and writes what :meth:`take`
    returns. Rows are only accepted between :meth:`open` and :meth:`close`, which the
    collection calls as it takes and lets go of its writer lock.
    """

    def __init__(self, flush: Callable[[], None]):
        self._flush = flush
        self._wake = threading.Condition(threading.Lock())
        self._accepting = False
        self._session = ""
        self._keys: list[bytes] = []
        self._vectors: list[np.ndarray] = []
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._failed = False

    def open(self) -> None:
        with self._wake:
            self._accepting = True

    def close(self) -> None:
        """Accept no more rows (those held stay until written)."""
        with self._wake:
            self._accepting = False

    @property
    def pending(self) -> int:
        return len(self._keys)

    @property
    def failed(self) -> bool:
        """Whether the last background write failed: the next call writes in its own thread."""
        return self._failed

    def add(self, session_id: str, key: bytes, vector: np.ndarray, window: float) -> bool | None:
        """Hold one row for ``session_id``, to be on disk within ``window`` seconds. None if rows
        are not accepted now (the caller writes it durably itself); else whether the group is
        full (the caller writes it now)."""
        with self._wake:
            if not self._accepting or self._failed or (self._keys and self._session != session_id):
                return None
            self._session = session_id
            self._keys.append(key)
            self._vectors.append(vector)
            deadline = time.monotonic() + window
            if deadline < self._deadline:
                self._deadline = deadline
                self._wake.notify()
            if self._thread is None:
                _unwritten.add(self)
                self._thread = threading.Thread(target=self._run, name="brinicle-grouped-sync", daemon=True)
                self._thread.start()
            return len(self._keys) >= GROUP_ROWS

    def take(self) -> Taken | None:
        """Everything held, to be written now (give it back with :meth:`restore` if that fails)."""
        with self._wake:
            if not self._keys:
                return None
            taken = Taken(self._session, self._keys, self._vectors)
            self._keys, self._vectors, self._deadline = [], [], float("inf")
            return taken

    def restore(self, taken: Taken) -> None:
        """Put back rows that could not be written, ahead of any held since (order is kept)."""
        with self._wake:
            self._keys = taken.keys + self._keys
            self._vectors = taken.vectors + self._vectors
            self._session = taken.session_id
            self._deadline = time.monotonic()

    def discard(self) -> int:
        """Drop what is held (the session was aborted); returns how many rows."""
        with self._wake:
            dropped = len(self._keys)
            self._keys, self._vectors, self._deadline, self._failed = [], [], float("inf"), False
            return dropped

    def written(self) -> None:
        """A write in the caller's thread succeeded: background writes may resume."""
        self._failed = False

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
                self._flush()
            except BaseException:
                # Kept in memory; the next call writes them in its own thread and sees the error.
                with self._wake:
                    self._failed = True


_unwritten: weakref.WeakSet[Group] = weakref.WeakSet()


@atexit.register
def _write_at_exit() -> None:
    for group in list(_unwritten):
        if group.pending:
            try:
                group._flush()
            except Exception as exc:  # nothing to raise to at exit: say what was lost
                print(f"brinicle-etl: {group.pending} staged vectors were not written: {exc}", file=sys.stderr)
