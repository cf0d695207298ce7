"""The store as a Dagster resource, and collections as assets with blocking checks.

``collection_asset(...)`` returns an asset that brings one collection up to date with a
source (a path or glob, or an upstream asset that produces a polars frame) and reports,
on every materialization, the row counts per outcome, the conflicts, the column schema,
the generation, the size on disk, the build and embedding seconds and a sampled
recall@10; its checks (primary key unique, one vector per row, dimension matching the
model, recall@10 above a threshold) are blocking, so a bad index stops what depends on it.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import dagster as dg
from pydantic import Field

from brinicle_etl.checks import check_collection
from brinicle_etl.errors import BrinicleError, ConflictError
from brinicle_etl.pipeline import IngestResult, ingest, model_registry
from brinicle_etl.pipeline.schema import TemplateSchema
from brinicle_etl.store import Store
from brinicle_etl.types import ConflictPolicy, HnswParams, Metric, VectorDType, WriteMode

__all__ = ["BrinicleResource", "collection_asset", "materialization_metadata"]

_CONFLICTS_SHOWN = 20
_CHECK_DESCRIPTIONS = {
    "primary_key_unique": "Every live row has a distinct, present primary key.",
    "vector_count_matches_rows": "Every live row has exactly one vector (none, for collections without vectors).",
    "dimension_matches_model": "The collection's dimension is the one its embedding model produces.",
    "recall_at_10": "Sampled recall@10 of the HNSW index against exact search is above the threshold.",
}


class BrinicleResource(dg.ConfigurableResource):
    """Where collections live, and the defaults new ones are created with."""

    store: str = Field(default="brinicle_store", description="The store directory.")
    dtype: str = Field(default="bf16", description="Vector dtype of new collections: f32, f16, bf16 or i8.")
    metric: str = Field(default="cosine", description="Distance of new collections: cosine, ip or l2sq.")
    M: int = Field(default=16, description="HNSW connectivity of new collections.")
    ef_construction: int = Field(default=200, description="HNSW build beam width of new collections.")
    ef_search: int = Field(default=64, description="HNSW search beam width of new collections.")
    model: str | None = Field(default=None, description="Embedding model for text (default all-MiniLM-L6-v2).")
    wait_for_lock: bool = Field(default=True, description="Wait for another writer instead of failing.")

    def get_store(self) -> Store:
        return Store(self.store)

    def params(self) -> HnswParams:
        return HnswParams(M=self.M, ef_construction=self.ef_construction, ef_search=self.ef_search)

    def ingest(self, source: Any, collection: str, **kwargs: Any) -> IngestResult:
        """``brinicle_etl.ingest`` into this store, with the resource's defaults for new collections."""
        defaults: dict[str, Any] = {
            "dtype": self.dtype,
            "metric": self.metric,
            "params": self.params(),
            "wait": self.wait_for_lock,
        }
        if self.model is not None and kwargs.get("vector_col") is None:
            defaults["model"] = self.model
        return ingest(source, collection, store=self.get_store(), **{**defaults, **kwargs})


def materialization_metadata(result: IngestResult, store: Store, recall: float | None) -> dict[str, Any]:
    """What the UI shows for one ingest: counts, conflicts, schema, generation, size, seconds, recall."""
    status = store.open(result.collection).status()
    conflicts = [str(c) for c in result.conflicts[:_CONFLICTS_SHOWN]]
    columns = [dg.TableColumn(name, kind) for name, kind in result.schema.columns.items()]
    if result.schema.vector_col:
        columns.append(dg.TableColumn(result.schema.vector_col, f"vector[{status.dim}]", description="not stored"))
    metadata: dict[str, Any] = {
        "collection": result.collection,
        "mode": result.mode,
        "rows_read": result.rows_read,
        "rows_inserted": result.rows_inserted,
        "rows_updated": result.rows_updated,
        "rows_skipped": result.rows_skipped,
        "rows_unchanged": result.rows_unchanged,
        "rows_deleted": result.rows_deleted,
        "rows_embedded": result.rows_embedded,
        "live_rows": status.live_count,
        "conflict_count": len(result.conflicts),
        "conflicts": dg.MetadataValue.json({"shown": conflicts, "total": len(result.conflicts)}),
        "dagster/column_schema": dg.TableSchema(columns=columns),
        "primary_key": result.schema.primary_key or "(content hash)",
        "vector_source": result.vector_source,
        "generation": status.generation,
        "size_on_disk_bytes": status.bytes_on_disk,
        "build_seconds": round(result.timings.get("write", 0.0) + result.timings.get("commit", 0.0), 3),
        "embedding_seconds": round(result.timings.get("embed", 0.0), 3),
        "total_seconds": round(result.timings.get("total", 0.0), 3),
        "needs_rebuild": status.needs_rebuild,
    }
    if recall is not None:
        metadata["recall_at_10"] = dg.MetadataValue.float(round(recall, 4))
    if result.inferred:
        metadata["inferred"] = result.inferred
    return metadata


def _asset_key(collection: str, key: str | Sequence[str] | dg.AssetKey | None) -> dg.AssetKey:
    if isinstance(key, dg.AssetKey):
        return key
    if isinstance(key, str):
        return dg.AssetKey(key.split("/"))
    if key is not None:
        return dg.AssetKey(list(key))
    return dg.AssetKey(["brinicle", *collection.replace("{partition}", "partitioned").split("/")])


def collection_asset(
    collection: str,
    *,
    source: str | Path | None = None,
    upstream: str | Sequence[str] | dg.AssetKey | None = None,
    key: str | Sequence[str] | dg.AssetKey | None = None,
    schema: TemplateSchema | dict[str, Any] | str | None = None,
    mode: WriteMode = "upsert",
    on_conflict: ConflictPolicy = "error",
    sync: bool = False,
    primary_key: str | None = None,
    semantic_fields: Sequence[str] | None = None,
    template: str | None = None,
    vector_col: str | None = None,
    model: str | None = None,
    dtype: VectorDType | None = None,
    metric: Metric | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str | None = None,
    description: str | None = None,
    recall_threshold: float = 0.9,
    recall_sample: int = 200,
    resource_key: str = "brinicle",
) -> dg.AssetsDefinition:
    """An asset that keeps ``collection`` in sync with a source, with blocking quality checks.

    Give a ``source`` (file, glob or directory) or an ``upstream`` asset whose value is a
    polars (or Arrow, or pandas) frame. With ``partitions_def``, ``{partition}`` in
    ``collection`` or ``source`` is replaced by the partition key: one namespace per
    partition (``"shop/{partition}"``), or one file per partition (``source="{partition}"``).
    """
    if (source is None) == (upstream is None):
        raise dg.DagsterInvalidDefinitionError("collection_asset needs exactly one of source= or upstream=")
    asset_key = _asset_key(collection, key)
    check_specs = [
        dg.AssetCheckSpec(name, asset=asset_key, blocking=True, description=text)
        for name, text in _CHECK_DESCRIPTIONS.items()
    ]
    options: dict[str, Any] = {
        "mode": mode,
        "on_conflict": on_conflict,
        "sync": sync,
        "schema": schema,
        "primary_key": primary_key,
        "semantic_fields": list(semantic_fields) if semantic_fields is not None else None,
        "template": template,
        "vector_col": vector_col,
        "model": model,
    }
    if dtype is not None:
        options["dtype"] = dtype
    if metric is not None:
        options["metric"] = metric
    ins = {"source_frame": dg.AssetIn(key=_asset_key("", upstream))} if upstream is not None else {}

    def run(context: dg.AssetExecutionContext, frame: Any) -> Iterator[Any]:
        resource: BrinicleResource = getattr(context.resources, resource_key)
        partition = context.partition_key if context.has_partition_key else None
        name = collection.replace("{partition}", partition) if partition else collection
        src = frame if frame is not None else str(source).replace("{partition}", partition or "")
        given = {k: v for k, v in options.items() if v is not None}
        try:
            result = resource.ingest(src, name, **given)
        except ConflictError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"conflict_count": len(exc.keys), "conflicts": [str(k) for k in exc.keys[:100]]},
            ) from exc
        except BrinicleError as exc:
            raise dg.Failure(description=str(exc)) from exc
        context.log.info(
            f"{name}: {result.rows_inserted} inserted, {result.rows_updated} updated, {result.rows_skipped} skipped, "
            f"{result.rows_unchanged} unchanged, {result.rows_deleted} deleted, {result.rows_embedded} embedded"
        )
        store = resource.get_store()
        outcomes = check_collection(
            store.open(name),
            registry=model_registry(store),
            recall_threshold=recall_threshold,
            recall_sample=recall_sample,
        )
        recall = next(o.metadata["recall_at_10"] for o in outcomes if o.name == "recall_at_10")
        yield dg.MaterializeResult(metadata=materialization_metadata(result, store, recall))
        for outcome in outcomes:
            yield dg.AssetCheckResult(
                check_name=outcome.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=outcome.description,
                metadata=outcome.metadata,
            )

    common: dict[str, Any] = {
        "key": asset_key,
        "check_specs": check_specs,
        "partitions_def": partitions_def,
        "group_name": group_name,
        "description": description or f"Vector collection {collection}, kept in sync by brinicle-etl.",
        "required_resource_keys": {resource_key},
        "kinds": {"brinicle"},
    }
    if upstream is not None:

        def from_upstream(context: dg.AssetExecutionContext, source_frame: Any) -> Iterator[Any]:
            yield from run(context, source_frame)

        return cast(dg.AssetsDefinition, dg.asset(ins=ins, **common)(from_upstream))

    def from_source(context: dg.AssetExecutionContext) -> Iterator[Any]:
        yield from run(context, None)

    return cast(dg.AssetsDefinition, dg.asset(**common)(from_source))
