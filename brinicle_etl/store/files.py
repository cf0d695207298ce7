"""A collection's own files: names no two writers can share, and cleanup of leftovers.

(Durable writes in general are :mod:`brinicle_etl._fs`.)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MANAGED_PREFIXES", "new_name", "remove_unreferenced"]

# Every file a collection writes starts with one of these; anything else in the
# directory (a user's notes, the lock) is never touched by cleanup.
MANAGED_PREFIXES = (
    "main-",
    "delta-",
    "pending-",
    "rows-",
    "tomb-",
    "spill-",
    "manifest.json.tmp-",
    "session.log.tmp-",
)


def new_name(kind: str, generation: int, suffix: str) -> str:
    """A file name no earlier writer can have used, even one that crashed at the same generation."""
    return f"{kind}-{generation:08d}-{secrets.token_hex(4)}{suffix}"


def remove_unreferenced(directory: Path, keep: Iterable[str]) -> list[str]:
    """Delete managed files not in ``keep`` (leftovers of crashed or superseded writes)."""
    keep = set(keep)
    removed = []
    for entry in os.scandir(directory):
        if entry.name in keep or not entry.name.startswith(MANAGED_PREFIXES):
            continue
        try:
            os.unlink(entry.path)
            removed.append(entry.name)
        except FileNotFoundError:
            pass
    return removed
