"""``ingest()``: a table in, an up-to-date collection out; a re-run costs only what changed.

read -> schema -> plan -> embed -> index, in two passes over the source under the
collection's writer lock. The first pass types every row, hashes it and plans in
DuckDB (so duplicates and conflicts are refused before any embedding is paid for);
the second embeds what must be embedded and streams rows and vectors into one
transaction, published atomically at the end.

``ingest()`` takes the contract as keyword arguments and builds :class:`IngestOptions`;
entry points that already hold options call :func:`run_ingest`, the one implementation.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Unpack, cast

import numpy as np
import polars as pl
import pyarrow as pa

from brinicle_etl._cpus import usable_cpus
from brinicle_etl.embed import Embedder, ModelRegistry, embed_unique, parse_vectors
from brinicle_etl.errors import AlreadyExistsError, ConfigError, InputError
from brinicle_etl.pipeline.batches import FirstPass, ShardRows, batch_keys, hash_inputs, where_selected
from brinicle_etl.pipeline.options import IngestArgs, IngestOptions, IngestResult, Progress
from brinicle_etl.pipeline.plan import Hasher, Plan, Planner
from brinicle_etl.pipeline.read import Batch, SourceLike, open_source
from brinicle_etl.pipeline.resolve import resolve_schema, same_table, vector_dim
from brinicle_etl.pipeline.schema import TemplateSchema, cast_frame, render_text
from brinicle_etl.store import Collection, Store
from brinicle_etl.store.rows import HASH, KEY, ROW_ID, TEXT_HASH
from brinicle_etl.store.shards import ShardedCollection
from brinicle_etl.store.writer import Transaction, unwind

__all__ = ["IngestResult", "Progress", "ingest", "model_registry", "run_ingest"]

log = logging.getLogger("brinicle_etl.ingest")


def model_registry(store: Store) -> ModelRegistry:
    """The store's model registry (``<store>/.brinicle/models.json`` plus the built-in models)."""
    return store.models


class _Locations:
    """Maps a source position back to its file and row, for messages."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._batches: list[Batch] = []

    def add(self, batch: Batch) -> None:
        self._starts.append(batch.offset)
        self._batches.append(batch)

    def __call__(self, pos: int) -> str:
        i = bisect.bisect_right(self._starts, pos) - 1
        if i < 0:
            return f"row {pos + 1}"
        batch = self._batches[i]
        return batch.where(pos - batch.offset)


def ingest(
    source: SourceLike,
    collection: str = "default",
    *,
    store: Store | str | Path | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    **options: Unpack[IngestArgs],
) -> IngestResult:
    """Bring collection ``db/namespace`` up to date with ``source``.

    Args:
        source: a file, a glob, a directory, a list of paths, or a polars / Arrow / pandas frame.
        collection: ``db/namespace`` (``db`` alone means ``db/default``).
        store: a :class:`Store` or its directory (default ``$BRINICLE_STORE``, else ``./brinicle_store``).
        embedder: any object with ``model_id``, ``dim`` and ``embed_batch``, instead of ``model``.
        progress: ``progress(stage, done, total)``, called as rows are read, embedded and written.

    Keyword options (:class:`IngestArgs`; each has the default shown):
        mode: ``"upsert"`` inserts new keys and resolves stored keys whose content changed by
            ``on_conflict``; ``"insert"`` does the same but never replaces; ``"build"`` replaces
            the collection (and its schema) with the source. Rows identical to the stored ones
            are never conflicts and never re-embedded.
        on_conflict: ``"error"`` refuses the whole ingest and names the keys; ``"update"``
            replaces the stored rows; ``"skip"`` keeps them.
        on_duplicate: ``"error"`` refuses keys repeated in the source; ``"keep_last"`` keeps the last.
        conflict_on: ``"change"``; ``"key"`` makes every stored key a conflict, identical rows
            included (counted as updated or skipped and listed, never rewritten or re-embedded).
        sync: ``False``; ``True`` also deletes keys the source no longer has.
        index: ``"now"`` returns with the new vectors indexed; ``"background"`` returns once
            they are stored (found at once by exact search) and indexes them in a background
            job of this process (waited for at exit); see :data:`~brinicle_etl.types.IndexTiming`.
        schema: ``None``; a whole :class:`TemplateSchema` (object, JSON or dict).
        template_name: ``None``; a schema saved in the store (saved after the ingest if new).
        primary_key: inferred; the key column (none: rows are keyed by their content).
        semantic_fields: inferred; the columns embedded, one per line of text.
        template: ``None``; the text embedded, e.g. ``"{title}: {description}"``.
        vector_col: ``None``; a column of precomputed vectors.
        model: ``all-MiniLM-L6-v2``; a model id of the store's registry.
        dim: from the vectors; checked against them when given.
        metric: ``"cosine"`` (or ``"ip"``, ``"l2sq"``) for a new collection.
        dtype: for a new collection, ``"i8"`` with metric ``"cosine"``, else ``"bf16"``
            (``types.default_dtype``); or ``"f32"``, ``"f16"``.
        params: ``HnswParams()`` (M=16, ef_construction=200, ef_search=64) for a new collection.
        delta_ratio: ``0.10``; the share of rows in delta segments past which a rebuild is advised.
        format: from the file names; ``"csv"`` or ``"parquet"``.
        separator: a CSV's delimiter; by default tab for ``.tsv``, else whichever of
            ``, TAB ; |`` the header line holds most of.
        batch_rows: ``50_000``; rows read at a time.
        wait: ``False``; ``True`` (or seconds) waits for another writer instead of failing at once.
        meta: ``None``; entries stored in the collection's metadata in the same atomic commit.

    An existing collection keeps its shape (dim, metric, dtype, params) and its schema.
    """
    return run_ingest(
        source, collection, store=store, options=IngestOptions.of(**options), embedder=embedder, progress=progress
    )


def run_ingest(
    source: SourceLike,
    collection: str,
    *,
    store: Store | str | Path | None,
    options: IngestOptions,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """The one implementation under :func:`ingest` and every entry point: options built once."""
    st = store if isinstance(store, Store) else Store(store)
    name = st.canonical(collection)
    existing = st.open(name) if st.exists(name) else None
    count = _shard_count(name, existing, options)
    created = False
    if count == 1 and not isinstance(existing, ShardedCollection):
        return _Run(source, name, st, options, embedder, progress).run()
    if not isinstance(existing, ShardedCollection):
        # The first run creates every shard (of N steps starting at once, each may: one makes
        # the collection, the others find it), then each writes its own.
        probe = _Run(source, name, st, options, embedder, progress)
        config = options.new.config(probe.dim)
        try:
            existing = cast(ShardedCollection, st.create(name, config=config, shards=count))
            created = True
        except AlreadyExistsError:
            existing = cast(ShardedCollection, st.create(name, config=config, shards=count, exist_ok=True))
    sharded = existing

    def run(i: int, _shard: Collection) -> _PreparedRun:
        return _Run(source, name, st, options, embedder, progress, shard=(sharded, i)).prepare()

    if options.shard is not None:
        return run(options.shard, sharded.shard(options.shard)).publish()
    # Every shard: prepared in parallel, bounded by the cores (embedding and HNSW builds
    # release the GIL), then published; an error anywhere before publication writes nothing.
    steps = {i: partial(run, i) for i in range(count)}
    try:
        results = sharded.together(
            steps,
            wait=options.wait,
            again="run the same ingest again to complete it",
            workers=min(count, usable_cpus()),
        )
    except BaseException:
        if created and not any(sharded.generations()):
            st.drop(name)  # created by this run, which wrote nothing: as for one collection, none is left
        raise
    return IngestResult.combined(list(results.values()))


def _shard_count(name: str, existing: Collection | ShardedCollection | None, options: IngestOptions) -> int:
    """How many shards the ingest writes to, checking ``shards`` and ``shard`` against it."""
    if existing is None:
        count = options.new.shards or 1
    else:
        count = len(existing.shards) if isinstance(existing, ShardedCollection) else 1
        if options.new.shards is not None and options.new.shards != count:
            raise ConfigError(
                f"collection {name!r} has {count} shard(s), not shards={options.new.shards}; "
                "an existing collection keeps its shards"
            )
    if options.shard is not None and not 0 <= options.shard < count:
        raise ConfigError(f"shard must be from 0 to {count - 1} for {name!r} ({count} shard(s)); got {options.shard}")
    return count


class _Run:
    """One ingest: the source, the resolved schema, the embedder, the timings, the transaction."""

    def __init__(
        self,
        source: SourceLike,
        name: str,
        store: Store,
        options: IngestOptions,
        embedder: Embedder | None,
        progress: Progress | None,
        shard: tuple[ShardedCollection, int] | None = None,
    ):
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.name, self.store, self.options, self.progress = name, store, options, progress
        self.src = open_source(source, format=options.format, separator=options.separator)
        # A shard's run: only the rows whose key belongs to it, into it; a shard nothing was
        # ingested into yet (no schema) is filled as a new collection would be.
        self.shard = ShardRows(len(shard[0].shards), shard[1]) if shard is not None else None
        self.target = shard[0].shard(shard[1]) if shard is not None else None
        self.existing: Collection | None
        if self.target is not None:
            # A shard without a schema is empty unless vectors were written to it another way
            # (VectorEngine, the HTTP session API): those are refused below, as for one collection.
            fresh = "schema" not in self.target.meta and not len(self.target)
            self.existing = None if fresh else self.target
        else:
            opened = store.open(name) if store.exists(name) else None
            # A sharded collection here: another process created it since run_ingest looked
            # (this run only probes the shape for it); run_ingest sends shards their own runs.
            self.existing = None if isinstance(opened, ShardedCollection) else opened
        if self.existing is not None and "schema" not in self.existing.meta:
            raise ConfigError(
                f"collection {name!r} holds vectors written without a schema (VectorEngine or the HTTP API); "
                "ingest tables into a collection of their own"
            )
        model = embedder.model_id if embedder is not None else options.schema.model
        # A shard nothing was written to yet takes its siblings' schema: one collection, one schema.
        holder: Collection | ShardedCollection | None = self.existing
        if holder is None and shard is not None and "schema" in shard[0].meta:
            holder = shard[0]
        self.sch, self.inferred = resolve_schema(store, holder, self.src, options, model)
        single_build = options.shard is not None and options.mode == "build" and self.target is not None
        stored = self.target.meta.get("schema") if single_build and self.target is not None else None
        if stored is not None and not same_table(TemplateSchema.from_dict(stored), self.sch):
            # A build may change the schema; the other shards keep theirs until built too.
            log.warning(
                "%s shard %s: the build changes the schema; the other shards keep the old one until "
                "they are built from the same source",
                name,
                options.shard,
            )
        self.sch.check_source(list(self.src.columns), self.src.description)
        if self.sch.vector_source == "generated" and embedder is None:
            assert self.sch.model is not None
            embedder = store.models.embedder(self.sch.model, backend=self.sch.backend, precision=self.sch.precision)
        self.embedder = embedder
        self.dim = vector_dim(self.sch, embedder, self.existing, self.src, options.new.dim, options.batch_rows)
        if self.sch.vector_source == "precomputed" and self.sch.model is not None:
            # The model that made the vectors: text queries are embedded with it.
            model_dim = store.models.get(self.sch.model).dim
            if model_dim != self.dim:
                raise InputError(
                    f"model {self.sch.model!r} makes {model_dim}-d vectors, "
                    f"but column {self.sch.vector_col!r} holds {self.dim}-d"
                )
        self.timings["schema"] = time.perf_counter() - self.started

    def run(self) -> IngestResult:
        return self.prepare().publish()

    def prepare(self) -> _PreparedRun:
        """Everything up to publication, under the writer lock (held until the prepared run is
        published or aborted): planned, embedded, written, checked."""
        options, name, st = self.options, self.name, self.store
        created = self.existing is None
        # `is None`, not truthiness: a collection with no live rows is empty, not absent.
        col: Collection
        if self.existing is not None:
            col = self.existing
        elif self.target is not None:
            col = self.target
        else:
            col = cast(Collection, st.create(name, config=options.new.config(self.dim)))
        if col.dim != self.dim:
            raise InputError(
                f"dimension mismatch: collection {name!r} holds {col.dim}-d vectors, the source gives {self.dim}-d"
            )
        undo, held = ExitStack(), ExitStack()
        if created and self.target is None:
            # A collection this run created goes again if the run does not publish it.
            undo.callback(st.forget, name)
            undo.callback(col.destroy, wait=True)
        try:
            tx = held.enter_context(
                col.transaction(options.mode, wait=options.wait, op="ingest", defer_index=options.index == "background")
            )
            existing_rows = tx.snapshot.rows([HASH, TEXT_HASH]) if not created else None
            plan = self._plan(existing_rows)
            embedded = self._write(plan, tx)
            t = time.perf_counter()
            if len(plan.deletes) and options.mode != "build":
                tx.delete(plan.deletes)
            # Nothing to write, delete or record: publish nothing, the generation stays.
            changed = bool(plan.write.any() or len(plan.deletes))
            # A new backend or precision for the model changes only the schema: recorded, so
            # queries follow it.
            restated = col.meta.get("schema") != self.sch.to_dict()
            published = created or options.mode == "build" or options.meta is not None or changed or restated
            if published:
                tx.prepare(meta={**col.meta, **(options.meta or {}), "schema": self.sch.to_dict()})
            self.timings["commit"] = time.perf_counter() - t
        except BaseException as exc:
            try:
                unwind(held, exc)  # a full disk is reported as such
            finally:
                undo.close()
            raise
        return _PreparedRun(self, held, undo, tx, plan, embedded=embedded, created=created, published=published)

    def result(self, plan: Plan, *, embedded: int, created: bool, published: bool, generation: int) -> IngestResult:
        """The run's result, once it is published (or found to change nothing)."""
        options, st = self.options, self.store
        template_name = options.schema.template_name
        if template_name is not None and st.template(template_name) is None:
            st.save_template(template_name, {**self.sch.to_dict(), "columns": {}})
        self.timings["total"] = time.perf_counter() - self.started
        result = IngestResult(
            mode="Create" if created else "Append",
            rows_added=plan.inserted + plan.updated,
            rows_inserted=plan.inserted,
            rows_updated=plan.updated,
            rows_skipped=plan.skipped,
            rows_unchanged=plan.unchanged,
            rows_deleted=len(plan.deletes),
            rows_embedded=embedded,
            conflicts=plan.conflicts,
            on_conflict=options.on_conflict,
            vector_source=self.sch.vector_source,
            namespace=self.name.split("/")[1],
            collection=self.name,
            shard=self.shard.index if self.shard is not None else None,
            write_mode=options.mode,
            rows_read=plan.rows,
            duplicates_dropped=plan.duplicates_dropped,
            generation=generation,
            published=published,
            schema=self.sch,
            inferred=str(self.inferred) if self.inferred is not None and self.inferred.notes else None,
            timings=self.timings,
            embedding=_embedding(self.embedder) if embedded else None,
        )
        log.info(
            "ingested %s into %s%s: %d inserted, %d updated, %d skipped, %d unchanged, %d deleted, %d embedded",
            self.src.description,
            self.name,
            f" shard {self.shard.index}" if self.shard is not None else "",
            result.rows_inserted,
            result.rows_updated,
            result.rows_skipped,
            result.rows_unchanged,
            result.rows_deleted,
            result.rows_embedded,
        )
        return result

    def _plan(self, existing_rows: pa.Table | None) -> Plan:
        """First pass: type and hash every row, then decide each one's fate in DuckDB."""
        sch, embedder, progress, timings = self.sch, self.embedder, self.progress, self.timings
        src, batch_rows, options = self.src, self.options.batch_rows, self.options
        locations = _Locations()
        t = time.perf_counter()
        empty = pa.table(
            {
                ROW_ID: pa.array([], pa.uint64()),
                KEY: pa.array([], pa.string()),
                HASH: pa.array([], pa.string()),
                TEXT_HASH: pa.array([], pa.string()),
            }
        )
        key_kind = sch.columns.get(sch.primary_key) if sch.primary_key else None
        planner = Planner(
            # No rows at all (a header-only first export): the stored table has no hash columns yet.
            existing_rows if existing_rows is not None and existing_rows.num_rows else empty,
            key_field=sch.primary_key,
            key_kind=key_kind,
            where=locations,
        )
        hasher = Hasher()
        # A shard's run narrows its batches: its second pass reads the source again.
        self.first_pass = FirstPass(batches=[] if self.shard is None else None)
        try:
            read = 0
            # A shard's run keeps its rows as soon as their keys are known: by the key column
            # alone when there is one (the other rows are never typed, hashed or checked here:
            # their own shard's run does that), else by the content hash, after hashing.
            for batch in src.batches(batch_rows=batch_rows):
                if self.shard is not None and sch.primary_key:
                    key_frame = cast_frame(batch.frame, sch, batch.where, only=[sch.primary_key])
                    batch, _mine = self.shard.keep(batch, batch_keys(key_frame, sch, None, batch))
                typed = cast_frame(batch.frame, sch, batch.where)
                frame, columns, text = hash_inputs(batch, typed, sch, embedder)
                row_hash, text_hash = hasher(frame, columns, text)
                keys = batch_keys(typed, sch, row_hash, batch)
                if self.shard is not None and not sch.primary_key:
                    batch, mine = self.shard.keep(batch, keys)
                    keys, row_hash = keys.filter(mine), row_hash.filter(mine)
                    text_hash = text_hash.filter(mine) if text_hash is not None else None
                locations.add(batch)
                planner.add(batch.offset, keys, row_hash, text_hash)
                self.first_pass.keep(batch, row_hash, text_hash)
                read += len(batch.frame)
                if progress:
                    progress("read", read, None)
            timings["read"] = time.perf_counter() - t
            t = time.perf_counter()
            plan = planner.finish(
                mode=options.mode,
                on_conflict=options.on_conflict,
                on_duplicate=options.on_duplicate,
                sync=options.sync,
                conflict_on=options.conflict_on,
            )
            timings["plan"] = time.perf_counter() - t
            return plan
        finally:
            hasher.close()
            planner.close()

    def _write(self, plan: Plan, tx: Transaction) -> int:
        """Second pass: embed or parse what is written and stream it into the transaction."""
        sch, embedder, progress, timings = self.sch, self.embedder, self.progress, self.timings
        dim = self.dim
        t_write = time.perf_counter()
        embed_seconds = 0.0
        embedded = written = 0
        to_write = int(plan.write.sum())
        to_embed = int(plan.embed.sum()) if sch.vector_source == "generated" else 0
        hasher: Hasher | None = None  # only for batches the first pass did not keep
        try:
            # Nothing to write (a re-ingest of an unchanged export): no second read of the source.
            for batch, hashes in self._second_pass() if to_write else ():
                # window: this batch's rows in the plan; picked: those of them written;
                # selected: the same rows among the batch's (all of them, unless a shard's run).
                if self.shard is not None:
                    window, picked, selected = self.shard.select(batch, plan.write)
                else:
                    window = slice(batch.offset, batch.offset + len(batch.frame))
                    picked = selected = plan.write[window]
                if not picked.any():
                    continue
                raw = batch.frame.filter(pl.Series(selected))
                where = where_selected(batch, selected)
                typed = cast_frame(raw, sch, where)
                if hashes is None:
                    hasher = hasher or Hasher()
                    frame, columns, text = hash_inputs(Batch(raw, 0, batch.origin, 0), typed, sch, embedder)
                    row_hash, text_hash = hasher(frame, columns, text)
                else:
                    mask = pa.array(selected)
                    row_hash = hashes[0].filter(mask)
                    text_hash = hashes[1].filter(mask) if hashes[1] is not None else None
                keys = plan.keys[window].filter(pa.array(picked))
                vectors: np.ndarray | None = None
                if sch.vector_source == "generated":
                    assert embedder is not None
                    reuse = plan.reuse[window][picked]
                    vectors = np.empty((len(keys), dim), dtype=np.float32)
                    fresh = reuse < 0
                    if fresh.any():
                        t = time.perf_counter()
                        texts = render_text(typed.filter(pl.Series(fresh)), sch).to_list()
                        vectors[fresh], _ = embed_unique(embedder, texts)
                        embed_seconds += time.perf_counter() - t
                        embedded += int(fresh.sum())
                        if progress:
                            progress("embed", embedded, to_embed)
                    if (~fresh).any():
                        vectors[~fresh] = tx.vectors(reuse[~fresh])
                elif sch.vector_source == "precomputed":
                    assert sch.vector_col is not None
                    vectors = parse_vectors(raw[sch.vector_col], dim=dim, where=where)
                rows = typed.to_arrow()
                rows = rows.append_column(HASH, row_hash)
                rows = rows.append_column(
                    TEXT_HASH, text_hash if text_hash is not None else pa.nulls(len(keys), pa.string())
                )
                tx.add(keys, vectors, rows, existing=plan.old[window][picked])
                written += len(keys)
                if progress:
                    progress("write", written, to_write)
        finally:
            if hasher is not None:
                hasher.close()
            self.first_pass = FirstPass(batches=None)  # its memory can go
        timings["embed"] = embed_seconds
        timings["write"] = time.perf_counter() - t_write - embed_seconds
        return embedded

    def _second_pass(self) -> Iterator[tuple[Batch, tuple[pa.Array, pa.Array | None] | None]]:
        """The source again, with each batch's hashes when the first pass kept them."""
        kept = self.first_pass.batches
        if kept is not None:
            for batch, row_hash, text_hash in kept:
                yield batch, (row_hash, text_hash)
            return
        for batch in self.src.batches(batch_rows=self.options.batch_rows):
            yield batch, None


class _PreparedRun:
    """A run prepared and holding its writer lock: :meth:`publish` commits it (if it changes
    anything) and gives the result; :meth:`abort` rolls it back."""

    def __init__(
        self,
        run: _Run,
        held: ExitStack,
        undo: ExitStack,
        tx: Transaction,
        plan: Plan,
        *,
        embedded: int,
        created: bool,
        published: bool,
    ):
        self._run, self._held, self._undo, self._tx, self._plan = run, held, undo, tx, plan
        self._embedded, self._created, self._published = embedded, created, published

    def publish(self) -> IngestResult:
        t = time.perf_counter()
        try:
            with self._held:  # the writer lock, released once published
                generation = self._tx.commit().generation if self._published else self._tx.generation - 1
        except BaseException:
            self._undo.close()
            raise
        self._undo.pop_all()
        self._run.timings["commit"] += time.perf_counter() - t
        return self._run.result(
            self._plan,
            embedded=self._embedded,
            created=self._created,
            published=self._published,
            generation=generation,
        )

    def abort(self, *, refused: bool = False) -> None:
        self._held.close()
        self._undo.close()


def _embedding(embedder: Embedder | None) -> str | None:
    """What embedded the rows, for a model run on a chosen path: the path, and its quality."""
    path, quality = getattr(embedder, "path", None), getattr(embedder, "quality", None)
    if path is None:
        return None
    return f"{path} ({quality})" if quality is not None else str(path)
