"""One writer at a time: an ``flock`` on the collection's ``.lock`` file.

The kernel drops the lock when its holder dies, so a crashed writer never leaves
the collection locked. Readers never take it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from brinicle_etl.errors import LockedError
from brinicle_etl.store import indexing

__all__ = ["lock_key", "writer_lock"]

LOCK_FILE = ".lock"

# flock locks belong to open file descriptions, so two threads of one process with
# separate descriptors exclude each other too; this lock just keeps them from
# spinning against each other while waiting.
_process_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()
# Which thread took each process lock: a thread waiting for a lock it holds itself (through
# another object's held session) would wait forever, so it is told at once instead.
_owners: dict[str, int] = {}


def lock_key(directory: Path) -> str:
    """The lock file's path, resolved: one key per collection however its directory is spelled."""
    return os.path.realpath(directory / LOCK_FILE)


def _thread_lock(path: str) -> threading.Lock:
    with _registry_lock:
        return _process_locks.setdefault(path, threading.Lock())


def _forget_in_child() -> None:
    # The child has none of its parent's threads: none of them holds a lock here. (The
    # parent's flock is on its own open file description, which the child's writers meet.)
    global _registry_lock
    _process_locks.clear()
    _owners.clear()
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


@contextmanager
def writer_lock(directory: Path, *, wait: bool | float = False, name: str = "") -> Iterator[None]:
    """Hold the collection's writer lock.

    ``wait=False`` fails at once if another writer holds it; ``True`` waits as long
    as needed; a number waits at most that many seconds. Whatever ``wait``, a job of this
    process linking the collection's pending vectors is let finish first (it always does:
    see :mod:`brinicle_etl.store.indexing`), so the write after a deferred one never fails
    on the lock its predecessor's job holds.
    """
    path = lock_key(directory)
    tlock = _thread_lock(path)
    if wait is not False and _owners.get(path) == threading.get_ident():
        raise LockedError(
            f"collection {name!r} is held by this same thread (a session opened through another object, "
            "not finalized yet); finalize or close it first"
        )
    deadline = None if wait is True else time.monotonic() + (0.0 if wait is False else float(wait))
    indexing.wait_for(path, owner=_owners.get(path), deadline=None if isinstance(wait, bool) else deadline)
    if not tlock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
        raise _locked(name, None, wait)
    _owners[path] = threading.get_ident()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if deadline is not None and time.monotonic() >= deadline:
                        raise _locked(name, _holder(path), wait) from None
                    time.sleep(0.02)
            with suppress(OSError):  # the pid only helps messages; a full disk must not stop the write here
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        _owners.pop(path, None)
        tlock.release()


def _holder(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _locked(name: str, pid: str | None, wait: bool | float) -> LockedError:
    who = f"another writer (pid {pid})" if pid else "another writer"
    if wait is False or not wait:
        return LockedError(
            f"collection {name!r} is locked by {who}; retry when it finishes, or pass wait=True to wait for it"
        )
    return LockedError(f"collection {name!r} is still locked by {who} after waiting {float(wait):g} s; retry later")
