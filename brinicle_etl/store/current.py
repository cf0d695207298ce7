"""The generation a reader searches: opened once, reopened when a writer publishes another.

Reads never lock. Each read asks :meth:`Current.get`, which stats the manifest at most every
:data:`REFRESH_SECONDS` (a stat per query is a measurable share of a fast search) and opens
the new generation when the manifest was replaced, so a reader in another process sees new
data without reopening. A write published by this process is seen at once by every object
on the same directory. On object storage the local directory is a cache, pulled first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from brinicle_etl.errors import BusyError, NotFoundError, ObjectStoreError
from brinicle_etl.store.manifest import MANIFEST, read_manifest
from brinicle_etl.store.remote import RemoteCollection
from brinicle_etl.store.snapshot import RowCache, Snapshot

__all__ = ["REFRESH_SECONDS", "Current"]

log = logging.getLogger("brinicle_etl.store.collection")

REFRESH_SECONDS = 0.02

# Writes published by this process, per manifest: other objects on the same directory see
# them at once instead of after REFRESH_SECONDS.
_published: dict[str, int] = {}


class Current:
    """The newest generation of one collection directory, as opened for reading."""

    def __init__(self, directory: Path, *, name: str, remote: RemoteCollection | None):
        self.directory, self.name = directory, name
        self.manifest_path = str(directory / MANIFEST)
        self.rows = RowCache()
        self._remote = remote
        self._checked = 0.0
        self._seen_published = 0
        self._snap: Snapshot | None = None
        self._snap_lock = threading.Lock()

    def published(self) -> None:
        """Say that this process has just replaced the manifest."""
        _published[self.manifest_path] = _published.get(self.manifest_path, 0) + 1

    def get(self, *, fresh: bool = False) -> Snapshot:
        """The current generation, reopened if a writer published a new one; ``fresh`` checks
        now, as every writer does under the lock."""
        remote = self._remote
        if remote is not None and (fresh or remote.due()) and self._pulled(remote, fresh=fresh):
            fresh = True
        snap = self._snap
        published = _published.get(self.manifest_path, 0)
        if (
            not fresh
            and snap is not None
            and published == self._seen_published
            and time.monotonic() - self._checked < REFRESH_SECONDS
        ):
            return snap
        for _attempt in range(20):
            checked = time.monotonic()
            try:
                st = os.stat(self.manifest_path)
            except FileNotFoundError:
                raise NotFoundError(f"collection {self.name!r} no longer exists at {self.directory}") from None
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            snap = self._snap
            if snap is None or snap.stamp != stamp:
                with self._snap_lock:
                    if self._snap is None or self._snap.stamp != stamp:
                        try:
                            self._snap = Snapshot(self.directory, read_manifest(self.directory), self.rows, stamp)
                        except FileNotFoundError:
                            # A writer replaced the manifest and removed the files we were
                            # about to open; read the new manifest.
                            continue
                    snap = self._snap
            # Only now: a thread that marked the check done before installing what it found
            # let another thread take the older snapshot for current meanwhile.
            self._checked, self._seen_published = checked, published
            return snap
        raise BusyError(f"collection {self.name!r} changed too often while opening it; try again")

    def _pulled(self, remote: RemoteCollection, *, fresh: bool) -> bool:
        """Whether a pull brought a new generation. A reader's periodic check that fails (the
        object store briefly unreachable) keeps serving the generation it has, and says so in
        the log; a writer's (``fresh``) or a first open's failure is the caller's error."""
        try:
            return remote.pull(force=fresh)
        except ObjectStoreError as exc:
            if fresh or self._snap is None:
                raise
            generation = self._snap.manifest.generation
            log.warning("collection %r: still serving generation %d: %s", self.name, generation, exc)
            return False
