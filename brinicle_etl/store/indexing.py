"""Linking pending vectors into the graph after the write that left them has returned.

A deferred write (see :mod:`brinicle_etl.store.flat`) publishes its vectors as pending and
starts one background job per collection directory: it takes the writer lock, links them
into the delta segment, and publishes that as the next generation. Until then searches
compare queries with the pending vectors exactly, so nothing waits on the job but its index.

Within this process a writer of the same directory lets a job that holds the lock finish
before taking the lock itself (so a pipeline's next step never fails on a lock its own last
step left busy), and gives a job about to take it a moment to do so; past its own ``wait``
it fails as it would for any other writer. The job is an ordinary (non-daemon) thread, so
the interpreter and multiprocessing workers wait for it when they end; while they end it
waits at most :data:`_EXIT_START` seconds for the lock. A job that cannot run (a kill, the
lock held by another process at exit) leaves the vectors pending: still found, linked by the
next write that links vectors or by :meth:`Collection.index_pending`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field

from brinicle_etl.errors import LockedError

__all__ = ["start", "turn", "wait_for"]

log = logging.getLogger("brinicle_etl.store")

_EXIT_START = 5.0
"""While the process ends, how long a job that has not taken the lock yet keeps trying."""
_POLL = 0.5
"""How long one attempt at the lock waits before the job checks whether the process is ending."""
_GRACE = 1.0
"""How long a writer waits for a job about to take the lock (its writer has just let it go)."""


@dataclass(eq=False)
class _Job:
    thread: threading.Thread
    started: threading.Event = field(default_factory=threading.Event)
    """Set once the job holds the writer lock: from then on it ends by itself."""


_jobs: dict[str, _Job] = {}
_jobs_lock = threading.Lock()


def start(key: str, run: Callable[[Callable[[], None]], None]) -> None:
    """Run ``run(started)`` in a thread unless a job for ``key`` (the collection's resolved
    directory) is waiting for the lock: it will find the newest pending vectors. A job that
    has already read them does not count. ``run`` calls ``started()`` once it holds the lock."""
    with _jobs_lock:
        current = _jobs.get(key)
        if current is not None and current.thread.is_alive() and not current.started.is_set():
            return
        job = _Job(thread=threading.Thread(target=lambda: _run(key, job, run), name=f"brinicle-index {key}"))
        _jobs[key] = job
    job.thread.start()


def _run(key: str, job: _Job, run: Callable[[Callable[[], None]], None]) -> None:
    try:
        run(job.started.set)
    except BaseException:  # the vectors stay pending, found by exact search; the next write links them
        log.exception("indexing the pending vectors of %s failed; they stay searchable and pending", key)
    finally:
        with _jobs_lock:
            if _jobs.get(key) is job:
                del _jobs[key]


@contextmanager
def turn(take: Callable[[float], AbstractContextManager[None]]) -> Iterator[bool]:
    """The writer lock for a job (``take(seconds)`` tries for that long): waited for as long
    as the process runs, and at most :data:`_EXIT_START` seconds more once it is ending.
    Yields whether the job holds it."""
    ending_since: float | None = None
    while True:
        stack = ExitStack()
        try:
            stack.enter_context(take(_POLL))
        except LockedError:
            if threading.main_thread().is_alive():
                continue
            ending_since = ending_since or time.monotonic()
            if time.monotonic() - ending_since < _EXIT_START:
                continue
            yield False
            return
        with stack:
            yield True
        return


def wait_for(key: str, *, owner: int | None, deadline: float | None) -> None:
    """Before a writer of this process takes the lock of ``key``: let this process's job
    finish if it holds the lock (the job is this process's own bounded work; a writer given
    a number of seconds, ``deadline``, waits no longer than that), or give it :data:`_GRACE`
    seconds if it is about to take it. Not from the job itself, nor when ``owner`` (the
    thread of this process holding the lock) is another thread: the job waits for that one."""
    with _jobs_lock:
        job = _jobs.get(key)
    if job is None or job.thread is threading.current_thread():
        return
    if owner is not None and owner != job.thread.ident:
        return

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    budget = left()
    if not job.started.wait(_GRACE if budget is None else min(_GRACE, budget)):
        return  # another writer holds the lock: the caller meets it as usual
    job.thread.join(left())


def _forget_in_child() -> None:
    # A forked child has none of its parent's threads.
    global _jobs_lock
    _jobs.clear()
    _jobs_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
