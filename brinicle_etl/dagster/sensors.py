"""A sensor that watches a directory and asks for a run per new or changed file."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

__all__ = ["directory_sensor", "scan_directory"]


def scan_directory(directory: str | Path, pattern: str) -> dict[str, list[int]]:
    """Files matching ``pattern`` directly in ``directory``: path -> [mtime_ns, size]."""
    found: dict[str, list[int]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.is_file() and fnmatch.fnmatch(entry.name, pattern):
            st = entry.stat()
            found[os.path.abspath(entry.path)] = [st.st_mtime_ns, st.st_size]
    return found


def directory_sensor(
    directory: str | Path,
    *,
    job: Any = None,
    asset_selection: Any = None,
    pattern: str = "*.csv",
    partitions_def: dg.DynamicPartitionsDefinition | None = None,
    name: str | None = None,
    minimum_interval_seconds: int = 30,
    running: bool = False,
) -> dg.SensorDefinition:
    """Request a run for each file in ``directory`` that is new or changed since the last tick.

    A file counts as changed when its modification time or size changes; the cursor
    remembers what was seen. With a dynamic ``partitions_def``, each file is also added
    as a partition and its run targets that partition (``source="{partition}"``).
    ``running=True`` starts it running when the code location loads (Dagster's default,
    as for every sensor, is stopped until someone turns it on).
    """
    sensor_name = name or f"watch_{Path(directory).name or 'files'}"

    @dg.sensor(
        name=sensor_name,
        job=job,
        asset_selection=asset_selection,
        minimum_interval_seconds=minimum_interval_seconds,
        description=f"Runs for new or changed {pattern} files in {directory}.",
        default_status=dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED,
    )
    def watch(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        seen: dict[str, list[int]] = json.loads(context.cursor) if context.cursor else {}
        now = scan_directory(directory, pattern)
        changed = sorted(path for path, signature in now.items() if seen.get(path) != signature)
        if not changed:
            context.update_cursor(json.dumps(now))
            return dg.SkipReason(f"no new or changed {pattern} files in {directory}")
        requests = []
        for path in changed:
            mtime, size = now[path]
            requests.append(
                dg.RunRequest(
                    run_key=f"{path}:{mtime}:{size}",
                    partition_key=path if partitions_def is not None else None,
                    tags={"brinicle/file": path},
                )
            )
        dynamic = []
        if partitions_def is not None:
            known = set(partitions_def.get_partition_keys(dynamic_partitions_store=context.instance))
            new = [p for p in changed if p not in known]
            if new:
                dynamic.append(partitions_def.build_add_request(new))
        return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=dynamic, cursor=json.dumps(now))

    return watch
