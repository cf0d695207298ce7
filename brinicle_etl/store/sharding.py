"""The rules of sharding, and writing several shards as one.

A key's shard is ``blake2b(key as UTF-8, 8-byte digest)`` read as a little-endian unsigned
64-bit integer, modulo the number of shards: the same in every process, machine and Python
version (:func:`shard_of`). Shard ``i`` lives in ``db/ns/shard-000i/`` and numbers its rows
from ``i << 48`` (:func:`shard_row_base`), so a row id names its shard. ``sharding.json``
beside the shards says how many there are.

A write that spans shards (a routed write, an ingest of every shard, a session's finalize)
goes in two steps (:func:`prepare_then_publish`): every shard prepares its generation
(checks, vectors embedded, index and row files written) and only when all have does each
publish. An error while preparing (a conflict, bad data, a busy shard, a full disk) leaves
every shard as it was. Publication itself is per shard: a failure there (the disk, the
object store, another machine publishing first) leaves the shards published so far
published, and the error says which; running the same write again completes it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from concurrent.futures import wait as wait_all
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from brinicle_etl.errors import (
    BrinicleError,
    ConfigError,
    ConflictError,
    CorruptCollectionError,
    InputError,
    LockedError,
    NotFoundError,
    PublishConflictError,
    StateError,
)
from brinicle_etl.store.collection import Collection
from brinicle_etl.store.manifest import MANIFEST, CollectionConfig
from brinicle_etl.store.remote import RemoteCollection
from brinicle_etl.store.sessions import RowSpool
from brinicle_etl.types import BuildProgress, Wait

__all__ = [
    "MAX_SHARDS",
    "ROW_ID_BITS",
    "SHARDING",
    "Done",
    "MarkerFile",
    "Prepared",
    "ShardedBinaryIngest",
    "ShardedPlace",
    "SummedProgress",
    "check_shards",
    "prepare_then_publish",
    "shard_dir",
    "shard_of",
    "shard_row_base",
]

SHARDING = "sharding.json"
MAX_SHARDS = 1024
ROW_ID_BITS = 48
"""Row ids of shard ``i`` start at ``i << 48``: 2.8e14 rows per shard before they would meet."""

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
Together = Callable[[Mapping[int, Callable[["Collection"], "Prepared[int]"]], Wait], object]
"""Several shards' steps prepared, then published (a sharded collection's ``together``)."""


def check_shards(shards: object, *, name: str = "shards") -> int:
    if type(shards) is not int or not 1 <= shards <= MAX_SHARDS:
        raise ConfigError(f"{name} must be a whole number from 1 to {MAX_SHARDS}; got {shards!r}")
    return shards


def shard_of(keys: Iterable[str], shards: int) -> np.ndarray:
    """Each key's shard: ``int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "little") % shards``."""
    digests = b"".join(hashlib.blake2b(k.encode(), digest_size=8).digest() for k in keys)
    return (np.frombuffer(digests, dtype="<u8") % np.uint64(shards)).astype(np.int64)


def shard_row_base(shard: int) -> int:
    """The first row id of ``shard``."""
    return shard << ROW_ID_BITS


def shard_dir(shard: int) -> str:
    return f"shard-{shard:04d}"


def sharding_bytes(shards: int) -> bytes:
    return json.dumps({"shards": shards, "shard_of": "blake2b-64-le mod shards", "row_id_bits": ROW_ID_BITS}).encode()


def parse_sharding(raw: bytes, where: str) -> int:
    try:
        return check_shards(json.loads(raw)["shards"])
    except (ValueError, KeyError, TypeError, ConfigError) as exc:
        raise CorruptCollectionError(f"{where} is not a valid {SHARDING}: {exc}") from exc


class MarkerFile(Protocol):
    """Where ``sharding.json`` is kept: a local file, or an object beside the shards' prefixes."""

    def read(self) -> bytes | None: ...
    def create(self, data: bytes) -> bool: ...
    def delete(self) -> None: ...


@dataclass(frozen=True)
class ShardedPlace:
    """Where a sharded collection lives: its directory (on object storage, the local cache of
    its shards), its name, its ``sharding.json``, and each shard's object-storage side."""

    directory: Path
    name: str
    marker: MarkerFile
    remote_for: Callable[[int], RemoteCollection | None] = lambda _shard: None

    def shard_path(self, shard: int) -> Path:
        return self.directory / shard_dir(shard)

    def shard_name(self, shard: int) -> str:
        return f"{self.name}/{shard_dir(shard)}"

    def count(self) -> int | None:
        """How many shards ``sharding.json`` names; None if there is none."""
        raw = self.marker.read()
        return None if raw is None else parse_sharding(raw, str(self.marker))

    def open_shard(self, shard: int) -> Collection:
        try:
            return Collection(self.shard_path(shard), name=self.shard_name(shard), remote=self.remote_for(shard))
        except NotFoundError as exc:
            raise NotFoundError(
                f"collection {self.name!r} has lost shard {shard} ({shard_dir(shard)}): a drop of it was cut "
                "short, or its files were removed; drop the collection again to finish"
            ) from exc

    def create(self, config: CollectionConfig, *, shards: int, meta: dict[str, Any] | None = None) -> bool:
        """The shards first, then ``sharding.json``: it exists only once every shard does. Of
        two processes creating it at once, one creates it; whether this one did."""
        check_shards(shards)
        for i in range(shards):
            Collection.create(
                self.shard_path(i),
                config,
                meta=meta,
                name=self.shard_name(i),
                exist_ok=True,
                remote=self.remote_for(i),
                first_row_id=shard_row_base(i),
            )
        return self.marker.create(sharding_bytes(shards))

    def drop(self, *, wait: Wait = False) -> None:
        """The shards, then ``sharding.json``: a drop cut short leaves a collection that still
        exists and can be dropped again (``ShardedCollection.destroy`` is the drop of a whole
        collection, every shard's lock taken first; this one also finishes a drop cut short)."""
        for i in range(self.count() or 0):
            remote = self.remote_for(i)
            if remote is None and not (self.shard_path(i) / MANIFEST).exists():
                continue  # dropped by a drop that was cut short
            with suppress(NotFoundError):
                Collection(self.shard_path(i), name=self.shard_name(i), remote=remote).destroy(wait=wait)
        self.remove()

    def remove(self) -> None:
        """``sharding.json`` and the directory, once the shards are gone."""
        self.marker.delete()
        shutil.rmtree(self.directory, ignore_errors=True)


class SummedProgress:
    """Build progress of several shards reported as one ``progress(done, total)``."""

    def __init__(self, progress: BuildProgress):
        self._progress = progress
        self._each: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def for_shard(self, shard: int) -> BuildProgress:
        def report(done: int, total: int) -> None:
            with self._lock:
                self._each[shard] = (done, total)
                self._progress(sum(d for d, _t in self._each.values()), sum(t for _d, t in self._each.values()))

        return report


class Prepared(Protocol[R_co]):
    """One shard's write, prepared: :meth:`publish` makes it visible, :meth:`abort` drops it.
    ``refused`` tells :meth:`abort` that the write as a whole can never apply (an ingest
    session then ends on every shard, as it would on one collection)."""

    def publish(self) -> R_co: ...
    def abort(self, *, refused: bool) -> None: ...


class Done(Generic[R]):
    """A shard with nothing to publish: its result is known when it is prepared."""

    def __init__(self, result: R):
        self.result = result

    def publish(self) -> R:
        return self.result

    def abort(self, *, refused: bool) -> None:
        pass


def prepare_then_publish(
    name: str, steps: Sequence[tuple[int, Callable[[], Prepared[R]]]], pool: Executor, *, again: str
) -> list[R]:
    """Run each shard's step (``(shard, prepare)``) in ``pool``; once every one is prepared,
    publish them all; if any failed, abort them all and raise (see the module's notes).
    ``again`` says how to complete the write if publication fails part way. Results come in
    the order of ``steps``."""
    futures = [pool.submit(prepare) for _shard, prepare in steps]
    try:
        wait_all(futures)
    except BaseException:  # an interrupt: no shard publishes, and none keeps its lock
        for future in futures:
            future.cancel()
        wait_all(futures)
        _abort_all([f.result() for f in futures if not f.cancelled() and f.exception() is None], refused=False)
        raise
    failed = {shard: f.exception() for (shard, _p), f in zip(steps, futures, strict=True) if f.exception()}
    prepared = [(shard, f.result()) for (shard, _p), f in zip(steps, futures, strict=True) if not f.exception()]
    if failed:
        _abort_all([done for _shard, done in prepared], refused=any(map(_refuses, failed.values())))
        raise shards_failed(name, failed, published=[], again=again)
    published = list(pool.map(lambda item: _publish(item[1]), prepared))
    failed = {shard: r for (shard, _d), r in zip(prepared, published, strict=True) if isinstance(r, BaseException)}
    if failed:
        ok = [shard for (shard, _d), r in zip(prepared, published, strict=True) if not isinstance(r, BaseException)]
        raise shards_failed(name, failed, published=ok, again=again)
    return published  # type: ignore[return-value]


def _abort_all(prepared: Iterable[Prepared[Any]], *, refused: bool) -> None:
    for done in prepared:
        with suppress(Exception):
            done.abort(refused=refused)


def _publish(prepared: Prepared[R]) -> R | BaseException:
    try:
        return prepared.publish()
    except Exception as exc:  # every shard publishes; the errors are reported together
        return exc


def _refuses(error: BaseException | None) -> bool:
    """Whether ``error`` says the write can never apply, as against a shard that was busy or failed."""
    return isinstance(error, ConflictError | InputError) and not isinstance(error, PublishConflictError)


def shards_failed(
    name: str, errors: Mapping[int, BaseException | None], *, published: Sequence[int], again: str
) -> BaseException:
    """One error for the shards that failed, of the first one's kind (so callers and the HTTP
    status see what went wrong), naming every failed shard (shards that failed alike
    together) and what became of the others."""
    failed = {shard: e for shard, e in sorted(errors.items()) if e is not None}
    first = next(iter(failed.values()))
    alike: dict[str, list[int]] = {}
    for shard, error in failed.items():
        alike.setdefault(str(error), []).append(shard)
    parts = "; ".join(
        f"{'shard' if len(shards) == 1 else 'shards'} {', '.join(map(str, shards))}: {message}"
        for message, shards in alike.items()
    )
    if published:
        tail = f"shard(s) {list(published)} were published and the others were not; {again}"
    else:
        tail = "no shard was written"
    if not isinstance(first, BrinicleError):
        # Not ours to reword (a bug, an OS error, an interrupt): it travels as it is, with a note.
        first.add_note(f"in {name!r}: {parts} ({tail})")
        return first
    # A copy of the first error with the whole story: its class and fields, a new message
    # (built without the constructor, whose keyword-only fields differ from class to class).
    combined = type(first).__new__(type(first))
    combined.__dict__.update(first.__dict__)
    combined.args = (f"in {name!r}: {parts} ({tail})",)
    if isinstance(combined, ConflictError):
        combined.keys = [k for e in failed.values() if isinstance(e, ConflictError) for k in e.keys]
    combined.__cause__ = first
    return combined


class ShardedBinaryIngest:
    """One streamed binary batch into a sharded collection's sessions: rows are checked as
    they arrive (numbered as sent) and spooled beside their shard (:class:`RowSpool`);
    :meth:`finish` stages every shard's rows as one (see
    :meth:`~brinicle_etl.store.shards.ShardedCollection.ingest_batch`)."""

    def __init__(self, shards: Sequence[Collection], together: Together, *, name: str, id_width: int):
        self._shards, self._together = shards, together
        for shard in shards:  # as for one collection: no session, no body read
            if shard.status().session_mode is None:
                raise StateError(f"ingest_batch: no ingest session is pending for {name!r}; call init first")
        self._id_width, self._dim = id_width, shards[0].dim
        self._reader = RowSpool(shards[0].directory, id_width=id_width, dim=self._dim)
        self._parts: dict[int, RowSpool] = {}

    def __enter__(self) -> ShardedBinaryIngest:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.abort()

    @property
    def count(self) -> int:
        return self._reader.seen

    def feed(self, data: bytes) -> None:
        rows, keys = self._reader.take(data)
        self._route(rows, keys)

    def _route(self, rows: np.ndarray, keys: list[str]) -> None:
        if not keys:
            return
        owner = shard_of(keys, len(self._shards))
        for i in np.unique(owner).tolist():
            part = self._parts.get(i)
            if part is None:
                directory = self._shards[i].directory
                part = self._parts[i] = RowSpool(directory, id_width=self._id_width, dim=self._dim)
            part.write(rows[owner == i])

    def finish(self, *, wait: Wait = True) -> int:
        """Stage every shard's rows at once; on any error nothing is staged and the batch is
        over, except when a shard was busy (LockedError): then it may be retried."""
        try:
            self._reader.check_aligned()
            steps = {i: partial(_stage, part, wait) for i, part in self._parts.items()}
            self._together(steps, wait)
        except LockedError:
            raise
        except BaseException:
            self.abort()
            raise
        self.abort()
        return self._reader.seen

    def abort(self) -> None:
        self._reader.close()
        for part in self._parts.values():
            part.close()


def _stage(spool: RowSpool, wait: Wait, shard: Collection) -> Prepared[int]:
    return shard.stage_spooled(spool, wait=wait)


def stage_batch(keys: list[str], vectors: np.ndarray, wait: Wait, shard: Collection) -> Prepared[int]:
    return shard.stage_batch(keys, vectors, wait=wait)
