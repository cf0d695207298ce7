"""Collections on object storage (``s3://bucket/prefix``): files uploaded once, generations
published by a conditional write, read through a local cache.

Layout under the store's prefix, per collection ``db/ns``::

    db/ns/<file>                    data files (segments, rows, tombstones), immutable, unique names
    db/ns/_gen/00000000000000000007.json   the manifest of generation 7, created once, never replaced
    db/ns/_latest.json              {"generation": 7}: where readers start looking

A writer uploads its new files, then creates ``_gen/<generation>.json`` with create-if-absent
(``If-None-Match: *``): of two writers that built the same generation on the same base, one
creates it and the other gets :class:`PublishConflictError`; nothing is mixed. Only then is the
pointer moved, so it may lag, never lead: a reader reads it and probes the generations after
it (one HEAD each), and so sees everything published, without listing the bucket.

Readers keep the current generation's files in a local cache directory (the collection's
``directory``); :class:`~brinicle_etl.store.collection.Collection` searches them memory-mapped
as on a local store, and pulls a new generation at most every ``refresh_seconds``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from brinicle_etl._fs import atomic_write_bytes, disk_full_is_an_error
from brinicle_etl.errors import (
    AlreadyExistsError,
    BusyError,
    ConfigError,
    ConflictError,
    MissingExtraError,
    NotFoundError,
    ObjectStoreError,
    PublishConflictError,
    StateError,
)
from brinicle_etl.store.manifest import MANIFEST, Manifest, manifest_bytes, parse_manifest, read_manifest

__all__ = [
    "DEFAULT_RETENTION_SECONDS",
    "Bucket",
    "BucketFile",
    "RemoteCollection",
    "VacuumResult",
    "is_remote",
    "open_bucket",
]

SCHEMES = ("s3://", "gs://", "az://")
LATEST = "_latest.json"
GENERATIONS = "_gen/"
SESSIONS = "_session/"
DEFAULT_REFRESH_SECONDS = 1.0
DEFAULT_RETENTION_SECONDS = 3600.0
MIN_RETENTION_SECONDS = 300.0
_UPDATE_ATTEMPTS = 50
DONE = "done"
"""A session's marker, created once its finalize published it (or its abort dropped it)."""


def is_remote(location: object) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


def _generation_key(generation: int) -> str:
    return f"{GENERATIONS}{generation:020d}.json"


class Bucket:
    """An object store location (``s3://bucket/prefix``) with the few operations the store
    uses, every failure translated here: obstore's errors never leave this class, and no
    message carries a credential (only the first line of the client's message is kept)."""

    def __init__(self, url: str, client: Any):
        self.url = url.rstrip("/")
        self._client = client
        import obstore

        self._obs = obstore

    def __repr__(self) -> str:
        return f"<Bucket {self.url!r}>"

    def _error(self, op: str, key: str, exc: BaseException) -> ObjectStoreError:
        return ObjectStoreError(f"{op} {self.url}/{key} failed: {_first_line(exc)}")

    @contextlib.contextmanager
    def _translated(self, op: str, key: str) -> Iterator[None]:
        """The one place the client's errors become ours; a missing object stays
        FileNotFoundError for the caller to decide what it means."""
        try:
            yield
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._error(op, key, exc) from None

    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None if there is none."""
        try:
            with self._translated("reading", key):
                return bytes(self._obs.get(self._client, key).bytes())
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        try:
            with self._translated("checking", key):
                self._obs.head(self._client, key)
            return True
        except FileNotFoundError:
            return False

    def put(self, key: str, data: bytes) -> None:
        with self._translated("writing", key):
            self._obs.put(self._client, key, data)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if ``key`` does not exist yet; False if it did."""
        from obstore.exceptions import AlreadyExistsError as Exists
        from obstore.exceptions import PreconditionError

        with self._translated("creating", key):
            try:
                self._obs.put(self._client, key, data, mode="create")
                return True
            except (Exists, PreconditionError):
                return False

    def update(self, key: str, change: Callable[[bytes | None], bytes]) -> None:
        """Replace the object with ``change(current)`` by a conditional put (``If-Match`` on
        what was read, create-if-absent if nothing was), again if another writer changed it
        in between."""
        from obstore.exceptions import AlreadyExistsError as Exists
        from obstore.exceptions import PreconditionError

        for _attempt in range(_UPDATE_ATTEMPTS):
            try:
                with self._translated("reading", key):
                    found = self._obs.get(self._client, key)
                    current: bytes | None = bytes(found.bytes())
                    etag = found.meta.get("e_tag")
                # A store that gives no ETag cannot condition on it: last writer wins there.
                mode: Any = {"e_tag": etag} if etag else "overwrite"
            except FileNotFoundError:
                current, mode = None, "create"
            data = change(current)
            with self._translated("writing", key):
                try:
                    self._obs.put(self._client, key, data, mode=mode)
                    return
                except (Exists, PreconditionError):
                    continue
        raise BusyError(f"{self.url}/{key} changed {_UPDATE_ATTEMPTS} times while updating it; try again")

    def upload(self, key: str, path: Path) -> None:
        with self._translated("uploading to", key):
            self._obs.put(self._client, key, path)

    def download(self, key: str, path: Path) -> None:
        """The object into ``path`` (written beside it and renamed, so never half there)."""
        # Not a managed name: a writer's cleanup in another process must not take it away.
        part = path.with_name(f".download-{secrets.token_hex(4)}-{path.name}")
        try:
            with disk_full_is_an_error(path.parent), open(part, "wb") as out:
                for chunk in self._obs.get(self._client, key).stream(min_chunk_size=8 * 2**20):
                    out.write(chunk)
            os.replace(part, path)
        except FileNotFoundError as exc:
            part.unlink(missing_ok=True)
            raise NotFoundError(f"{self.url}/{key} is missing") from exc
        except Exception as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.errno is not None:
                raise
            raise self._error("downloading", key, exc) from None

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        """Every object under ``prefix`` (path, size, last_modified): for housekeeping, never searches."""
        try:
            with self._translated("listing", prefix):
                return [dict(meta) for batch in self._obs.list(self._client, prefix) for meta in batch]
        except FileNotFoundError:
            return []

    def children(self, prefix: str) -> list[str]:
        """The "folder" names right under ``prefix``."""
        try:
            with self._translated("listing", prefix):
                found = self._obs.list_with_delimiter(self._client, prefix or None)
        except FileNotFoundError:
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"]]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            with self._translated("deleting", keys[start]):
                self._obs.delete(self._client, keys[start : start + 1000])


class BucketFile:
    """One of a store's small shared objects (model registry, templates): what
    :class:`~brinicle_etl._fs.LocalFile` is on a local store."""

    def __init__(self, bucket: Bucket, key: str):
        self._bucket = bucket
        self._key = key

    def __str__(self) -> str:
        return f"{self._bucket.url}/{self._key}"

    def read(self) -> bytes | None:
        return self._bucket.get(self._key)

    def write(self, data: bytes) -> None:
        self._bucket.put(self._key, data)

    def update(self, change: Callable[[bytes | None], bytes]) -> None:
        self._bucket.update(self._key, change)

    def create(self, data: bytes) -> bool:
        return self._bucket.create(self._key, data)

    def delete(self) -> None:
        self._bucket.delete([self._key])


def open_bucket(url: str, storage_options: Mapping[str, Any] | None = None) -> Bucket:
    """A :class:`Bucket` for ``s3://bucket/prefix`` (``gs://``, ``az://`` as obstore supports them).

    ``storage_options`` are obstore's (``endpoint``, ``access_key_id``, ``secret_access_key``,
    ``session_token``, ``region``...); what they leave out comes from the standard variables
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). Plain ``http://`` is allowed for a
    loopback endpoint (a local MinIO or test server)."""
    try:
        from obstore.store import from_url
    except ImportError as exc:
        raise MissingExtraError("object storage needs obstore: pip install 'brinicle-etl[s3]'") from exc
    parsed = urlparse(url)
    if not parsed.netloc:
        raise ConfigError(f"store {url!r} names no bucket; use s3://bucket/prefix")
    options = dict(storage_options or {})
    client_options: Any = dict(options.pop("client_options", {}) or {})
    endpoint = options.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or ""
    host = urlparse(endpoint).hostname or ""
    if endpoint.startswith("http://") and host in ("127.0.0.1", "localhost", "::1"):
        client_options.setdefault("allow_http", True)
    try:
        client = from_url(url, client_options=client_options or None, **options)
    except Exception as exc:
        raise ConfigError(f"cannot open store {url!r}: {_first_line(exc)}") from None
    return Bucket(url, client)


@dataclass(frozen=True, kw_only=True, slots=True)
class VacuumResult:
    """What a vacuum removed (object names, or file names on a local store) and kept."""

    removed: list[str]
    bytes_freed: int
    kept_generations: list[int]


class RemoteCollection:
    """One collection's objects (``db/ns/`` in the bucket) and its local cache directory."""

    def __init__(self, bucket: Bucket, name: str, directory: Path, *, refresh_seconds: float = DEFAULT_REFRESH_SECONDS):
        self.bucket = bucket
        self.prefix = f"{name}/"
        self.name = name
        self.directory = directory
        self.refresh_seconds = refresh_seconds
        self._pulled_at = -1e18
        self._lock = threading.Lock()

    def _key(self, relative: str) -> str:
        return self.prefix + relative

    # ---- reading ----

    def exists(self) -> bool:
        return self.bucket.exists(self._key(_generation_key(0)))

    def latest(self) -> int | None:
        """The newest published generation: the pointer, then a probe past it."""
        found = self._latest()
        return found[0] if found is not None else None

    def _latest(self) -> tuple[int, str | None] | None:
        """The newest generation, and the incarnation the pointer names (None if it names none)."""
        raw = self.bucket.get(self._key(LATEST))
        incarnation: str | None = None
        if raw is None:
            # No pointer (a writer died between creating generation 0 and writing it, or it
            # was removed by hand): the generations themselves say, at the cost of a listing.
            published = self._generations()
            if not published:
                return None
            generation = max(published)
        else:
            try:
                pointer = json.loads(raw)
                generation = int(pointer["generation"])
                incarnation = str(pointer["incarnation"]) if "incarnation" in pointer else None
            except (ValueError, KeyError, TypeError):
                published = self._generations()  # a damaged pointer: the generations themselves say
                if not published:
                    return None
                generation = max(published)
        while self.bucket.exists(self._key(_generation_key(generation + 1))):
            generation += 1
        return generation, incarnation

    def _generations(self) -> dict[int, dict[str, Any]]:
        """Every published generation's manifest object, by generation (a listing: housekeeping only)."""
        found = {}
        for meta in self.bucket.objects(self._key(GENERATIONS).rstrip("/")):
            stem = str(meta["path"]).rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                found[int(stem)] = meta
        return found

    def manifest(self, generation: int) -> Manifest:
        key = self._key(_generation_key(generation))
        raw = self.bucket.get(key)
        if raw is None:
            raise NotFoundError(f"collection {self.name!r}: generation {generation} is missing at {self.bucket.url}")
        return parse_manifest(raw, f"{self.bucket.url}/{key}")

    def due(self) -> bool:
        return time.monotonic() - self._pulled_at >= self.refresh_seconds

    def pull(self, *, force: bool = True) -> bool:
        """Bring the cache to the newest generation; returns whether it changed. Without
        ``force``, only if the refresh interval has passed, and only by one thread: the
        others go on searching what the cache holds while it asks (and downloads)."""
        if force:
            self._lock.acquire()
        elif not self.due() or not self._lock.acquire(blocking=False):
            return False
        try:
            if not force and not self.due():
                return False
            self._pulled_at = time.monotonic()
            found = self._latest()
            if found is None:
                raise NotFoundError(f"collection {self.name!r} not found at {self.bucket.url}")
            generation, incarnation = found
            self.directory.mkdir(parents=True, exist_ok=True)
            # Processes sharing the cache (server workers) pull one at a time.
            with open(self.directory / ".pull.lock", "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                return self._pull_locked(generation, incarnation)
        finally:
            self._lock.release()

    def _pull_locked(self, generation: int, incarnation: str | None) -> bool:
        local = self._local_manifest()
        if local is not None and incarnation is None and local.generation >= generation:
            incarnation = self.manifest(generation).incarnation  # no pointer to say: ask the manifest
        if local is not None and local.incarnation == incarnation and local.generation >= generation:
            # Newer already (another process pulled meanwhile), or the same: make sure its files
            # are all here, as a cleanup elsewhere may have raced a download.
            missing = [n for n in local.files() if not (self.directory / n).exists()]
            for name in missing:
                self.bucket.download(self._key(name), self.directory / name)
            return bool(missing)
        manifest = self.manifest(generation)
        for name in manifest.files():
            if not (self.directory / name).exists():
                self.bucket.download(self._key(name), self.directory / name)
        atomic_write_bytes(self.directory / MANIFEST, manifest_bytes(manifest))
        # The old generation's files leave the cache. Only those: a writer on this machine
        # may be writing files for a generation nobody has seen yet. A reader that still
        # has them open (memory-mapped) keeps reading them until it moves on.
        if local is not None:
            for name in set(local.files()) - set(manifest.files()):
                (self.directory / name).unlink(missing_ok=True)
        return True

    def _local_manifest(self) -> Manifest | None:
        try:
            return read_manifest(self.directory)
        except FileNotFoundError:
            return None

    # ---- writing ----

    def vacuum(self, retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> VacuumResult:
        """Delete the files no reader can still need: those of no generation superseded less
        than ``retention_seconds`` ago (a reader may still be downloading it), and not younger
        than the window themselves (a writer may be uploading them for a generation it has not
        published yet); and the staged parts of finished sessions.

        Manifests are never deleted: they are small, and a generation's name must stay taken,
        or a slow writer could create it again on top of newer generations."""
        if not retention_seconds >= MIN_RETENTION_SECONDS:
            raise ConfigError(
                f"vacuum: retention must be at least {MIN_RETENTION_SECONDS:.0f} seconds (a shorter window could "
                f"delete a slow writer's uploads before it publishes them); got {retention_seconds}"
            )
        now = time.time()
        published = self._generations()
        newest = self.latest()
        order = sorted(published)
        kept = []
        for position, generation in enumerate(order):
            successor = order[position + 1] if position + 1 < len(order) else None
            recent = successor is not None and now - _timestamp(published[successor]) < retention_seconds
            if generation in (newest, 0) or successor is None or recent:
                kept.append(generation)
        referenced: set[str] = set()
        for generation in kept:
            referenced.update(self.manifest(generation).files())
        objects = self.bucket.objects(self.prefix.rstrip("/"))
        finished = self._finished_sessions(objects)
        removable = []
        for meta in objects:
            relative = str(meta["path"]).removeprefix(self.prefix)
            if relative == LATEST or relative.startswith(GENERATIONS):
                continue
            if relative.startswith(SESSIONS):
                session, _, part = relative.removeprefix(SESSIONS).partition("/")
                if session in finished and part != DONE:
                    removable.append(meta)  # pending sessions' parts stay until finalize or abort
                continue
            if relative in referenced or now - _timestamp(meta) < retention_seconds:
                continue
            removable.append(meta)
        self.bucket.delete([str(m["path"]) for m in removable])
        return VacuumResult(
            removed=[str(m["path"]).removeprefix(self.prefix) for m in removable],
            bytes_freed=sum(int(m["size"]) for m in removable),
            kept_generations=kept,
        )

    # ---- an ingest session's staged log (see SessionMirror) ----

    def save_staged(self, path: Path, session_id: str, start: int, end: int) -> None:
        """Store bytes ``start:end`` of the local session log as one object, created once:
        a second machine appending at the same offset loses and is told to retry."""
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        key = self._key(f"{SESSIONS}{session_id}/{start:016d}")
        if not self.bucket.create(key, data):
            raise StateError(
                f"collection {self.name!r}: another writer appended to the pending ingest session, or a finalize "
                "closed it, at the same time; nothing of this call was staged: call it again, or finalize()"
            )

    def seal_staged(self, session_id: str, end: int) -> bool:
        """Close the session at ``end`` before applying it: an empty part there, created once,
        so no other machine can append after this point. False if one did first (restore and
        read again)."""
        key = self._key(f"{SESSIONS}{session_id}/{end:016d}")
        # An empty part already there is a seal too (a finalize that failed after sealing).
        return self.bucket.create(key, b"") or self.bucket.get(key) == b""

    def finish_staged(self, session_id: str) -> None:
        """Mark the session finished (published or aborted), then remove its parts; a machine
        restoring sessions skips a marked one even if the removal did not happen."""
        self.bucket.put(self._key(f"{SESSIONS}{session_id}/{DONE}"), b"")
        self.drop_staged(session_id)

    def _finished_sessions(self, objects: list[dict[str, Any]]) -> set[str]:
        marker = "/" + DONE
        base = self._key(SESSIONS)
        paths = (str(m["path"]) for m in objects)
        return {p.removeprefix(base).removesuffix(marker) for p in paths if p.startswith(base) and p.endswith(marker)}

    def restore_staged(self, path: Path, finalized: str | None) -> None:
        """Make the local session log what the object store holds (or remove it if none is pending)."""
        parts: dict[str, list[tuple[int, str]]] = {}
        listed = self.bucket.objects(self._key(SESSIONS).rstrip("/"))
        finished = self._finished_sessions(listed) | ({finalized} if finalized else set())
        for meta in listed:
            session, _, start = str(meta["path"]).removeprefix(self._key(SESSIONS)).partition("/")
            if start.isdigit():
                parts.setdefault(session, []).append((int(start), str(meta["path"])))
        stale = [key for session, found in parts.items() if session in finished for _o, key in found]
        if stale:  # a finalize published it and died before removing these
            self.bucket.delete(stale)
        pending = {s: sorted(found) for s, found in parts.items() if s not in finished and min(found)[0] == 0}
        if not pending:
            path.unlink(missing_ok=True)
            return
        session = max(pending, key=lambda s: len(pending[s]))
        # The tmp- prefix is a managed one: a crash here leaves nothing the next write keeps.
        tmp = path.with_name(f"{path.name}.tmp-restore")
        with open(tmp, "wb") as out:
            for offset, key in pending[session]:
                if offset != out.tell():
                    break  # only a gap-free prefix was ever acknowledged
                data = self.bucket.get(key)
                if data is None:
                    break
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def drop_staged(self, session_id: str) -> None:
        found = self.bucket.objects(self._key(f"{SESSIONS}{session_id}"))
        keys = [str(m["path"]) for m in found if not str(m["path"]).endswith("/" + DONE)]
        with contextlib.suppress(ObjectStoreError):  # leftovers go with the next vacuum
            self.bucket.delete(keys)

    def destroy(self) -> None:
        """Delete every object of the collection, its generations first (readers see it gone)."""
        # Files first, then the generations newest first, generation 0 last: a drop cut short
        # leaves a collection that still exists (and can be dropped again), never old
        # generations without their beginning that a new collection of the name would inherit.
        first = self.bucket.get(self._key(_generation_key(0)))
        incarnation = parse_manifest(first, self.bucket.url).incarnation if first is not None else None
        keys = [str(meta["path"]) for meta in self.bucket.objects(self.prefix.rstrip("/"))]
        manifests = sorted((k for k in keys if k.startswith(self.prefix + GENERATIONS)), reverse=True)
        self.bucket.delete([k for k in keys if not k.startswith(self.prefix + GENERATIONS)])
        self.bucket.delete(manifests[:-1])
        self.bucket.delete(manifests[-1:])
        # A writer that published while this ran left a generation the listing missed; it
        # would wait in the name for a collection created again to reach its number. Only
        # this collection's: one created again meanwhile keeps its own.
        for generation in sorted(self._generations(), reverse=True):
            key = self._key(_generation_key(generation))
            raw = self.bucket.get(key)
            if raw is not None and parse_manifest(raw, self.bucket.url).incarnation == incarnation:
                self.bucket.delete([key])

    def create(self, manifest: Manifest) -> None:
        """Publish generation 0 of a new collection; AlreadyExistsError if one exists."""
        manifest = dataclasses.replace(manifest, incarnation=uuid.uuid4().hex)
        if not self.bucket.create(self._key(_generation_key(manifest.generation)), manifest_bytes(manifest)):
            raise AlreadyExistsError(f"collection {self.name!r} already exists at {self.bucket.url}")
        self.bucket.put(self._key(LATEST), _pointer(manifest))

    def push(self, previous: Manifest, manifest: Manifest) -> None:
        """Upload the new generation's new files, then publish it if no other writer did first."""
        uploaded = set(previous.files())
        for name in manifest.files():
            if name not in uploaded:
                self.bucket.upload(self._key(name), self.directory / name)
        self._check_base(previous)
        key = self._key(_generation_key(manifest.generation))
        if not self.bucket.create(key, manifest_bytes(manifest)):
            raise PublishConflictError(
                f"collection {self.name!r}: another writer published generation {manifest.generation} first "
                f"(this write was built on generation {previous.generation}); nothing of this write was "
                "published: run it again to apply it on top",
                generation=manifest.generation,
            )
        # The pointer may lag (readers probe past it), so a failure here loses nothing.
        with contextlib.suppress(ObjectStoreError):
            self.bucket.put(self._key(LATEST), _pointer(manifest))

    def _check_base(self, previous: Manifest) -> None:
        """Refuse to publish on a generation that is no longer there, or is another
        collection's: the collection was dropped (and maybe created again) while this write
        ran, and its next generation's name may be free in the new one."""
        raw = self.bucket.get(self._key(_generation_key(previous.generation)))
        if raw is None or parse_manifest(raw, self.bucket.url).incarnation != previous.incarnation:
            again = "" if raw is None else " and created again"
            raise ConflictError(
                f"collection {self.name!r} was dropped{again} while this write ran; nothing of this write was "
                "published: run it again to apply it to the collection there is now"
            )


def _timestamp(meta: dict[str, Any]) -> float:
    modified = meta.get("last_modified")
    return modified.timestamp() if modified is not None else 0.0


def _pointer(manifest: Manifest) -> bytes:
    return json.dumps({"generation": manifest.generation, "incarnation": manifest.incarnation}).encode()


def _first_line(exc: BaseException) -> str:
    """What the client said, without the request dump and debug trace that follow it."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
