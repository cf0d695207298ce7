"""The collection store: usearch segments, Parquet rows and an atomic manifest per collection."""

from brinicle_etl.store.collection import Collection, CollectionStatus
from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.shards import ShardedCollection, shard_of
from brinicle_etl.store.store import (
    DEFAULT_NAMESPACE,
    DEFAULT_STORE_DIR,
    Store,
    default_store_location,
    default_store_path,
    parse_name,
)
from brinicle_etl.store.writer import DeleteResult, WriteResult

AnyCollection = Collection | ShardedCollection
"""What :meth:`Store.open` returns: one collection, or one split into shards."""

__all__ = [
    "DEFAULT_NAMESPACE",
    "AnyCollection",
    "DEFAULT_STORE_DIR",
    "Collection",
    "CollectionConfig",
    "CollectionStatus",
    "DeleteResult",
    "ShardedCollection",
    "Store",
    "WriteResult",
    "default_store_location",
    "default_store_path",
    "parse_name",
    "shard_of",
]
