"""The ingest pipeline, one module per stage, data flowing one way:

    read (polars) -> schema (infer or validate) -> plan (DuckDB) -> run (embed, write, publish)

``ingest()`` is the entry; the stages are its parts. Importing this package loads polars
and DuckDB, which ``import brinicle_etl`` leaves for the first ingest.
"""

from brinicle_etl.pipeline.run import IngestResult, Progress, ingest, model_registry

__all__ = ["IngestResult", "Progress", "ingest", "model_registry"]
