"""The ingest contract, written once: what an ingest is asked to do (:class:`IngestOptions`) and
what it did (:class:`IngestResult`).

Every entry point (``ingest()``, the CLI, the Dagster asset and component, the CSV endpoint,
upsertion tasks) builds one :class:`IngestOptions` and hands it to :func:`run_ingest`; the
policies are checked here, once, with errors that list the valid values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypedDict, Unpack

from brinicle_etl.errors import ConfigError
from brinicle_etl.pipeline.plan import DuplicatePolicy
from brinicle_etl.pipeline.read import DEFAULT_BATCH_ROWS, Format
from brinicle_etl.pipeline.schema import TemplateSchema
from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.sharding import MAX_SHARDS, check_shards
from brinicle_etl.types import (
    ConflictOn,
    ConflictPolicy,
    EmbedBackend,
    EmbedPrecision,
    HnswParams,
    IndexTiming,
    Metric,
    VectorDType,
    VectorSource,
    Wait,
    WriteMode,
    check_choice,
    check_name,
)

__all__ = ["IngestArgs", "IngestOptions", "IngestResult", "NewCollection", "Progress", "SchemaSpec"]

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)`` with stage ``"read"``, ``"embed"`` or ``"write"``; total may be unknown."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SchemaSpec:
    """What the caller says about the table; whatever it leaves out is inferred.

    ``schema`` is a whole template schema (object, JSON or dict), ``template_name`` one saved
    in the store (saved after the ingest if new); the single fields override either."""

    schema: TemplateSchema | str | dict[str, Any] | None = None
    template_name: str | None = None
    primary_key: str | None = None
    semantic_fields: tuple[str, ...] | None = None
    template: str | None = None
    vector_col: str | None = None
    model: str | None = None
    backend: EmbedBackend | None = None
    precision: EmbedPrecision | None = None

    def __post_init__(self) -> None:
        if self.backend is not None:
            check_choice("backend", self.backend, EmbedBackend)
        if self.precision is not None:
            check_choice("precision", self.precision, EmbedPrecision)
        if self.template_name is not None:
            check_name(self.template_name, "template_name")  # saved after the write: refused before
        if self.semantic_fields is not None and not isinstance(self.semantic_fields, tuple):
            object.__setattr__(self, "semantic_fields", tuple(self.semantic_fields))

    def overrides(self) -> dict[str, Any]:
        """The single fields the caller gave, by name."""
        given = {
            "primary_key": self.primary_key,
            "semantic_fields": self.semantic_fields,
            "template": self.template,
            "vector_col": self.vector_col,
            "model": self.model,
            "backend": self.backend,
            "precision": self.precision,
        }
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True, kw_only=True, slots=True)
class NewCollection:
    """How a collection the ingest creates is shaped (an existing one keeps its own).

    ``dim`` is checked against the vectors; left out, the vectors tell it."""

    dim: int | None = None
    metric: Metric = "cosine"
    dtype: VectorDType | None = None
    """Left out: the metric's default (``types.default_dtype``)."""
    params: HnswParams | None = None
    delta_ratio: float = 0.10
    shards: int | None = None

    def __post_init__(self) -> None:
        if self.shards is not None:
            check_shards(self.shards)

    def config(self, dim: int) -> CollectionConfig:
        return CollectionConfig.of(
            None,
            {
                "dim": dim,
                "metric": self.metric,
                "dtype": self.dtype,
                "params": self.params,
                "delta_ratio": self.delta_ratio,
            },
        )


class IngestArgs(TypedDict, total=False):
    """An ingest's options as keyword arguments: what ``ingest(...)``, the Dagster asset and
    resource take. A name left out takes its default (see :func:`brinicle_etl.ingest`);
    :meth:`IngestOptions.of` turns them into options."""

    mode: WriteMode
    on_conflict: ConflictPolicy
    on_duplicate: DuplicatePolicy
    conflict_on: ConflictOn
    sync: bool
    index: IndexTiming
    schema: TemplateSchema | str | dict[str, Any] | None
    template_name: str | None
    primary_key: str | None
    semantic_fields: Sequence[str] | None
    template: str | None
    vector_col: str | None
    model: str | None
    backend: EmbedBackend | None
    precision: EmbedPrecision | None
    dim: int | None
    metric: Metric
    dtype: VectorDType | None
    params: HnswParams | None
    delta_ratio: float
    format: Format | None
    separator: str | None
    batch_rows: int
    wait: Wait
    meta: Mapping[str, Any] | None
    shards: int | None
    shard: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class IngestOptions:
    """Everything an ingest is asked to do, checked once (see :func:`brinicle_etl.ingest`)."""

    mode: WriteMode = "upsert"
    on_conflict: ConflictPolicy = "error"
    on_duplicate: DuplicatePolicy = "error"
    conflict_on: ConflictOn = "change"
    sync: bool = False
    index: IndexTiming = "now"
    schema: SchemaSpec = field(default_factory=SchemaSpec)
    new: NewCollection = field(default_factory=NewCollection)
    format: Format | None = None
    separator: str | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    wait: Wait = False
    meta: Mapping[str, Any] | None = None
    shard: int | None = None

    def __post_init__(self) -> None:
        if self.shard is not None and (type(self.shard) is not int or not 0 <= self.shard < MAX_SHARDS):
            raise ConfigError(f"shard must be a whole number from 0 to {MAX_SHARDS - 1}; got {self.shard!r}")
        check_choice("mode", self.mode, WriteMode)
        check_choice("on_conflict", self.on_conflict, ConflictPolicy)
        check_choice("on_duplicate", self.on_duplicate, DuplicatePolicy)
        check_choice("conflict_on", self.conflict_on, ConflictOn)
        check_choice("index", self.index, IndexTiming)

    @classmethod
    def of(cls, **args: Unpack[IngestArgs]) -> IngestOptions:
        """Options from keyword arguments; an unknown name is refused with the valid ones."""
        given: dict[str, Any] = dict(args)
        unknown = sorted(set(given) - _ARG_NAMES)
        if unknown:
            raise ConfigError(
                f"unknown ingest option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(_ARG_NAMES))}"
            )
        schema = {k: given.pop(k) for k in _SCHEMA_NAMES if k in given}
        if schema.get("semantic_fields") is not None:
            schema["semantic_fields"] = tuple(schema["semantic_fields"])
        new = {k: given.pop(k) for k in _NEW_NAMES if k in given}
        return cls(schema=SchemaSpec(**schema), new=NewCollection(**new), **given)


_ARG_NAMES = frozenset(IngestArgs.__optional_keys__)
_SCHEMA_NAMES = tuple(f.name for f in fields(SchemaSpec))
_NEW_NAMES = tuple(f.name for f in fields(NewCollection))
assert set(_SCHEMA_NAMES) | set(_NEW_NAMES) | {f.name for f in fields(IngestOptions)} >= _ARG_NAMES


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
    shard: int | None = None
    """The shard written, when one shard of a sharded collection was."""
    embedding: str | None = None
    """What embedded the rows, ``backend/precision/device`` (e.g. ``openvino/bf16/cpu``), with
    its measured quality against float32 when it is not float32; None when nothing was embedded."""
    shards: tuple[IngestResult, ...] = ()
    """Each shard's result, when every shard of a sharded collection was written (the counts
    above are their totals, ``generation`` the sum of the shards' generations, as the
    collection's own)."""

    @classmethod
    def combined(cls, results: list[IngestResult]) -> IngestResult:
        """The totals of every shard's result."""
        first = results[0]
        total = {
            name: sum(getattr(r, name) for r in results)
            for name in (
                "rows_added",
                "rows_inserted",
                "rows_updated",
                "rows_skipped",
                "rows_unchanged",
                "rows_deleted",
                "rows_embedded",
                "rows_read",
                "duplicates_dropped",
            )
        }
        timings = {k: max(r.timings.get(k, 0.0) for r in results) for k in first.timings}
        return replace(
            first,
            **total,
            mode="Create" if any(r.mode == "Create" for r in results) else "Append",
            conflicts=[c for r in results for c in r.conflicts],
            generation=sum(r.generation for r in results),
            published=any(r.published for r in results),
            timings=timings,
            shard=None,
            shards=tuple(results),
            embedding=next((r.embedding for r in results if r.embedding), None),
        )

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
            "embedding": self.embedding,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            **({"shard": self.shard} if self.shard is not None else {}),
            **({"shards": [r.to_dict() for r in self.shards]} if self.shards else {}),
        }
