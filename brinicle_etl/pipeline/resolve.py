"""Which schema an ingest runs with, and the dimension of its vectors.

An existing collection keeps its schema (only what runs its model may change); a new one
takes a given or saved template, or what :func:`~brinicle_etl.pipeline.schema.infer_schema`
finds in the source.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import polars as pl

from brinicle_etl.embed import DEFAULT_MODEL, Embedder, parse_vectors
from brinicle_etl.errors import ConfigError, InputError
from brinicle_etl.pipeline.options import IngestOptions
from brinicle_etl.pipeline.read import Source
from brinicle_etl.pipeline.schema import Inferred, TemplateSchema, infer_schema
from brinicle_etl.store import Collection, Store
from brinicle_etl.store.shards import ShardedCollection

__all__ = ["resolve_schema", "same_table", "vector_dim"]

log = logging.getLogger("brinicle_etl.ingest")


def resolve_schema(
    store: Store,
    existing: Collection | ShardedCollection | None,
    source: Source,
    options: IngestOptions,
    model: str | None,
) -> tuple[TemplateSchema, Inferred | None]:
    """The schema an ingest runs with, and what was inferred (None when nothing was): an
    existing collection's own (what runs its model may change, nothing else), else a given
    or saved template's with column types inferred, else one inferred from the source."""
    spec = options.schema
    overrides = spec.overrides() | ({"model": model} if model is not None else {})
    # What runs the model may change at any ingest: it never changes what is embedded.
    runtime: dict[str, Any] = {name: overrides.pop(name) for name in ("backend", "precision") if name in overrides}
    mode, batch_rows, schema, template_name = options.mode, options.batch_rows, spec.schema, spec.template_name
    if existing is not None and mode != "build":
        stored = TemplateSchema.from_dict(existing.meta["schema"])
        precision = runtime.get("precision", stored.precision)
        if precision != stored.precision and "int8" in (precision, stored.precision):
            raise ConfigError(
                f"collection {existing.name!r}: changing precision to or from 'int8' re-embeds every row "
                "(int8 vectors do not agree with the others within the quality gate); ingest with mode='build'"
            )
        for name, value in overrides.items():
            want = tuple(value) if isinstance(value, list | tuple) else value
            if want != getattr(stored, name):
                raise ConfigError(
                    f"collection {existing.name!r} has {name}={getattr(stored, name)!r}, not {want!r}; "
                    "an existing collection keeps its schema (use mode='build' to replace it)"
                )
        return dataclasses.replace(stored, **runtime), None

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
    given = dict(overrides)
    if base is not None:
        # A given template schema is taken as it is; only column types are inferred.
        for name in ("primary_key", "semantic_fields", "template", "vector_col", "model"):
            if name not in given and getattr(base, name):
                given[name] = getattr(base, name)
        runtime = {"backend": base.backend, "precision": base.precision, **runtime}
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
    inferred_schema = dataclasses.replace(inferred_schema, **runtime)
    if inferred.notes:
        log.info("inferred from %s: %s", source.description, inferred)
    return inferred_schema, inferred


def same_table(a: TemplateSchema, b: TemplateSchema) -> bool:
    """Whether two schemas map a table alike (what runs the model aside)."""
    return dataclasses.replace(a, backend=None, precision=None) == dataclasses.replace(b, backend=None, precision=None)


def vector_dim(
    sch: TemplateSchema,
    embedder: Embedder | None,
    existing: Collection | None,
    src: Source,
    dim: int | None,
    batch_rows: int,
) -> int:
    """The dimension of the vectors a run writes: its model's, the collection's, the source's
    precomputed vectors' (checked against ``dim`` when given)."""
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
