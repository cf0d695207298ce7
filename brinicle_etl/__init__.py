"""brinicle_etl: keep a vector search index in sync with tabular data.

``import brinicle_etl`` loads numpy, pyarrow and usearch only; the ingest pipeline
(polars, DuckDB), the embedding model (torch), Dagster and the HTTP server load when
first used.
"""

import importlib
from typing import TYPE_CHECKING, Any

from brinicle_etl.compat.engine import VectorEngine
from brinicle_etl.errors import (
    AlreadyExistsError,
    BrinicleError,
    BusyError,
    ConfigError,
    ConflictError,
    CorruptCollectionError,
    DimensionError,
    DiskFullError,
    EngineError,
    InputError,
    LockedError,
    MissingExtraError,
    NotFoundError,
    ObjectStoreError,
    PublishConflictError,
    QuotaExceededError,
    StateError,
    UnknownModelError,
)
from brinicle_etl.store import (
    Collection,
    CollectionConfig,
    CollectionStatus,
    DeleteResult,
    Store,
    WriteResult,
)
from brinicle_etl.types import ConflictPolicy, Hit, HnswParams, Metric, RowHit, VectorDType, VectorSource, WriteMode

if TYPE_CHECKING:
    from brinicle_etl.pipeline import IngestResult, ingest
    from brinicle_etl.pipeline.schema import TemplateSchema

__version__ = "0.1.0"

# The ingest pipeline brings polars and DuckDB (~40 MB and a noticeable import time);
# a process that only opens and searches collections never loads them.
_LAZY = {
    "ingest": "brinicle_etl.pipeline",
    "IngestResult": "brinicle_etl.pipeline",
    "TemplateSchema": "brinicle_etl.pipeline.schema",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'brinicle_etl' has no attribute {name!r}")


__all__ = [
    "AlreadyExistsError",
    "BrinicleError",
    "BusyError",
    "Collection",
    "CollectionConfig",
    "CollectionStatus",
    "ConfigError",
    "ConflictError",
    "ConflictPolicy",
    "CorruptCollectionError",
    "DeleteResult",
    "DimensionError",
    "DiskFullError",
    "EngineError",
    "Hit",
    "HnswParams",
    "IngestResult",
    "InputError",
    "LockedError",
    "Metric",
    "MissingExtraError",
    "NotFoundError",
    "ObjectStoreError",
    "PublishConflictError",
    "QuotaExceededError",
    "RowHit",
    "StateError",
    "Store",
    "TemplateSchema",
    "UnknownModelError",
    "VectorDType",
    "VectorEngine",
    "VectorSource",
    "WriteMode",
    "WriteResult",
    "ingest",
]
