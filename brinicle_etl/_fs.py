"""Durable file writes for everything the package keeps on disk: fsync, atomic replace,
writes that cannot be short, and a full disk turned into :class:`DiskFullError`."""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from brinicle_etl.errors import DiskFullError

__all__ = [
    "LocalFile",
    "atomic_write_bytes",
    "disk_full_is_an_error",
    "exclusive",
    "free_bytes",
    "fsync_dir",
    "fsync_file",
    "is_no_space",
    "no_space_error",
    "pwrite_all",
    "user_cache_dir",
]

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system is full (or the quota used up).

    pyarrow raises OSError without an errno and says so in its text only."""
    if not isinstance(exc, OSError) or isinstance(exc, DiskFullError):
        return False
    return exc.errno in _NO_SPACE or "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def no_space_error(path: Path) -> DiskFullError:
    return DiskFullError(
        f"no space left on the disk holding {path}: nothing was written there; free some space and retry",
        path=str(path),
    )


@contextmanager
def disk_full_is_an_error(path: Path, cleanup: Callable[[], object] | None = None) -> Iterator[None]:
    """Turn "no space left" inside the block into :class:`DiskFullError` naming ``path``,
    after ``cleanup()`` removed what the block had half-written."""
    try:
        yield
    except OSError as exc:
        if not is_no_space(exc):
            raise
        if cleanup is not None:
            with suppress(OSError):
                cleanup()
        error = no_space_error(path)
        for note in getattr(exc, "__notes__", ()):  # what the write was doing, said on the way
            error.add_note(note)
        raise error from exc


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a write may be short)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def user_cache_dir() -> Path:
    """The package's folder in the user's cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``):
    object-store caches, exported embedding models."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brinicle-etl"


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (created if needed) across processes."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: readers see the old or the new content, never a mix.

    A failed write (a full disk) leaves ``path`` as it was and no temporary file behind."""
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    with disk_full_is_an_error(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


class LocalFile:
    """A small file that several processes may read-modify-write (a store's model registry,
    its templates): replaced atomically, and changed under a lock beside it."""

    def __init__(self, path: Path):
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, data)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def create(self, data: bytes) -> bool:
        """Write ``data`` only if the file does not exist yet; False if it did."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp-{secrets.token_hex(4)}")
        atomic_write_bytes(tmp, data)
        try:
            os.link(tmp, self.path)  # fails if it exists: an exclusive create of a whole file
            fsync_dir(self.path.parent)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def update(self, change: Callable[[bytes | None], bytes]) -> None:
        """Replace the content with ``change(current)``; two processes updating at once
        each see the other's change."""
        with exclusive(self.path.with_name(self.path.name + ".lock")):
            self.write(change(self.read()))
