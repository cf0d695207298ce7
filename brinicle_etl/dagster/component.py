"""A Dagster component: a collection declared in YAML, without Python.

``defs.yaml``::

    type: brinicle_etl.dagster.BrinicleCollectionComponent
    attributes:
      collection: shop/products
      source: ../../sample_data/products.csv   # relative to this file's folder
      primary_key: product_id
      semantic_fields: [title, description]
      on_conflict: update
      sync: true
      store: brinicle_store                     # relative to the project root
      daily_at: "06:00"                         # optional: a daily schedule
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import dagster as dg

from brinicle_etl.dagster.assets import BrinicleResource, collection_asset
from brinicle_etl.store import default_store_location
from brinicle_etl.store.remote import is_remote
from brinicle_etl.types import (
    ConflictPolicy,
    EmbedBackend,
    EmbedPrecision,
    Metric,
    VectorDType,
    WriteMode,
)

__all__ = ["BrinicleCollectionComponent", "store_resource"]

_resources: dict[str, tuple[str, BrinicleResource]] = {}
_lock = threading.Lock()


def store_resource(store: str | Path) -> tuple[str, BrinicleResource]:
    """The resource key and resource for a store directory, one object per directory.

    Dagster merges definitions only when a resource key maps to the same object, so every
    component and asset that writes to one store shares this one. The key reads as the
    store: ``brinicle_store`` for ``./brinicle_store``, ``brinicle_vectors`` for
    ``/data/vectors`` or ``s3://bucket/vectors`` (``_2``, ``_3``... if two stores share a name).
    """
    path = str(store).rstrip("/") if is_remote(str(store)) else os.path.abspath(store)
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.rsplit("/", 1)[-1]).strip("_") or "store"
    base = name if name.startswith("brinicle") else f"brinicle_{name}"
    with _lock:
        if path not in _resources:
            taken = {key for key, _resource in _resources.values()}
            key = next(k for k in (base, *(f"{base}_{i}" for i in range(2, 10_000))) if k not in taken)
            _resources[path] = (key, BrinicleResource(store=path))
        return _resources[path]


class BrinicleCollectionComponent(dg.Component, dg.Model, dg.Resolvable):
    """A brinicle-etl vector collection kept in sync with CSV or Parquet files.

    Materializing it ingests ``source`` into ``collection``: new rows are embedded and
    inserted, changed rows handled by ``on_conflict``, unchanged rows skipped. Its checks
    (primary key unique, one vector per row, dimension matching the model, sampled
    recall@10 above ``recall_threshold``) are blocking.
    """

    collection: str
    source: str
    store: str | None = None
    asset_key: list[str] | None = None
    mode: WriteMode = "upsert"
    on_conflict: ConflictPolicy = "error"
    sync: bool = False
    primary_key: str | None = None
    semantic_fields: list[str] | None = None
    template: str | None = None
    vector_col: str | None = None
    embedding_model: str | None = None
    embedding_backend: EmbedBackend | None = None
    embedding_precision: EmbedPrecision | None = None
    dtype: VectorDType | None = None
    metric: Metric = "cosine"
    group_name: str | None = None
    recall_threshold: float = 0.9
    daily_at: str | None = None

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        source = Path(self.source)
        if not source.is_absolute():
            source = Path(context.path) / source
        location = self.store or default_store_location()
        if not is_remote(location) and not Path(location).is_absolute():
            location = str(Path(context.project_root) / location)
        resource_key, resource = store_resource(location)
        asset = collection_asset(
            self.collection,
            source=source,
            key=self.asset_key,
            mode=self.mode,
            on_conflict=self.on_conflict,
            sync=self.sync,
            primary_key=self.primary_key,
            semantic_fields=self.semantic_fields,
            template=self.template,
            vector_col=self.vector_col,
            model=self.embedding_model,
            backend=self.embedding_backend,
            precision=self.embedding_precision,
            dtype=self.dtype,
            metric=self.metric,
            group_name=self.group_name,
            recall_threshold=self.recall_threshold,
            resource_key=resource_key,
        )
        schedules = []
        if self.daily_at is not None:
            hour, minute = (int(part) for part in self.daily_at.split(":"))
            job = dg.define_asset_job(f"refresh_{asset.key.to_python_identifier()}", selection=[asset.key])
            schedules.append(
                dg.ScheduleDefinition(
                    name=f"daily_{asset.key.to_python_identifier()}", job=job, cron_schedule=f"{minute} {hour} * * *"
                )
            )
        return dg.Definitions(assets=[asset], schedules=schedules, resources={resource_key: resource})
