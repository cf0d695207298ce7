"""A store: a directory (or an object-storage prefix) of collections, each addressed as ``db/namespace``."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from brinicle_etl._fs import LocalFile, user_cache_dir
from brinicle_etl.errors import AlreadyExistsError, ConfigError, NotFoundError
from brinicle_etl.store.collection import Collection
from brinicle_etl.store.manifest import MANIFEST, CollectionConfig, ConfigSettings
from brinicle_etl.store.remote import (
    DEFAULT_REFRESH_SECONDS,
    Bucket,
    BucketFile,
    RemoteCollection,
    is_remote,
    open_bucket,
)
from brinicle_etl.store.sharding import SHARDING, ShardedPlace, check_shards, shard_dir
from brinicle_etl.store.shards import ShardedCollection
from brinicle_etl.types import DEFAULT_NAMESPACE, NAME_RULE, check_name, is_name, shown

if TYPE_CHECKING:
    from brinicle_etl.embed.models import ModelRegistry

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_STORE_DIR",
    "Store",
    "default_cache_dir",
    "default_store_location",
    "default_store_path",
    "parse_name",
]


DEFAULT_STORE_DIR = "brinicle_store"


def default_store_path() -> Path:
    """``$BRINICLE_STORE`` if set, else ``./brinicle_store``."""
    return Path(default_store_location())


def default_store_location() -> str:
    """``$BRINICLE_STORE`` (a directory or ``s3://bucket/prefix``) if set, else ``brinicle_store``."""
    return os.environ.get("BRINICLE_STORE") or DEFAULT_STORE_DIR


def default_refresh_seconds() -> float:
    """``$BRINICLE_REFRESH_SECONDS`` if set, else 1: how often a reader on object storage checks."""
    raw = os.environ.get("BRINICLE_REFRESH_SECONDS")
    if raw is None:
        return DEFAULT_REFRESH_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise ConfigError(f"BRINICLE_REFRESH_SECONDS must be a number of seconds from 0 to 3600; got {raw!r}")
    return seconds


def default_cache_dir(url: str, endpoint: str = "") -> Path:
    """Where a store on object storage keeps its local copies, by default: one folder per
    store URL and endpoint (two services may have buckets of the same name) under the
    user's cache directory (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    return user_cache_dir() / hashlib.sha256(f"{url}\n{endpoint}".encode()).hexdigest()[:16]


def parse_name(name: str) -> tuple[str, str]:
    """``"db/ns"`` -> ``("db", "ns")``; ``"db"`` -> ``("db", "default")``.

    Each part follows :data:`~brinicle_etl.types.NAME_RULE`, so a name can never point
    outside the store.
    """
    if not isinstance(name, str):
        raise ConfigError(f"collection name must be a string; got {type(name).__name__}")
    parts = name.split("/")
    if len(parts) == 1:
        parts.append(DEFAULT_NAMESPACE)
    if len(parts) != 2 or not all(is_name(p) for p in parts):
        raise ConfigError(f"invalid collection name {shown(name)}: use 'db' or 'db/namespace', each part {NAME_RULE}")
    return parts[0], parts[1]


SHARED = "_brinicle/"
"""The store's own files on object storage (``.brinicle/`` locally); not a collection name."""


_shared: dict[str, Store] = {}
_shared_lock = threading.Lock()


class Store:
    """Collections under one directory, or on object storage (``s3://bucket/prefix``).
    Opening the same name twice returns the same object.

    On object storage, ``storage_options`` are the client's settings (endpoint, credentials,
    region: see :func:`~brinicle_etl.store.remote.open_bucket`), ``cache_dir`` where the
    files being searched are kept locally (default under the user's cache directory), and
    ``refresh_seconds`` how often an open collection looks for a newer generation (default
    ``$BRINICLE_REFRESH_SECONDS``, else 1)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        refresh_seconds: float | None = None,
    ):
        location = os.fspath(root) if root is not None else default_store_location()
        self.url: str | None = None
        self._bucket: Bucket | None = None
        self._refresh_seconds = refresh_seconds if refresh_seconds is not None else default_refresh_seconds()
        if is_remote(location):
            self.url = location.rstrip("/")
            self._bucket = open_bucket(self.url, storage_options)
            endpoint = str((storage_options or {}).get("endpoint") or os.environ.get("AWS_ENDPOINT_URL") or "")
            self.root = Path(cache_dir) if cache_dir is not None else default_cache_dir(self.url, endpoint)
        else:
            self.root = Path(location)
        self._open: dict[str, Collection | ShardedCollection] = {}
        self._lock = threading.Lock()
        self._models: ModelRegistry | None = None

    @classmethod
    def shared(cls, root: str | os.PathLike[str] | None = None) -> Store:
        """The process's one :class:`Store` for ``root`` (default ``$BRINICLE_STORE``, else
        ``./brinicle_store``): what ``search("db/ns", ..., store="dir")`` uses, so a search by
        name costs what one on an opened collection does (each open collection still notices
        new generations, by a stat per call)."""
        location = os.fspath(root) if root is not None else default_store_location()
        key = location.rstrip("/") if is_remote(location) else os.path.abspath(location)
        with _shared_lock:
            store = _shared.get(key)
            if store is None:
                store = _shared[key] = cls(location)
            return store

    def __repr__(self) -> str:
        return f"<Store {self.url or str(self.root)!r}>"

    @property
    def location(self) -> str:
        """The store as given: its directory, or its ``s3://`` URL."""
        return self.url or str(self.root)

    def _remote(self, name: str) -> RemoteCollection | None:
        if self._bucket is None:
            return None
        key = self.canonical(name)
        if key.startswith(SHARED):
            raise ConfigError(f"invalid collection name {key!r}: {SHARED.rstrip('/')!r} holds the store's own files")
        return RemoteCollection(self._bucket, key, self.path_for(name), refresh_seconds=self._refresh_seconds)

    @staticmethod
    def canonical(name: str) -> str:
        db, ns = parse_name(name)
        return f"{db}/{ns}"

    def path_for(self, name: str) -> Path:
        db, ns = parse_name(name)
        return self.root / db / ns

    def exists(self, name: str) -> bool:
        remote = self._remote(name)
        if remote is not None:
            return remote.exists() or self._shard_count(name) is not None
        path = self.path_for(name)
        return (path / MANIFEST).exists() or (path / SHARDING).exists()

    def _shard_count(self, name: str) -> int | None:
        """How many shards collection ``name`` has, from its ``sharding.json``; None if it has none."""
        return self._sharded(name).count()

    def _sharded(self, name: str) -> ShardedPlace:
        key, path = self.canonical(name), self.path_for(name)
        bucket = self._bucket
        if bucket is None:
            return ShardedPlace(path, key, LocalFile(path / SHARDING))

        def remote_for(shard: int) -> RemoteCollection:
            part = f"{key}/{shard_dir(shard)}"
            return RemoteCollection(bucket, part, path / shard_dir(shard), refresh_seconds=self._refresh_seconds)

        return ShardedPlace(path, key, BucketFile(bucket, f"{key}/{SHARDING}"), remote_for)

    def names(self) -> list[str]:
        """Every collection in the store, as sorted ``db/namespace`` names."""
        if self._bucket is not None:
            bucket = self._bucket
            dbs = [db for db in bucket.children("") if is_name(db) and f"{db}/" != SHARED]
            pairs = [(db, ns) for db in dbs for ns in bucket.children(db)]
            return sorted(f"{db}/{ns}" for db, ns in pairs if is_name(ns) and self.exists(f"{db}/{ns}"))
        if not self.root.is_dir():
            return []
        found = []
        for db in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not db.is_dir() or not is_name(db.name):
                continue
            for ns in sorted(os.scandir(db.path), key=lambda e: e.name):
                if (
                    ns.is_dir()
                    and is_name(ns.name)
                    and any(os.path.exists(os.path.join(ns.path, marker)) for marker in (MANIFEST, SHARDING))
                ):
                    found.append(f"{db.name}/{ns.name}")
        return found

    def open(self, name: str) -> Collection | ShardedCollection:
        """Collection ``name``: a :class:`Collection`, or a :class:`ShardedCollection` if it was
        created with shards (both search, read and write alike)."""
        # Looked up by the name as given first: SQL and HTTP open a collection per query.
        collection = self._open.get(name) if type(name) is str else None
        if collection is None:
            key = self.canonical(name)
            with self._lock:
                collection = self._open.get(key)
        # One stat, so a collection deleted by another process is not served from memory
        # (on object storage the collection notices at its next refresh).
        if collection is not None and (self._bucket is not None or os.path.exists(collection.marker)):
            return collection
        key = self.canonical(name)
        opened: Collection | ShardedCollection
        if self._bucket is None and (self.path_for(name) / SHARDING).exists():
            opened = ShardedCollection.open(self._sharded(name))
        else:
            try:
                opened = Collection(self.path_for(name), name=key, remote=self._remote(name))
            except NotFoundError:
                if self._bucket is None or self._shard_count(name) is None:
                    raise
                opened = ShardedCollection.open(self._sharded(name))
        with self._lock:
            return self._open.setdefault(key, opened)

    def create(
        self,
        name: str,
        config: CollectionConfig | None = None,
        *,
        meta: dict[str, Any] | None = None,
        exist_ok: bool = False,
        shards: int | None = None,
        **settings: Unpack[ConfigSettings],
    ) -> Collection | ShardedCollection:
        """Create collection ``name`` with ``config`` or its settings as keywords
        (``store.create("vectors/demo", dim=384, metric="cosine", dtype="bf16")``).

        ``shards=N`` (N > 1) splits it by key into N shards written apart and searched as one
        (see :mod:`brinicle_etl.store.shards`); left out or 1, it is one collection."""
        key = self.canonical(name)
        config = CollectionConfig.of(config, settings)
        count = check_shards(shards) if shards is not None else 1
        found = self._shard_count(name) if self.exists(name) else None
        if self.exists(name) and (found or 1) != count:
            raise AlreadyExistsError(f"collection {key!r} already exists with {found or 1} shard(s), not {count}")
        created: Collection | ShardedCollection
        if count == 1:
            created = Collection.create(
                self.path_for(name), config, meta=meta, name=key, exist_ok=exist_ok, remote=self._remote(name)
            )
        else:
            created = ShardedCollection.create(self._sharded(name), config, shards=count, meta=meta, exist_ok=exist_ok)
        with self._lock:
            return self._open.setdefault(key, created)

    @property
    def models(self) -> ModelRegistry:
        """The embedding models this store knows: the built-in ones and ``.brinicle/models.json``.

        One registry per store object, so a loaded model is reused by every ingest and search."""
        if self._models is None:
            # embed loads polars for its vector parsing: only a store that embeds pays for it
            from brinicle_etl.embed.models import ModelRegistry

            self._models = ModelRegistry(self.shared_file("models.json"))
        return self._models

    def shared_file(self, relative: str) -> LocalFile | BucketFile:
        """One of the store's own small files (the model registry, a template), seen alike by
        every machine: in ``.brinicle/`` of a local store, under ``_brinicle/`` in the bucket."""
        if self._bucket is not None:
            return BucketFile(self._bucket, SHARED + relative)
        return LocalFile(self.config_dir / relative)

    # ---- schema templates, saved by name -----------------------------------------

    @property
    def config_dir(self) -> Path:
        """Where the store keeps its own files (templates, the model registry)."""
        return self.root / ".brinicle"

    def template(self, name: str) -> dict[str, Any] | None:
        """A saved template schema (as JSON data), or None."""
        file = self._template_file(name)
        raw = file.read()
        if raw is None:
            return None
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"template {name!r} at {file} is not valid JSON: {exc}") from exc
        return data

    def save_template(self, name: str, data: dict[str, Any]) -> None:
        self._template_file(name).write(json.dumps(data, indent=2).encode())

    def templates(self) -> list[str]:
        if self._bucket is not None:
            objects = self._bucket.objects(f"{SHARED}templates")
            return sorted(m["path"].rsplit("/", 1)[-1].removesuffix(".json") for m in objects)
        folder = self.config_dir / "templates"
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def _template_file(self, name: str) -> LocalFile | BucketFile:
        return self.shared_file(f"templates/{check_name(name, 'template name')}.json")

    def forget(self, name: str) -> None:
        """Close a collection in this process; its files stay (brinicle's ``destroy=false``)."""
        with self._lock:
            self._open.pop(self.canonical(name), None)

    def drop(self, name: str, *, wait: bool | float = False) -> None:
        """Delete a collection and its files."""
        key = self.canonical(name)
        if not self.exists(name):
            raise NotFoundError(f"collection {key!r} not found in {self.location}")
        if self._shard_count(name) is None:
            Collection(self.path_for(name), name=key, remote=self._remote(name)).destroy(wait=wait)
        else:
            place = self._sharded(name)
            try:
                opened = ShardedCollection.open(place)
                len(opened)  # every shard is there: a busy one leaves the whole collection as it was
            except NotFoundError:
                place.drop(wait=wait)  # a drop cut short: finish it
            else:
                opened.destroy(wait=wait)
        self.forget(name)
