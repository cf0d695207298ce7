"""Sharded collections: one collection split by key into independent shards, searched as one.

Each shard is a whole collection of its own, with its own generations, segments, rows and
writer lock (or conditional publication on object storage), so N processes on N machines
write N shards at once; the rules (which shard a key belongs to, row ids, the layout) are
:mod:`brinicle_etl.store.sharding`'s. ``sharding.json`` beside the shards is written after
them at creation and removed after them by a drop, so it exists only when every shard does
(or a drop was cut short: opening then says so, and dropping again finishes it).

Publication: a write through a :class:`ShardedCollection` that spans shards prepares every
shard and then publishes each (see :mod:`~brinicle_etl.store.sharding`); writers of one
shard each (a Dagster step per shard) publish on their own. A reader may see shard 1's new
generation and shard 2's old one while they run; a search never mixes two generations of
one shard.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from typing import Any, TypeVar, overload

import numpy as np
import pyarrow as pa

from brinicle_etl.errors import (
    AlreadyExistsError,
    InputError,
    NotFoundError,
    StateError,
)
from brinicle_etl.store.collection import Collection
from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.remote import VacuumResult
from brinicle_etl.store.shard_reads import ShardedReads
from brinicle_etl.store.sharding import (
    MAX_SHARDS,
    SHARDING,
    Done,
    Prepared,
    ShardedBinaryIngest,
    ShardedPlace,
    SummedProgress,
    check_shards,
    prepare_then_publish,
    shard_dir,
    shard_of,
    shard_row_base,
    shards_failed,
    stage_batch,
)
from brinicle_etl.store.validate import as_keys, as_matrix, as_write
from brinicle_etl.store.writer import DeleteResult, Transaction, WriteResult, prepare_in
from brinicle_etl.types import BuildProgress, HnswParams, Wait, WriteMode, check_choice

__all__ = [
    "MAX_SHARDS",
    "SHARDING",
    "ShardedCollection",
    "ShardedPlace",
    "check_shards",
    "shard_of",
    "shard_row_base",
]

T = TypeVar("T")


class _Shards(Sequence[Collection]):
    """The shards of one collection, each opened on first use and then kept."""

    def __init__(self, count: int, open_shard: Callable[[int], Collection]):
        self._open_shard = open_shard
        self._opened: list[Collection | None] = [None] * count
        self._locks = [threading.Lock() for _ in range(count)]

    def __len__(self) -> int:
        return len(self._opened)

    @overload
    def __getitem__(self, i: int) -> Collection: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Collection]: ...
    def __getitem__(self, i: int | slice) -> Collection | Sequence[Collection]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        shard = self._opened[i]
        if shard is None:
            with self._locks[i]:  # one object per shard: its held writer lock is per object
                shard = self._opened[i]
                if shard is None:
                    shard = self._opened[i] = self._open_shard(range(len(self))[i])
        return shard


class ShardedCollection(ShardedReads):
    """A collection split into :attr:`shards` by key, read and written as one.

    Reads (:class:`~brinicle_etl.store.shard_reads.ShardedReads`) fan out to every shard at
    once and merge by distance. Writes are routed by key; each shard commits on its own (see
    the module's notes on publication).
    """

    @classmethod
    def open(cls, place: ShardedPlace) -> ShardedCollection:
        """The collection; each shard is opened when first used (a writer of one shard, on
        object storage, fetches that shard alone)."""
        shards = place.count()
        if shards is None:
            raise NotFoundError(f"collection {place.name!r} not found at {place.directory}")
        return cls(place, _Shards(shards, place.open_shard))

    @classmethod
    def create(
        cls,
        place: ShardedPlace,
        config: CollectionConfig,
        *,
        shards: int,
        meta: dict[str, Any] | None = None,
        exist_ok: bool = False,
    ) -> ShardedCollection:
        """A new collection of ``shards`` shards; with ``exist_ok``, the one another process made."""
        if not place.create(config, shards=shards, meta=meta) and not exist_ok:
            raise AlreadyExistsError(f"collection {place.name!r} already exists at {place.directory}")
        opened = cls.open(place)
        if len(opened.shards) != shards:
            raise AlreadyExistsError(f"collection {place.name!r} already exists with {len(opened.shards)} shards")
        return opened

    def __init__(self, place: ShardedPlace, shards: Sequence[Collection]):
        super().__init__(place, shards)
        self._write_pool = ThreadPoolExecutor(max_workers=min(len(self.shards), 32), thread_name_prefix="shard-write")
        # Writes spanning shards through this object go one at a time: each takes the locks
        # it needs in shard order and keeps them until it has published.
        self._spanning = threading.RLock()

    def _each_write(self, call: Callable[[Collection], T]) -> list[T]:
        """``call`` on every shard at once, each to its end; then any errors, together."""
        futures = [self._write_pool.submit(lambda i: call(self.shards[i]), i) for i in range(len(self.shards))]
        wait_all(futures)
        failed = {i: f.exception() for i, f in enumerate(futures) if f.exception() is not None}
        if failed:
            done = [i for i in range(len(futures)) if i not in failed]
            raise shards_failed(self.name, failed, published=done, again="run it again for the others")
        return [f.result() for f in futures]

    @contextmanager
    def _holding(self, shards: Iterable[int], wait: Wait) -> Iterator[None]:
        """The writer locks of ``shards``, taken in shard order (two writers never wait on each
        other crosswise) and held to the end of the block; ones held already stay held."""
        with self._spanning, ExitStack() as stack:
            for i in sorted(set(shards)):
                shard = self.shards[i]
                if shard.hold_writer_lock(wait=wait):
                    stack.callback(shard.release_writer_lock)
            yield

    def together(
        self,
        steps: Mapping[int, Callable[[Collection], Prepared[T]]],
        *,
        wait: Wait,
        again: str = "run the same write again to complete it",
        workers: int | None = None,
    ) -> dict[int, T]:
        """Several shards' writes as one (:func:`~brinicle_etl.store.sharding.prepare_then_publish`):
        ``steps`` maps a shard to the step that prepares its write; the shards' writer locks
        are all taken first, in shard order. ``again``: how to complete the write if its
        publication fails part way. ``workers``: how many prepare at once (default: one per
        shard, up to 32)."""
        with self._holding(steps, wait), ExitStack() as stack:
            pool = self._write_pool
            if workers is not None:
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard-step"))
            work = [(i, partial(step, self.shards[i])) for i, step in steps.items()]
            results = prepare_then_publish(self.name, work, pool, again=again)
        return dict(zip(steps, results, strict=True))

    # ---- writing -------------------------------------------------------------------

    def write(
        self,
        keys: Any,
        vectors: Any = None,
        *,
        mode: WriteMode = "upsert",
        rows: pa.Table | None = None,
        delete: Any = None,
        params: HnswParams | None = None,
        meta: dict[str, Any] | None = None,
        wait: Wait = False,
        progress: BuildProgress | None = None,
    ) -> WriteResult:
        """As :meth:`Collection.write`, routed by key: every shard written is prepared, then
        each publishes (see :mod:`~brinicle_etl.store.sharding`). ``build`` replaces every
        shard (a shard given no rows is emptied); ``meta`` is set on every shard."""
        check_choice("mode", mode, WriteMode)
        key_array, matrix = as_write(keys, vectors, rows, self.dim, "write")
        delete_array = as_keys(delete, "write") if delete is not None else pa.array([], pa.string())
        writes, deletes = self._routed(key_array), self._routed(delete_array)
        touched = range(len(self.shards)) if mode == "build" or meta is not None else writes.keys() | deletes.keys()
        summed = SummedProgress(progress) if progress is not None else None
        empty = np.empty(0, np.int64)

        def step(i: int, shard: Collection) -> Prepared[WriteResult]:
            take = pa.array(writes.get(i, empty), pa.int64())
            return shard.prepare_write(
                key_array.take(take),
                None if matrix is None else matrix[take.to_numpy()],
                mode=mode,
                rows=None if rows is None else rows.take(take),
                delete=delete_array.take(pa.array(deletes[i], pa.int64())) if i in deletes else None,
                params=params,
                meta=meta,
                wait=wait,
                progress=None if summed is None else summed.for_shard(i),
            )

        again = "run it again with mode='upsert' to complete it" if mode == "insert" else "run it again to complete it"
        results = self.together({i: partial(step, i) for i in sorted(touched)}, wait=wait, again=again)
        return _summed(mode, list(results.values()), self.generation)

    def delete(self, keys: Any, *, return_not_found: bool = False, wait: Wait = False) -> DeleteResult:
        """As :meth:`Collection.delete`, routed by key, the shards as one; ``not_found`` in the
        order the keys were given."""
        key_array = pa.array(list(dict.fromkeys(as_keys(keys, "delete").to_pylist())), pa.string())
        missing: dict[int, list[str]] = {}

        def step(i: int, positions: np.ndarray, shard: Collection) -> Prepared[int]:
            def body(tx: Transaction) -> None:
                missing[i] = tx.delete(key_array.take(pa.array(positions, pa.int64()))).to_pylist()

            prepared = prepare_in(shard.transaction("upsert", wait=wait, op="delete"), body)
            if len(missing[i]) == len(positions):
                prepared.abort()
                return Done(0)
            return _Deleted(prepared)

        routed = self._routed(key_array)
        deleted = self.together(
            {i: partial(step, i, p) for i, p in routed.items()}, wait=wait, again="delete the same keys again"
        )
        not_found = None
        if return_not_found:
            gone = {k for keys_ in missing.values() for k in keys_}
            not_found = [k for k in key_array.to_pylist() if k in gone]
        return DeleteResult(deleted_count=sum(deleted.values()), not_found=not_found, generation=self.generation)

    def rebuild(self, params: HnswParams | dict[str, Any] | None = None, *, wait: Wait = False) -> int:
        """Rebuild every shard, in parallel; returns the new :attr:`generation`."""
        self._each_write(lambda s: s.rebuild(params, wait=wait))
        return self.generation

    def optimize(self, *, wait: Wait = False) -> bool:
        """Rebuild the shards that need it (link the pending vectors of the others), in
        parallel; whether any did."""
        return any(self._each_write(lambda s: s.optimize(wait=wait)))

    def index_pending(self, *, wait: Wait = False) -> bool:
        """Link every shard's pending vectors now, in parallel; whether any had some."""
        return any(self._each_write(lambda s: s.index_pending(wait=wait)))

    def set_meta(self, meta: dict[str, Any], *, wait: Wait = False) -> None:
        """Every shard's metadata, as one write."""
        self.write([], meta=meta, wait=wait)

    def destroy(self, *, wait: Wait = False) -> None:
        """Drop every shard and the collection: every shard's lock is taken first, so a busy
        shard leaves the whole collection as it was."""
        with self._holding(range(len(self.shards)), wait):
            for shard in self.shards:
                with suppress(NotFoundError):
                    shard.destroy(wait=wait)
        self.place.remove()

    def hold_writer_lock(self, *, wait: Wait = False) -> bool:
        """Every shard's writer lock, held until :meth:`release_writer_lock` (see
        :meth:`Collection.hold_writer_lock`); whether any was taken now."""
        took = []
        with self._spanning:
            try:
                for shard in self.shards:  # in shard order, as every writer of several shards
                    took.append(shard.hold_writer_lock(wait=wait))
            except BaseException:
                for shard, taken in zip(self.shards, took, strict=False):
                    if taken:
                        shard.release_writer_lock()
                raise
        return any(took)

    def release_writer_lock(self) -> None:
        """Every shard's, each once its grouped ingests are written; a shard that cannot write
        them keeps its lock, the others still let theirs go, and the first error is raised."""
        errors: list[BaseException] = []
        with self._spanning:
            for shard in self.shards:
                try:
                    shard.release_writer_lock()
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]

    def vacuum(self, *, retention_seconds: float = 3600.0, wait: Wait = False) -> VacuumResult:
        results = self._each(lambda s: s.vacuum(retention_seconds=retention_seconds, wait=wait))
        return VacuumResult(
            removed=[f"{shard_dir(i)}/{name}" for i, r in enumerate(results) for name in r.removed],
            bytes_freed=sum(r.bytes_freed for r in results),
            kept_generations=sorted({g for r in results for g in r.kept_generations}),
        )

    # ---- ingest sessions: one per shard, applied as one ------------------------------

    def init(self, mode: WriteMode, *, wait: Wait = False) -> None:
        """Start a session on every shard, or on none: every shard's lock is taken and every
        shard checked before any session starts."""
        check_choice("mode", mode, WriteMode)
        with self._holding(range(len(self.shards)), wait):
            pending = [i for i, shard in enumerate(self.shards) if shard.status().session_mode is not None]
            if pending:
                raise StateError(
                    f"init: an ingest session is already pending on shard(s) {pending} of {self.name!r}; "
                    "finalize() or abort() it first"
                )
            for shard in self.shards:
                shard.init(mode)

    def ingest(self, key: str, vector: Any, *, wait: Wait = True, sync_window: float | None = None) -> None:
        self.shards[int(shard_of([as_keys([key], "ingest")[0].as_py()], len(self.shards))[0])].ingest(
            key, vector, wait=wait, sync_window=sync_window
        )

    def flush(self, *, wait: Wait = True) -> None:
        for shard in self.shards:
            shard.flush(wait=wait)

    def ingest_batch(self, keys: Sequence[str], vectors: Any, *, wait: Wait = True) -> int:
        """Stage many vectors, each in its shard's session, as one: every row is checked, and
        every shard's append made, before any is kept; a bad row or a busy shard stages nothing."""
        key_array = as_keys(keys, "ingest_batch")
        matrix = as_matrix(vectors, self.dim, "ingest_batch", key_array)
        if len(matrix) != len(key_array):
            raise InputError(f"ingest_batch: {len(key_array)} ids but {len(matrix)} vectors")
        steps = {
            i: partial(stage_batch, key_array.take(pa.array(p)).to_pylist(), matrix[p], wait)
            for i, p in self._routed(key_array).items()
        }
        self.together(
            steps,
            wait=wait,
            again=_STAGED_AGAIN,
        )
        return len(key_array)

    def ingest_binary(self, *, id_width: int = 32) -> ShardedBinaryIngest:
        """Binary rows (see :meth:`Collection.ingest_binary`), checked and routed to their shards
        as they arrive, staged at :meth:`ShardedBinaryIngest.finish` in every shard as one."""
        return ShardedBinaryIngest(
            self.shards,
            lambda steps, wait: self.together(
                steps,
                wait=wait,
                again=_STAGED_AGAIN,
            ),
            name=self.name,
            id_width=id_width,
        )

    def finalize(
        self, optimize: bool = False, params: HnswParams | dict[str, Any] | None = None, *, wait: Wait = True
    ) -> WriteResult:
        """Apply every shard's session as one (see :mod:`~brinicle_etl.store.sharding`): a
        session one shard refuses (an insert of an existing id) ends on every shard with
        nothing applied. The shards whose session was applied by a finalize whose publication
        failed part way are left as they are: calling this again applies the others."""
        pending = [i for i, status in enumerate(self._each(Collection.status)) if status.session_mode is not None]
        if not pending:
            raise StateError(f"finalize: no pending ingest session on {self.name!r}; call init() first")
        results = self.together(
            {i: lambda s: s.prepare_finalize(params, wait=wait) for i in pending},
            wait=wait,
            again="call finalize() again to apply the others",
        )
        if optimize:
            self.optimize(wait=wait)
        parts = list(results.values())
        return _summed(parts[0].mode, parts, self.generation)

    def abort(self, *, wait: Wait = True) -> int:
        with self._holding(range(len(self.shards)), wait):
            return sum(self._each_write(lambda s: s.abort()))


_STAGED_AGAIN = "the published shards keep the rows staged: abort() the session and send the batch in a new one"


class _Deleted:
    """A shard's prepared delete, reporting how many rows it deleted."""

    def __init__(self, prepared: Prepared[WriteResult]):
        self._prepared = prepared

    def publish(self) -> int:
        return self._prepared.publish().deleted

    def abort(self, *, refused: bool) -> None:
        self._prepared.abort(refused=refused)


def _summed(mode: WriteMode, results: Sequence[WriteResult], generation: int) -> WriteResult:
    return WriteResult(
        mode=mode,
        inserted=sum(r.inserted for r in results),
        updated=sum(r.updated for r in results),
        deleted=sum(r.deleted for r in results),
        generation=generation,
    )
