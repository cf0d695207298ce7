"""Admission for writes: writers queue per collection on the event loop, never in a thread.

A route hands :meth:`WriterGate.run` a library call made with ``wait=False``. Writers of one
collection take turns on an ``asyncio.Lock``, so a queued writer costs a coroutine, not one
of the thread pool's workers: however many clients queue behind a slow writer, the threads
that searches and the running writer need stay free. The writer whose turn it is runs its
call in the pool; if another process holds the collection's file lock (a CLI run, another
``--workers`` process) it polls, still without holding a thread.

The queue per collection is bounded (``max_waiting``) and so is the wait (``timeout``):
past either, the writer gets :class:`BusyError` (HTTP 503 with ``Retry-After``), never an
unbounded wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool

from brinicle_etl.errors import BusyError, LockedError

__all__ = ["WriterGate"]

T = TypeVar("T")

_POLL_SECONDS = 0.02


@dataclass
class _Turns:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


class WriterGate:
    """``max_waiting`` writers may queue per collection; each waits at most ``timeout`` seconds."""

    def __init__(self, *, max_waiting: int = 256, timeout: float = 60.0):
        self.max_waiting = max_waiting
        self.timeout = timeout
        self._turns: dict[str, _Turns] = {}

    async def run(self, name: str, call: Callable[[], T]) -> T:
        """Run ``call`` in the thread pool once it is this writer's turn on collection ``name``."""
        turns = self._turns.setdefault(name, _Turns())
        if turns.waiting >= self.max_waiting:
            raise BusyError(
                f"collection {name!r} has {turns.waiting} writers waiting already; retry in a second",
                retry_after=1,
            )
        deadline = time.monotonic() + self.timeout
        turns.waiting += 1
        try:
            async with asyncio.timeout(self.timeout):
                await turns.lock.acquire()
        except TimeoutError:
            raise self._waited_too_long(name) from None
        finally:
            turns.waiting -= 1
        try:
            while True:
                try:
                    return await run_in_threadpool(call)
                except LockedError:  # another process is writing; poll without a thread
                    if time.monotonic() >= deadline:
                        raise self._waited_too_long(name) from None
                    await asyncio.sleep(_POLL_SECONDS)
        finally:
            turns.lock.release()
            if not turns.lock.locked() and turns.waiting == 0:
                self._turns.pop(name, None)

    def _waited_too_long(self, name: str) -> BusyError:
        return BusyError(
            f"collection {name!r} stayed busy with another writer for {self.timeout:g} s; retry later",
            retry_after=max(1, round(self.timeout / 10)),
        )
