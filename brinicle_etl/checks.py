"""Quality checks on a collection: what must hold before its index is trusted.

Each check returns a :class:`CheckOutcome`; the Dagster integration turns them into
(blocking) asset checks, and anything else can call :func:`check_collection` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from brinicle_etl.embed import ModelRegistry
from brinicle_etl.pipeline.schema import TemplateSchema
from brinicle_etl.store import AnyCollection, ShardedCollection
from brinicle_etl.store.rows import KEY

__all__ = ["CHECK_NAMES", "CheckOutcome", "check_collection", "check_shards_written"]

CHECK_NAMES = ("primary_key_unique", "vector_count_matches_rows", "dimension_matches_model", "recall_at_10")


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_collection(
    col: AnyCollection,
    *,
    registry: ModelRegistry | None = None,
    recall_threshold: float = 0.9,
    recall_sample: int = 200,
    seed: int = 0,
) -> list[CheckOutcome]:
    """Run every check on the collection's current generation."""
    schema_data = col.meta.get("schema")
    schema = TemplateSchema.from_dict(schema_data) if schema_data else None
    status = col.status()
    outcomes = []

    key_column = schema.primary_key if schema is not None and schema.primary_key else KEY
    values = col.rows([key_column] if key_column != KEY else []).column(key_column)
    distinct = pc.count_distinct(values).as_py()
    outcomes.append(
        CheckOutcome(
            "primary_key_unique",
            distinct == len(values) and values.null_count == 0,
            f"{len(values) - distinct} repeated and {values.null_count} missing value(s) of {key_column!r} "
            f"among {len(values)} live rows",
            {"rows": len(values), "distinct": distinct},
        )
    )

    vectors = status.main_count + status.delta_count + status.pending_count
    expects_vectors = schema is None or schema.vector_source != "none"
    outcomes.append(
        CheckOutcome(
            "vector_count_matches_rows",
            vectors == status.live_count if expects_vectors else vectors == 0,
            f"{vectors} live vectors for {status.live_count} live rows",
            {"vectors": vectors, "rows": status.live_count},
        )
    )

    model = schema.model if schema is not None else None
    if model is not None:
        model_dim = (registry or ModelRegistry()).get(model).dim
        outcomes.append(
            CheckOutcome(
                "dimension_matches_model",
                model_dim == status.dim,
                f"collection dimension {status.dim}, model {model!r} makes {model_dim}",
                {"collection_dim": status.dim, "model_dim": model_dim},
            )
        )
    else:
        outcomes.append(
            CheckOutcome(
                "dimension_matches_model",
                True,
                f"no model: vectors are precomputed ({status.dim}-d)",
                {"collection_dim": status.dim},
            )
        )

    recall = col.recall(sample=recall_sample, k=10, seed=seed)
    outcomes.append(
        CheckOutcome(
            "recall_at_10",
            recall >= recall_threshold,
            f"sampled recall@10 {recall:.3f} against exact search (threshold {recall_threshold})",
            {"recall_at_10": recall, "threshold": recall_threshold, "sample": recall_sample},
        )
    )
    return outcomes


def check_shards_written(col: ShardedCollection) -> CheckOutcome:
    """Whether every shard was written (has a schema) and holds live rows: a sharded build whose
    steps did not all run, or a key space too small for its shards, shows here."""
    figures = [{"shard": i, "written": "schema" in s.meta, "live_rows": len(s)} for i, s in enumerate(col.shards)]
    missing = [f["shard"] for f in figures if not f["written"] or not f["live_rows"]]
    return CheckOutcome(
        "all_shards",
        not missing,
        f"{len(col.shards) - len(missing)} of {len(col.shards)} shards written with live rows"
        + (f"; not yet: {missing}" if missing else ""),
        {"shards": figures, "live_rows": sum(int(f["live_rows"]) for f in figures)},
    )
