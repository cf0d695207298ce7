"""The product catalogue as a sharded collection: one Dagster step per shard, each embedding and
indexing only the products whose key belongs to its shard, all shards searched as one.

Every shard is a partition of ``catalogue_sharded``; a backfill of all partitions launches one
run per shard, and the executor decides where each runs: here the multiprocess executor (a
process per step on this machine). On Kubernetes, swap the one line marked below for
``executor_def=k8s_job_executor`` (``from dagster_k8s import k8s_job_executor``) and each shard
runs in a pod of its own; with a store on ``s3://`` the shards meet in the bucket.
"""

import os
from pathlib import Path

import dagster as dg

from brinicle_etl.dagster import collection_asset, store_resource

REPO = Path(__file__).resolve().parents[2]
STORE = Path(os.environ.get("BRINICLE_STORE") or REPO / "brinicle_store")
SHARDS = 4

resource_key, brinicle = store_resource(STORE)

catalogue_sharded = collection_asset(
    "shop/products_sharded",
    source=REPO / "sample_data" / "products.csv",
    key=["catalogue_sharded"],
    primary_key="product_id",
    semantic_fields=["title", "description"],
    on_conflict="update",
    sync=True,
    shards=SHARDS,
    group_name="sharded",
    resource_key=resource_key,
)

sharded_catalogue_job = dg.define_asset_job(
    "sharded_catalogue_job",
    selection=[catalogue_sharded],
    executor_def=dg.multiprocess_executor,  # Kubernetes: executor_def=k8s_job_executor
)

defs = dg.Definitions(assets=[catalogue_sharded], jobs=[sharded_catalogue_job], resources={resource_key: brinicle})
