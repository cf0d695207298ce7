"""Dagster definitions for the bundled sample data: `dagster dev -m pipelines` (see the README)."""

from pipelines.definitions import defs

__all__ = ["defs"]
