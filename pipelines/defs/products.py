"""The sample product catalogue: export -> collection (with blocking checks) -> smoke test,
a per-category partitioned copy, a sensor for files dropped into an inbox, and a daily schedule.

Paths are relative to the repository; set ``BRINICLE_STORE`` to write elsewhere and
``BRINICLE_INBOX`` to watch another directory.
"""

import os
from pathlib import Path

import dagster as dg
import polars as pl

from brinicle_etl.dagster import BrinicleResource, collection_asset, directory_sensor, store_resource
from brinicle_etl.search import search

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data"
STORE = Path(os.environ.get("BRINICLE_STORE") or REPO / "brinicle_store")
INBOX = Path(os.environ.get("BRINICLE_INBOX") or SAMPLE / "inbox")
CATEGORIES = ["apparel", "camping", "electronics", "footwear", "kitchen", "packs"]

resource_key, brinicle = store_resource(STORE)


class ExportConfig(dg.Config):
    """Which export to load: day 1 by default; pick products_day2.csv in the launchpad for day 2."""

    path: str = str(SAMPLE / "products.csv")


@dg.asset(group_name="catalogue", kinds={"polars"})
def products_export(config: ExportConfig) -> pl.DataFrame:
    """The shop's nightly product export, as read from disk."""
    return pl.read_csv(config.path)


catalogue = collection_asset(
    "shop/products",
    upstream="products_export",
    key=["catalogue"],
    primary_key="product_id",
    semantic_fields=["title", "description"],
    on_conflict="update",
    sync=True,
    group_name="catalogue",
    resource_key=resource_key,
)


@dg.asset(deps=[catalogue], group_name="catalogue", required_resource_keys={resource_key})
def catalogue_smoke_test(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Known queries must find what a shopper expects; runs only when the catalogue's checks pass."""
    resource: BrinicleResource = getattr(context.resources, resource_key)
    expectations = {
        "waterproof boots for hiking in the rain": "Waterproof Hiking Boots",
        "burr grinder for coffee beans": "Coffee Grinder",
        "light to wear on my head at night": "Headlamp",
    }
    found = {}
    for query, expected in expectations.items():
        hits = search("shop/products", query, 3, store=resource.get_store())
        titles = [str(h.row["title"]) for h in hits]
        found[query] = titles
        if not any(expected in t for t in titles):
            raise dg.Failure(f"{query!r} did not find {expected!r} in its top 3: {titles}")
    return dg.MaterializeResult(metadata={"top_titles": dg.MetadataValue.json(found)})


category_partitions = dg.StaticPartitionsDefinition(CATEGORIES)


@dg.asset(partitions_def=category_partitions, group_name="by_category", kinds={"polars"})
def category_export(context: dg.AssetExecutionContext) -> pl.DataFrame:
    """One category of the day-1 export."""
    return pl.read_csv(SAMPLE / "products.csv").filter(pl.col("category") == context.partition_key)


catalogue_by_category = collection_asset(
    "shop_by_category/{partition}",
    upstream="category_export",
    key=["catalogue_by_category"],
    primary_key="product_id",
    semantic_fields=["title", "description"],
    on_conflict="update",
    sync=True,
    partitions_def=category_partitions,
    group_name="by_category",
    resource_key=resource_key,
)

inbox_files = dg.DynamicPartitionsDefinition(name="inbox_files")

inbox = collection_asset(
    "shop/inbox",
    source="{partition}",
    key=["inbox"],
    primary_key="product_id",
    semantic_fields=["title", "description"],
    on_conflict="update",
    partitions_def=inbox_files,
    group_name="inbox",
    resource_key=resource_key,
)

catalogue_job = dg.define_asset_job(
    "catalogue_job", selection=dg.AssetSelection.assets(products_export, catalogue, catalogue_smoke_test)
)
inbox_job = dg.define_asset_job("inbox_job", selection=dg.AssetSelection.assets(inbox))

defs = dg.Definitions(
    assets=[products_export, catalogue, catalogue_smoke_test, category_export, catalogue_by_category, inbox],
    jobs=[catalogue_job, inbox_job],
    schedules=[dg.ScheduleDefinition(name="daily_catalogue", job=catalogue_job, cron_schedule="0 6 * * *")],
    # Dropping a file in the inbox is the whole interface: the sensor runs from the start. The
    # schedule stays off until turned on, so opening the UI never starts a nightly job by itself.
    sensors=[
        directory_sensor(
            INBOX, job=inbox_job, pattern="*.csv", partitions_def=inbox_files, name="inbox_sensor", running=True
        )
    ],
    resources={resource_key: brinicle},
)
