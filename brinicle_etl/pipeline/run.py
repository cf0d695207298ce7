"""``ingest()``: a table in, an up-to-date collection out; a re-run costs only what changed.

read -> schema -> plan -> embed -> index, in two passes over the source under the
collection's writer lock. The first pass types every row, hashes it and plans in
DuckDB (so duplicates and conflicts are refused before any embedding is paid for);
the second embeds what must be embedded and streams rows and vectors into one
transaction, published atomically at the end.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from brinicle_etl.embed import DEFAULT_MODEL, Embedder, ModelRegistry, embed_unique, parse_vectors, vector_digest
from brinicle_etl.errors import ConfigError, InputError
from brinicle_etl.pipeline.plan import DuplicatePolicy, Hasher, Plan, Planner
from brinicle_etl.pipeline.read import DEFAULT_BATCH_ROWS, Batch, Source, SourceLike, open_source
from brinicle_etl.pipeline.schema import Inferred, TemplateSchema, cast_frame, infer_schema, render_text
from brinicle_etl.store import Collection, Store
from brinicle_etl.types import (
    ConflictOn,
    ConflictPolicy,
    HnswParams,
    Metric,
    VectorDType,
    VectorSource,
    WriteMode,
    check_choice,
    check_name,
)

__all__ = ["IngestResult", "Progress", "ingest", "model_registry"]

log = logging.getLogger("brinicle_etl.ingest")

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)`` with stage ``"read"``, ``"embed"`` or ``"write"``; total may be unknown."""

HASH_COLUMN, TEXT_HASH_COLUMN = "_hash", "_text_hash"


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """What an ingest did. The first fields follow the CSV ingest endpoint's response."""

    mode: Literal["Create", "Append"]
    rows_added: int
    rows_inserted: int
    rows_updated: int
    rows_skipped: int
    rows_unchanged: int
    rows_deleted: int
    rows_embedded: int
    conflicts: list[Any]
    on_conflict: ConflictPolicy
    vector_source: VectorSource
    namespace: str
    collection: str
    write_mode: WriteMode
    rows_read: int
    duplicates_dropped: int
    generation: int
    schema: TemplateSchema
    inferred: str | None
    timings: dict[str, float] = field(default_factory=dict)
    status: str = "success"
    published: bool = True
    """False when the source changed nothing: no new generation was published."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "mode": self.mode,
            "rows_added": self.rows_added,
            "rows_inserted": self.rows_inserted,
            "rows_updated": self.rows_updated,
            "rows_skipped": self.rows_skipped,
            "rows_unchanged": self.rows_unchanged,
            "rows_deleted": self.rows_deleted,
            "rows_embedded": self.rows_embedded,
            "conflicts": self.conflicts,
            "on_conflict": self.on_conflict,
            "vector_source": self.vector_source,
            "namespace": self.namespace,
            "collection": self.collection,
            "write_mode": self.write_mode,
            "rows_read": self.rows_read,
            "duplicates_dropped": self.duplicates_dropped,
            "generation": self.generation,
            "published": self.published,
            "schema": self.schema.to_dict(),
            "inferred": self.inferred,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def model_registry(store: Store) -> ModelRegistry:
    """The store's model registry (``<store>/.brinicle/models.json`` plus the built-in models)."""
    return ModelRegistry(store.config_dir / "models.json")


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


def _resolve_schema(
    store: Store,
    existing: Collection | None,
    source: Source,
    mode: WriteMode,
    *,
    schema: TemplateSchema | str | dict[str, Any] | None,
    template_name: str | None,
    overrides: dict[str, Any],
    batch_rows: int,
) -> tuple[TemplateSchema, Inferred | None]:
    if existing is not None and mode != "build":
        stored = TemplateSchema.from_dict(existing.meta["schema"])
        for name, value in overrides.items():
            if value is None:
                continue
            want = tuple(value) if isinstance(value, list | tuple) else value
            if want != getattr(stored, name):
                raise ConfigError(
                    f"collection {existing.name!r} has {name}={getattr(stored, name)!r}, not {want!r}; "
                    "an existing collection keeps its schema (use mode='build' to replace it)"
                )
        return stored, None

    base: TemplateSchema | None = None
    if isinstance(schema, TemplateSchema):
        base = schema
    elif isinstance(schema, str):
        base = TemplateSchema.from_json(schema)
    elif isinstance(schema, dict):
        base = TemplateSchema.from_dict(schema)
    elif template_name is not None:
        saved = store.template(template_name)
        base = TemplateSchema.from_dict(saved) if saved is not None else None
    given = {k: v for k, v in overrides.items() if v is not None}
    if base is not None:
        # A given template schema is taken as it is; only column types are inferred.
        for name in ("primary_key", "semantic_fields", "template", "vector_col", "model"):
            if name not in given and getattr(base, name):
                given[name] = getattr(base, name)
    sample = next(source.batches(batch_rows=min(batch_rows, 10_000)), None)
    frame = sample.frame if sample is not None else pl.DataFrame(schema={c: pl.String for c in source.columns})
    if "semantic_fields" in given:
        given["semantic_fields"] = tuple(given["semantic_fields"])
    inferred_schema, inferred = infer_schema(
        frame, **given, infer_fields=base is None, untyped_text=source.format == "csv"
    )
    if base is not None and base.columns:
        inferred_schema = TemplateSchema.from_dict({**inferred_schema.to_dict(), "columns": base.columns})
    if inferred_schema.vector_source == "generated" and inferred_schema.model is None:
        inferred_schema = TemplateSchema.from_dict({**inferred_schema.to_dict(), "model": DEFAULT_MODEL})
    if inferred.notes:
        log.info("inferred from %s: %s", source.description, inferred)
    return inferred_schema, inferred


def ingest(
    source: SourceLike,
    collection: str = "default",
    *,
    store: Store | str | Path | None = None,
    mode: WriteMode = "upsert",
    on_conflict: ConflictPolicy = "error",
    on_duplicate: DuplicatePolicy = "error",
    conflict_on: ConflictOn = "change",
    sync: bool = False,
    schema: TemplateSchema | str | dict[str, Any] | None = None,
    template_name: str | None = None,
    primary_key: str | None = None,
    semantic_fields: list[str] | tuple[str, ...] | None = None,
    template: str | None = None,
    vector_col: str | None = None,
    model: str | None = None,
    embedder: Embedder | None = None,
    dim: int | None = None,
    metric: Metric = "cosine",
    dtype: VectorDType = "bf16",
    params: HnswParams | None = None,
    delta_ratio: float = 0.10,
    format: Literal["csv", "parquet"] | None = None,
    separator: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Progress | None = None,
    wait: bool | float = False,
    meta: Mapping[str, Any] | None = None,
) -> IngestResult:
    """Bring collection ``db/namespace`` up to date with ``source``.

    ``mode``: ``upsert`` (default) inserts new keys and resolves existing keys whose
    content changed by ``on_conflict`` (``error`` refuses the whole ingest and names
    them, ``update`` replaces them, ``skip`` keeps the stored rows); ``insert`` does
    the same but never replaces; ``build`` replaces the collection (and its schema)
    with the source. Rows identical to the stored ones are never conflicts and never
    re-embedded. ``sync=True`` also deletes keys the source no longer has.
    ``on_duplicate='keep_last'`` keeps the last of repeated keys instead of refusing.
    ``conflict_on='key'`` makes every stored key a conflict, identical rows included (they
    are counted as updated or skipped, and listed, but still not rewritten or re-embedded).
    ``meta`` entries are stored in the collection's metadata in the same atomic commit.
    ``separator``: a CSV source's delimiter; by default tab for ``.tsv``, else whichever of
    ``, TAB ; |`` the header line holds most of.
    """
    check_choice("mode", mode, WriteMode)
    check_choice("on_conflict", on_conflict, ConflictPolicy)
    check_choice("on_duplicate", on_duplicate, DuplicatePolicy)
    check_choice("conflict_on", conflict_on, ConflictOn)
    if template_name is not None:
        check_name(template_name, "template_name")  # saved after the write: refuse it before
    started = time.perf_counter()
    timings: dict[str, float] = {}
    st = store if isinstance(store, Store) else Store(store)
    name = st.canonical(collection)
    namespace = name.split("/")[1]
    src = open_source(source, format=format, separator=separator)

    existing = st.open(name) if st.exists(name) else None
    if existing is not None and "schema" not in existing.meta:
        raise ConfigError(
            f"collection {name!r} holds vectors written without a schema (VectorEngine or the HTTP API); "
            "ingest tables into a collection of their own"
        )
    overrides = {
        "primary_key": primary_key,
        "semantic_fields": semantic_fields,
        "template": template,
        "vector_col": vector_col,
        "model": embedder.model_id if embedder is not None else model,
    }
    sch, inferred = _resolve_schema(
        st, existing, src, mode, schema=schema, template_name=template_name, overrides=overrides, batch_rows=batch_rows
    )
    sch.check_source(list(src.columns), src.description)
    if sch.vector_source == "generated" and embedder is None:
        assert sch.model is not None
        embedder = model_registry(st).embedder(sch.model)
    vector_dim = _vector_dim(sch, embedder, existing, src, dim, batch_rows)
    if sch.vector_source == "precomputed" and sch.model is not None:
        # The model that made the vectors: text queries are embedded with it.
        model_dim = model_registry(st).get(sch.model).dim
        if model_dim != vector_dim:
            raise InputError(
                f"model {sch.model!r} makes {model_dim}-d vectors, but column {sch.vector_col!r} holds {vector_dim}-d"
            )
    timings["schema"] = time.perf_counter() - started

    created = existing is None
    # `is None`, not truthiness: a collection with no live rows is empty, not absent.
    col = (
        existing
        if existing is not None
        else st.create(
            name, dim=vector_dim, metric=metric, dtype=dtype, params=params, delta_ratio=delta_ratio, meta={}
        )
    )
    if existing is not None and existing.dim != vector_dim:
        raise InputError(
            f"dimension mismatch: collection {name!r} holds {existing.dim}-d vectors, the source gives {vector_dim}-d"
        )
    try:
        with col.transaction(mode, wait=wait, op="ingest") as tx:
            existing_rows = tx.snapshot.rows([HASH_COLUMN, TEXT_HASH_COLUMN]) if not created else None
            locations = _Locations()
            plan = _plan(
                src,
                sch,
                existing_rows,
                embedder,
                locations,
                timings,
                progress,
                batch_rows,
                mode=mode,
                on_conflict=on_conflict,
                on_duplicate=on_duplicate,
                conflict_on=conflict_on,
                sync=sync,
            )
            embedded = _write(src, sch, plan, tx, embedder, vector_dim, timings, progress, batch_rows)
            t = time.perf_counter()
            if len(plan.deletes) and mode != "build":
                tx.delete(plan.deletes)
            # Nothing to write, delete or record: publish nothing, the generation stays.
            published = created or mode == "build" or meta is not None or bool(plan.write.any() or len(plan.deletes))
            generation = tx.generation - 1
            if published:
                generation = tx.commit(meta={**col.meta, **(meta or {}), "schema": sch.to_dict()}).generation
            timings["commit"] = time.perf_counter() - t
    except BaseException:
        if created:
            col.destroy(wait=True)
            st.forget(name)
        raise
    if template_name is not None and st.template(template_name) is None:
        st.save_template(template_name, {**sch.to_dict(), "columns": {}})
    timings["total"] = time.perf_counter() - started
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
        on_conflict=on_conflict,
        vector_source=sch.vector_source,
        namespace=namespace,
        collection=name,
        write_mode=mode,
        rows_read=plan.rows,
        duplicates_dropped=plan.duplicates_dropped,
        generation=generation,
        published=published,
        schema=sch,
        inferred=str(inferred) if inferred is not None and inferred.notes else None,
        timings=timings,
    )
    log.info(
        "ingested %s into %s: %d inserted, %d updated, %d skipped, %d unchanged, %d deleted, %d embedded",
        src.description,
        name,
        result.rows_inserted,
        result.rows_updated,
        result.rows_skipped,
        result.rows_unchanged,
        result.rows_deleted,
        result.rows_embedded,
    )
    return result


def _vector_dim(
    sch: TemplateSchema,
    embedder: Embedder | None,
    existing: Collection | None,
    src: Source,
    dim: int | None,
    batch_rows: int,
) -> int:
    if sch.vector_source == "generated":
        assert embedder is not None
        found = embedder.dim
    elif existing is not None:
        found = existing.dim
    elif sch.vector_source == "precomputed":
        assert sch.vector_col is not None
        sample = next(src.batches(batch_rows=min(batch_rows, 1000)), None)
        if sample is None or sample.frame.is_empty():
            if dim is None:
                raise InputError(f"{src.description} has no rows to tell the vector dimension from; pass dim=")
            return dim
        found = parse_vectors(sample.frame[sch.vector_col].head(1), dim=None, where=sample.where).shape[1]
    else:
        return dim or (existing.dim if existing is not None else 1)
    if dim is not None and dim != found:
        if sch.vector_source == "generated":
            raise InputError(
                f"dimension mismatch: dim={dim} was given, but model {sch.model!r} makes {found}-d vectors; "
                "register a model of that dimension in the store, or use its dimension"
            )
        raise InputError(f"dimension mismatch: dim={dim} was given, the vectors have {found} values")
    return found


def _where_selected(batch: Batch, selected: np.ndarray) -> Callable[[int], str]:
    """Names row ``i`` of the selected rows of ``batch`` by its place in the source."""
    positions = np.flatnonzero(selected)
    return lambda i: batch.where(int(positions[i]))


def _keys(typed: pl.DataFrame, sch: TemplateSchema, row_hash: pa.Array, batch: Batch) -> pa.Array:
    if sch.primary_key is None:
        return row_hash
    values = typed[sch.primary_key]
    if values.null_count():
        i = int(values.is_null().arg_max())  # type: ignore[arg-type]
        raise InputError(f"{batch.where(i)}: primary key {sch.primary_key!r} is missing")
    return values.cast(pl.String).to_arrow().cast(pa.string())


def _hash_inputs(
    batch: Batch, typed: pl.DataFrame, sch: TemplateSchema, embedder: Embedder | None
) -> tuple[pl.DataFrame, list[str], pl.Series | None]:
    frame = typed
    columns = list(sch.columns)
    if sch.vector_col is not None:
        vectors = batch.frame[sch.vector_col]
        if vectors.dtype != pl.String:
            # Arrays of floats: hash their bytes rather than their printed form (and check them early).
            vectors = vector_digest(parse_vectors(vectors, dim=None, where=batch.where))
        frame = frame.with_columns(vectors.alias(sch.vector_col))
        columns.append(sch.vector_col)
    text = None
    if sch.vector_source == "generated":
        assert embedder is not None
        # The model is part of what was embedded: another model's vector is never carried over.
        text = (embedder.model_id + "\x1f") + render_text(typed, sch)
    return frame, columns, text


def _plan(
    src: Source,
    sch: TemplateSchema,
    existing_rows: pa.Table | None,
    embedder: Embedder | None,
    locations: _Locations,
    timings: dict[str, float],
    progress: Progress | None,
    batch_rows: int,
    *,
    mode: WriteMode,
    on_conflict: ConflictPolicy,
    on_duplicate: DuplicatePolicy,
    conflict_on: ConflictOn,
    sync: bool,
) -> Plan:
    t = time.perf_counter()
    empty = pa.table(
        {
            "_row_id": pa.array([], pa.uint64()),
            "_key": pa.array([], pa.string()),
            HASH_COLUMN: pa.array([], pa.string()),
            TEXT_HASH_COLUMN: pa.array([], pa.string()),
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
    try:
        read = 0
        for batch in src.batches(batch_rows=batch_rows):
            locations.add(batch)
            typed = cast_frame(batch.frame, sch, batch.where)
            frame, columns, text = _hash_inputs(batch, typed, sch, embedder)
            row_hash, text_hash = hasher(frame, columns, text)
            planner.add(batch.offset, _keys(typed, sch, row_hash, batch), row_hash, text_hash)
            read += len(batch.frame)
            if progress:
                progress("read", read, None)
        timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        plan = planner.finish(
            mode=mode, on_conflict=on_conflict, on_duplicate=on_duplicate, sync=sync, conflict_on=conflict_on
        )
        timings["plan"] = time.perf_counter() - t
        return plan
    finally:
        hasher.close()
        planner.close()


def _write(
    src: Source,
    sch: TemplateSchema,
    plan: Plan,
    tx: Any,
    embedder: Embedder | None,
    dim: int,
    timings: dict[str, float],
    progress: Progress | None,
    batch_rows: int,
) -> int:
    """Second pass: embed or parse what is written and stream it into the transaction."""
    t_write = time.perf_counter()
    embed_seconds = 0.0
    embedded = written = 0
    to_write = int(plan.write.sum())
    to_embed = int(plan.embed.sum()) if sch.vector_source == "generated" else 0
    hasher = Hasher()
    try:
        for batch in src.batches(batch_rows=batch_rows):
            n = len(batch.frame)
            window = slice(batch.offset, batch.offset + n)
            selected = plan.write[window]
            if not selected.any():
                continue
            raw = batch.frame.filter(pl.Series(selected))
            where = _where_selected(batch, selected)
            typed = cast_frame(raw, sch, where)
            frame, columns, text = _hash_inputs(Batch(raw, 0, batch.origin, 0), typed, sch, embedder)
            row_hash, text_hash = hasher(frame, columns, text)
            keys = plan.keys[window].filter(pa.array(selected))
            vectors: np.ndarray | None = None
            if sch.vector_source == "generated":
                assert embedder is not None and text is not None
                reuse = plan.reuse[window][selected]
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
            rows = rows.append_column(HASH_COLUMN, row_hash)
            rows = rows.append_column(
                TEXT_HASH_COLUMN, text_hash if text_hash is not None else pa.nulls(len(keys), pa.string())
            )
            tx.add(keys, vectors, rows, existing=plan.old[window][selected])
            written += len(keys)
            if progress:
                progress("write", written, to_write)
    finally:
        hasher.close()
    timings["embed"] = embed_seconds
    timings["write"] = time.perf_counter() - t_write - embed_seconds
    return embedded
