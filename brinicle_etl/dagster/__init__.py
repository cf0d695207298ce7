"""Dagster integration: the store as a resource, collections as assets with blocking checks,
a directory sensor and a YAML component. Needs the ``dagster`` extra."""

try:
    import dagster  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from brinicle_etl.errors import MissingExtraError

    raise MissingExtraError("brinicle_etl.dagster needs Dagster: pip install 'brinicle-etl[dagster]'") from exc

from brinicle_etl.dagster.assets import BrinicleResource, collection_asset, materialization_metadata
from brinicle_etl.dagster.component import BrinicleCollectionComponent, store_resource
from brinicle_etl.dagster.sensors import directory_sensor, scan_directory

__all__ = [
    "BrinicleCollectionComponent",
    "BrinicleResource",
    "collection_asset",
    "directory_sensor",
    "materialization_metadata",
    "scan_directory",
    "store_resource",
]
