"""A collection's writer lock as one writer's turn: taken for each write, or held across
calls (brinicle's session, ``init`` ... ``finalize``, as one turn), during which the writes
made through the same object do not take it again and every other writer waits."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from brinicle_etl.errors import StateError
from brinicle_etl.store.lock import writer_lock
from brinicle_etl.types import Wait

__all__ = ["WriterTurn"]


class WriterTurn:
    """``opened`` runs when the lock is taken to be held, ``closing`` before it is let go (it
    writes what was staged for the turn; if it raises, the lock stays held), and
    ``unwritten`` counts what is still staged then."""

    def __init__(
        self,
        directory: Path,
        name: str,
        *,
        opened: Callable[[], None],
        closing: Callable[[], None],
        unwritten: Callable[[], int],
    ):
        self._directory, self._name = directory, name
        self._opened, self._closing, self._unwritten = opened, closing, unwritten
        self._held: ExitStack | None = None
        self._mutex = threading.Lock()

    def hold(self, *, wait: Wait = False) -> bool:
        """Take the lock and keep it until :meth:`release`; whether it took it now (False:
        already held)."""
        if self._held is not None:
            return False
        # The file lock is waited for outside the mutex: other threads' writes through this
        # object keep failing fast (or waiting) as they asked, not behind this wait.
        held = ExitStack()
        held.enter_context(writer_lock(self._directory, wait=wait, name=self._name))
        with self._mutex:
            if self._held is None:
                self._held = held
                self._opened()
                return True
        held.close()  # another thread of this object took it meanwhile
        return False

    def release(self) -> None:
        """Let the lock go, once what was staged for the turn is written."""
        if self._held is None:
            return
        self._closing()  # if this raises, the lock stays held
        # After any write another thread is making under the held lock, never during it.
        with self._mutex:
            unwritten = self._unwritten()
            if unwritten:  # closed and written: only a failed write leaves rows
                raise StateError(
                    f"{unwritten} ingest calls on {self._name!r} are not written yet; "
                    "call flush(), then let the lock go"
                )
            held, self._held = self._held, None
        if held is not None:
            held.close()

    @contextmanager
    def lock(self, wait: Wait) -> Iterator[None]:
        """The lock for one write: the held one, or taken for the write."""
        # Held across calls: threads sharing this object still write one at a time. Checked
        # under the mutex, so a release cannot slip between the check and the write.
        with self._mutex:
            if self._held is not None:
                yield
                return
        with writer_lock(self._directory, wait=wait, name=self._name):
            yield
