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
from typing import Any, Unpack, cast

import dagster as dg
from pydantic import Field, field_validator

from brinicle_etl.checks import check_collection, check_shards_written
from brinicle_etl.errors import BrinicleError, ConflictError
from brinicle_etl.pipeline.options import IngestArgs, IngestOptions, IngestResult
from brinicle_etl.pipeline.run import run_ingest
from brinicle_etl.store import DEFAULT_STORE_DIR, ShardedCollection, Store
from brinicle_etl.types import HnswParams, Metric, VectorDType, check_choice

__all__ = ["BrinicleResource", "collection_asset", "materialization_metadata"]

_CONFLICTS_SHOWN = 20
PARTITION_DIMENSION = "partition"
SHARD_DIMENSION = "shard"
"""A sharded asset with partitions of its own is partitioned by both, under these names."""
_SHARDED_CHECK = {"all_shards": "Every shard of the collection has been written and holds live rows."}
_CHECK_DESCRIPTIONS = {
    "primary_key_unique": "Every live row has a distinct, present primary key.",
    "vector_count_matches_rows": "Every live row has exactly one vector (none, for collections without vectors).",
    "dimension_matches_model": "The collection's dimension is the one its embedding model produces.",
    "recall_at_10": "Sampled recall@10 of the HNSW index against exact search is above the threshold.",
}


class BrinicleResource(dg.ConfigurableResource):
    """Where collections live, and the defaults new ones are created with."""

    store: str = Field(
        default=DEFAULT_STORE_DIR,
        description="The store directory, or s3://bucket/prefix (credentials from the AWS_* variables).",
    )
    # A str: Dagster's config types take a Literal, but not an optional one.
    dtype: str | None = Field(
        default=None,
        description="Vector dtype of new collections: f32, f16, bf16 or i8 (left out: i8 for cosine, else bf16).",
    )
    metric: Metric = Field(default="cosine", description="Distance of new collections.")
    M: int = Field(default=16, description="HNSW connectivity of new collections.")
    ef_construction: int = Field(default=200, description="HNSW build beam width of new collections.")
    ef_search: int = Field(default=64, description="HNSW search beam width of new collections.")
    model: str | None = Field(default=None, description="Embedding model for text (default all-MiniLM-L6-v2).")
    wait_for_lock: bool = Field(default=True, description="Wait for another writer instead of failing.")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        """Refused when the resource is built (the definitions load), not when a run starts."""
        if value is not None:
            check_choice("dtype", value, VectorDType)
        return value

    def get_store(self) -> Store:
        return Store(self.store)

    def params(self) -> HnswParams:
        return HnswParams(M=self.M, ef_construction=self.ef_construction, ef_search=self.ef_search)

    def options(self, **args: Unpack[IngestArgs]) -> IngestOptions:
        """``args`` as options, with the resource's defaults for what they leave out (or give as None)."""
        given = cast(IngestArgs, {k: v for k, v in args.items() if v is not None})
        dtype = cast(VectorDType | None, self.dtype)  # checked by _known_dtype
        defaults: IngestArgs = {"dtype": dtype, "metric": self.metric, "params": self.params()}
        defaults["wait"] = self.wait_for_lock
        if self.model is not None and given.get("vector_col") is None:
            defaults["model"] = self.model
        return IngestOptions.of(**(defaults | given))

    def ingest(self, source: Any, collection: str, **args: Unpack[IngestArgs]) -> IngestResult:
        """``brinicle_etl.ingest`` into this store, with the resource's defaults for new collections."""
        return run_ingest(source, collection, store=self.get_store(), options=self.options(**args))


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
    if status.shards:
        metadata["shard"] = result.shard if result.shard is not None else "all"
        metadata["shards"] = dg.MetadataValue.json(
            [{"shard": i, "live_rows": p.live_count, "generation": p.generation} for i, p in enumerate(status.shards)]
        )
    if recall is not None:
        metadata["recall_at_10"] = dg.MetadataValue.float(round(recall, 4))
    if result.inferred:
        metadata["inferred"] = result.inferred
    if result.embedding:
        metadata["embedding"] = result.embedding
    return metadata


def _partition_and_shard(context: dg.AssetExecutionContext, sharded: bool) -> tuple[str | None, int | None]:
    """The user's partition key and the shard of this step (from a shard or multi partition)."""
    if not context.has_partition_key:
        return None, None
    key = context.partition_key
    if not sharded:
        return key, None
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[PARTITION_DIMENSION], int(dims[SHARD_DIMENSION])
    return None, int(key)


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
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str | None = None,
    description: str | None = None,
    recall_threshold: float = 0.9,
    recall_sample: int = 200,
    resource_key: str = "brinicle",
    **ingest: Unpack[IngestArgs],
) -> dg.AssetsDefinition:
    """An asset that keeps ``collection`` in sync with a source, with blocking quality checks.

    Give a ``source`` (file, glob or directory) or an ``upstream`` asset whose value is a
    polars (or Arrow, or pandas) frame. With ``partitions_def``, ``{partition}`` in
    ``collection`` or ``source`` is replaced by the partition key: one namespace per
    partition (``"shop/{partition}"``), or one file per partition (``source="{partition}"``).
    ``ingest`` takes :func:`brinicle_etl.ingest`'s options (``mode``, ``on_conflict``,
    ``sync``, ``primary_key``, ``semantic_fields``...); the resource supplies the defaults
    of new collections (``dtype``, ``metric``, HNSW params, ``model``) that they leave out.
    Wrong options fail when the definitions load, not when the asset runs.
    """
    options = IngestOptions.of(**ingest)  # checked now: a typo fails at load time
    if (source is None) == (upstream is None):
        raise dg.DagsterInvalidDefinitionError("collection_asset needs exactly one of source= or upstream=")
    if options.shard is not None:
        raise dg.DagsterInvalidDefinitionError("collection_asset: give shards=N; each shard is a partition of its own")
    asset_key = _asset_key(collection, key)
    sharded = (options.new.shards or 1) > 1
    descriptions = _CHECK_DESCRIPTIONS | (_SHARDED_CHECK if sharded else {})
    # all_shards only warns: until the last shard's step has run it cannot pass, and the
    # shards already written are good to use.
    check_specs = [
        dg.AssetCheckSpec(name, asset=asset_key, blocking=name not in _SHARDED_CHECK, description=text)
        for name, text in descriptions.items()
    ]
    if sharded:
        by_shard = dg.StaticPartitionsDefinition([str(i) for i in range(options.new.shards or 1)])
        partitions_def = (
            by_shard
            if partitions_def is None
            else dg.MultiPartitionsDefinition({PARTITION_DIMENSION: partitions_def, SHARD_DIMENSION: by_shard})
        )
    ins = {"source_frame": dg.AssetIn(key=_asset_key("", upstream))} if upstream is not None else {}

    def run(context: dg.AssetExecutionContext, frame: Any) -> Iterator[Any]:
        resource: BrinicleResource = getattr(context.resources, resource_key)
        partition, shard = _partition_and_shard(context, sharded)
        name = collection.replace("{partition}", partition) if partition else collection
        src = frame if frame is not None else str(source).replace("{partition}", partition or "")
        try:
            result = resource.ingest(src, name, **(ingest | {"shard": shard}))
        except ConflictError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={"conflict_count": len(exc.keys), "conflicts": [str(k) for k in exc.keys[:100]]},
            ) from exc
        except BrinicleError as exc:
            raise dg.Failure(description=str(exc)) from exc
        written = f"{name} shard {shard}" if shard is not None else name
        context.log.info(
            f"{written}: {result.rows_inserted} inserted, {result.rows_updated} updated, "
            f"{result.rows_skipped} skipped, {result.rows_unchanged} unchanged, {result.rows_deleted} deleted, "
            f"{result.rows_embedded} embedded"
        )
        store = resource.get_store()
        opened = store.open(name)
        # Each shard's step checks the shard it wrote; all_shards looks at the whole collection.
        checked = opened.shard(shard) if isinstance(opened, ShardedCollection) and shard is not None else opened
        outcomes = check_collection(
            checked,
            registry=store.models,
            recall_threshold=recall_threshold,
            recall_sample=recall_sample,
        )
        if sharded and isinstance(opened, ShardedCollection):  # declared only on a sharded asset
            outcomes.append(check_shards_written(opened))
        recall = next(o.metadata["recall_at_10"] for o in outcomes if o.name == "recall_at_10")
        yield dg.MaterializeResult(metadata=materialization_metadata(result, store, recall))
        for outcome in outcomes:
            yield dg.AssetCheckResult(
                check_name=outcome.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity.WARN if outcome.name in _SHARDED_CHECK else dg.AssetCheckSeverity.ERROR,
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
