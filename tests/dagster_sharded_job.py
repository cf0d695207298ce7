"""The sharded example's job, resolved, for ``dg.reconstructable`` (the multiprocess executor
re-creates it in each step's process)."""

import dagster as dg


def sharded_catalogue_job() -> dg.JobDefinition:
    from pipelines.defs.sharded import defs

    return defs.resolve_job_def("sharded_catalogue_job")
