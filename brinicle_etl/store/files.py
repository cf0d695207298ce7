"""File-level building blocks for crash safety: durable writes, atomic replace, unique names."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

__all__ = ["atomic_write_bytes", "fsync_dir", "fsync_file", "new_name", "remove_unreferenced"]

# Every file a collection writes starts with one of these; anything else in the
# directory (a user's notes, the lock) is never touched by cleanup.
MANAGED_PREFIXES = ("main-", "delta-", "rows-", "tomb-", "manifest.json.tmp-", "session.log.tmp-")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old or the new content, never a mix."""
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


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
