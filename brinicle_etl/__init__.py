"""brinicle_etl: keep a vector search index in sync with tabular data.

``import brinicle_etl`` loads numpy, pyarrow and usearch only; the embedding model
(torch), Dagster and the HTTP server load when first used.
"""

from brinicle_etl.errors import (
    AlreadyExistsError,
    BrinicleError,
    ConfigError,
    ConflictError,
    CorruptCollectionError,
    DimensionError,
    EngineError,
    InputError,
    LockedError,
    MissingExtraError,
    NotFoundError,
    QuotaExceededError,
    StateError,
)
from brinicle_etl.pipeline import IngestResult, ingest
from brinicle_etl.schema import TemplateSchema
from brinicle_etl.store import (
    Collection,
    CollectionConfig,
    CollectionStatus,
    DeleteResult,
    Store,
    VectorEngine,
    WriteResult,
)
from brinicle_etl.types import ConflictPolicy, Hit, HnswParams, Metric, VectorDType, VectorSource, WriteMode

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "BrinicleError",
    "Collection",
    "CollectionConfig",
    "CollectionStatus",
    "ConfigError",
    "ConflictError",
    "ConflictPolicy",
    "CorruptCollectionError",
    "DeleteResult",
    "DimensionError",
    "EngineError",
    "Hit",
    "HnswParams",
    "IngestResult",
    "InputError",
    "LockedError",
    "Metric",
    "MissingExtraError",
    "NotFoundError",
    "QuotaExceededError",
    "StateError",
    "Store",
    "TemplateSchema",
    "VectorDType",
    "VectorEngine",
    "VectorSource",
    "WriteMode",
    "WriteResult",
    "ingest",
]
