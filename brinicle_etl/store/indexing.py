"""Linking pending vectors into the graph after the write that left them has returned.

A deferred write (see :mod:`brinicle_etl.store.flat`) publishes its vectors as pending and
starts one background job per collection directory: it takes the writer lock, links them
into the delta segment, and publishes that as the next generation. Until then searches
compare queries with the pending vectors exactly, so nothing waits on the job but its
index. Within this process every other writer of the directory waits for the job before
taking the lock (so a pipeline's next step never fails on a lock its own last step left
busy), and the interpreter waits for it at exit, as it waits for a non-daemon thread. A
job that cannot run (a crash, a kill, another writer holding the lock at exit) leaves the
vectors pending: still found, and linked by the next write or :meth:`Collection.index_pending`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["start", "wait_for"]

log = logging.getLogger("brinicle_etl.store")

_EXIT_START = 10.0
"""At exit, how long a job that has not taken the lock yet is given to take it (the writer
that started it has just let the lock go; another process may hold it much longer)."""


@dataclass(eq=False)
class _Job:
    thread: threading.Thread
    started: threading.Event = field(default_factory=threading.Event)
    """Set once the job holds the writer lock: from then on it ends by itself."""


_jobs: dict[str, _Job] = {}
_jobs_lock = threading.Lock()


def start(directory: Path, run: Callable[[Callable[[], None]], None]) -> None:
    """Run ``run(started)`` in the background unless a job for ``directory`` is already
    there (it will find the newest pending vectors). ``run`` calls ``started()`` once it
    holds the writer lock."""
    key = str(directory)
    with _jobs_lock:
        current = _jobs.get(key)
        if current is not None and current.thread.is_alive():
            return
        job = _Job(thread=threading.Thread(target=lambda: _run(key, job, run), name=f"brinicle-index {key}"))
        job.thread.daemon = True
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


def wait_for(directory: Path, *, owner: int | None) -> None:
    """Wait for this process's job on ``directory``, if one runs, unless called from the job
    itself, or ``owner`` (the thread of this process holding the lock, if any) is not the
    job: the job then waits for that thread, which may be the caller's own session."""
    with _jobs_lock:
        job = _jobs.get(str(directory))
    if job is None or job.thread is threading.current_thread():
        return
    if owner is not None and owner != job.thread.ident:
        return
    job.thread.join()


def _wait_all_at_exit() -> None:
    with _jobs_lock:
        jobs = list(_jobs.values())
    for job in jobs:
        if job.started.wait(_EXIT_START):
            job.thread.join()


def _forget_in_child() -> None:
    # A forked child has none of its parent's threads.
    global _jobs_lock
    _jobs.clear()
    _jobs_lock = threading.Lock()


atexit.register(_wait_all_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
