"""The CSV ingest endpoint's behaviour as a library call: ``build_ingest_data``.

Create vs append by ``db_name/namespace``; ``dim`` must be 128-8192 for a new database and
equal the stored dimension on append; vectors are generated, precomputed (``vector_col``) or
none; primary-key conflicts follow ``on_conflict``, and as the spec says any stored key is
a conflict, identical rows included (``conflict_on="key"``: they are counted and listed,
never re-embedded). The endpoint's other fields mean, here:

- ``seed``: the HNSW ``rng_seed`` of a new collection (the order its vectors are inserted in);
- ``depth``: the graph's connectivity, ``M = 8 x depth`` (1-8; depth 2 is M=16);
- ``dtype_config``: the vector dtype, as ``"bf16"`` or JSON ``{"dtype": "f16", "metric": "cosine"}``.

They shape a new collection; an existing one keeps its settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Unpack

from brinicle_etl.compat.form import UploadFields
from brinicle_etl.compat.usage import UsageLedger
from brinicle_etl.embed import DEFAULT_MODEL
from brinicle_etl.errors import BrinicleError, ConfigError, InputError
from brinicle_etl.pipeline.options import IngestOptions, IngestResult
from brinicle_etl.pipeline.run import run_ingest
from brinicle_etl.pipeline.schema import TemplateSchema
from brinicle_etl.store import Store
from brinicle_etl.types import (
    DEFAULT_NAMESPACE,
    RNG_SEED,
    ConflictPolicy,
    HnswParams,
    Metric,
    VectorDType,
    Wait,
    check_choice,
    check_name,
    sanitize_index_part,
)

__all__ = ["MAX_DIM", "MIN_DIM", "build_ingest_data", "collection_name", "parse_dtype_config", "sanitize_identifier"]

MIN_DIM, MAX_DIM = 128, 8192
DEFAULT_DB_NAME = "fractal_db"
sanitize_identifier = sanitize_index_part


def collection_name(db_name: str | None, namespace: str | None) -> str:
    """The collection an upload goes to: ``db_name/namespace``, both sanitized (an empty or
    missing one takes the endpoint's default)."""
    db = sanitize_index_part(db_name or DEFAULT_DB_NAME, what="db_name")
    return f"{db}/{sanitize_index_part(namespace or DEFAULT_NAMESPACE, what='namespace')}"


def parse_dtype_config(value: str | None) -> tuple[VectorDType | None, Metric]:
    """The dtype (None: the metric's default) and metric of ``dtype_config``."""
    if value is None or not value.strip():
        return None, "cosine"
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"dtype_config is not valid JSON: {exc}") from exc
        unknown = set(data) - {"dtype", "metric"}
        if unknown:
            raise ConfigError(f"dtype_config has unknown key(s) {sorted(unknown)}; use 'dtype' and 'metric'")
        dtype = data.get("dtype")
        if dtype is not None:
            check_choice("dtype_config dtype", dtype, VectorDType)
        metric = check_choice("dtype_config metric", data.get("metric", "cosine"), Metric)
        return dtype, metric
    return check_choice("dtype_config", text, VectorDType), "cosine"


def _model_for(store: Store, dim: int, schema: TemplateSchema | None) -> str | None:
    """The embedding model for generated vectors: the template's, else one that makes ``dim``-d vectors."""
    if schema is not None and schema.model:
        return schema.model
    registry = store.models
    if registry.get(DEFAULT_MODEL).dim == dim:
        return DEFAULT_MODEL
    return next((spec.id for spec in registry.specs() if spec.dim == dim), None)


def build_ingest_data(
    store: Store,
    file: str | Path,
    *,
    owner: str | None = None,
    quota_bytes: int | None = None,
    wait: Wait = True,
    file_name: str | None = None,
    **form: Unpack[UploadFields],
) -> IngestResult:
    """Ingest a CSV file into ``db_name/namespace`` with the CSV endpoint's rules (see the module doc).

    ``seed`` and ``depth`` shape a new collection and are required for one; an existing
    collection keeps its own. ``file_name`` is what messages call the file (an upload's
    own name, not where the server spooled it)."""
    # Every argument is checked before anything is read or written.
    unknown = sorted(set(form) - set(UploadFields.__annotations__))
    if unknown:
        valid = ", ".join(UploadFields.__annotations__)
        raise ConfigError(f"unknown form field(s) {', '.join(map(repr, unknown))}; valid: {valid}")
    dim, seed, depth = form["dim"], form.get("seed"), form.get("depth")
    on_conflict = check_choice("on_conflict", form.get("on_conflict", "error"), ConflictPolicy)
    template_name = form.get("template_name")
    if template_name is not None:
        check_name(template_name, "template_name")
    collection = collection_name(form.get("db_name"), form.get("namespace"))
    if store.exists(collection):
        stored = store.open(collection).dim
        if dim != stored:
            raise InputError(f"dimension mismatch: {collection!r} holds {stored}-d vectors, the request says dim={dim}")
    else:
        if not MIN_DIM <= dim <= MAX_DIM:
            raise InputError(f"dim must be between {MIN_DIM} and {MAX_DIM} for a new database; got {dim}")
        missing = [name for name, value in (("seed", seed), ("depth", depth)) if value is None]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} must be given to create {collection!r}")
    if depth is not None and not 1 <= depth <= 8:
        raise ConfigError(f"depth must be between 1 and 8 (the graph's connectivity is 8 x depth); got {depth}")
    if seed is not None:
        RNG_SEED.check(seed, name="seed")
    dtype, metric = parse_dtype_config(form.get("dtype_config"))
    given_schema = form.get("template_schema")
    schema = None
    if isinstance(given_schema, str) and given_schema:
        schema = TemplateSchema.from_json(given_schema)
    elif given_schema:
        schema = TemplateSchema.from_dict(dict(given_schema))
    if schema is None and template_name is not None and store.template(template_name) is not None:
        schema = TemplateSchema.from_dict(store.template(template_name) or {})
    vector_col = form.get("vector_col")
    model = _model_for(store, dim, schema) if vector_col is None and not store.exists(collection) else None
    options = IngestOptions.of(
        format="csv",
        on_conflict=on_conflict,
        conflict_on="key",  # the endpoint's spec: any stored key collides
        schema=schema,
        template_name=template_name,
        vector_col=vector_col,
        model=model,
        dim=dim,
        dtype=dtype,
        metric=metric,
        # an existing collection keeps its own params: these shape a new one only
        params=HnswParams(M=8 * (depth or 2), rng_seed=seed or 0),
        wait=wait,
    )
    ledger = UsageLedger(store)
    if owner is not None and quota_bytes is not None:
        ledger.check(owner, quota_bytes=quota_bytes, incoming_bytes=Path(file).stat().st_size)
    try:
        result = run_ingest(file, collection, store=store, options=options)
    except BrinicleError as exc:
        if file_name is not None:  # the caller's name for the file, not where it was spooled
            exc.args = tuple(a.replace(str(file), file_name) if isinstance(a, str) else a for a in exc.args)
        raise
    ledger.record(collection, owner=owner)
    return result
