"""The package's top level: what `import brinicle_etl` costs and what it exposes."""

from __future__ import annotations

import subprocess
import sys

import pytest

import brinicle_etl


def test_import_loads_no_heavy_dependency() -> None:
    heavy = ("polars", "duckdb", "torch", "sentence_transformers", "dagster", "fastapi", "uvicorn")
    code = f"import sys, brinicle_etl; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pipeline_names_resolve_on_first_use() -> None:
    from brinicle_etl.pipeline import IngestResult, ingest
    from brinicle_etl.pipeline.schema import TemplateSchema

    assert (brinicle_etl.ingest, brinicle_etl.IngestResult, brinicle_etl.TemplateSchema) == (
        ingest,
        IngestResult,
        TemplateSchema,
    )
    assert set(brinicle_etl.__all__) <= set(dir(brinicle_etl)) | {"ingest", "IngestResult", "TemplateSchema"}
    with pytest.raises(AttributeError, match="module 'brinicle_etl' has no attribute 'nope'"):
        _ = brinicle_etl.nope  # type: ignore[attr-defined]
