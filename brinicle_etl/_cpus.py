"""How many cores this process may use: one rule for every thread count the package picks."""

from __future__ import annotations

import os

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """The cores this process may run on.

    The CPU set (a container's cpuset, ``taskset``) where the platform has one, else the
    machine's count: a process pinned to 2 of 64 cores that started 64 threads would spend
    its time switching between them.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
