"""SIGKILL a writer at random instants; the collection must open and equal the old or the new state."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import Collection
from tests.conftest import REPO, clustered

DIM = 32
KILLS_PER_OP = 21

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from brinicle_etl import Collection

    directory, op = sys.argv[1], sys.argv[2]
    col = Collection(directory)
    rng = np.random.default_rng(5)
    upsert_keys = [f"k{i}" for i in range(0, 3000, 2)] + [f"new{i}" for i in range(1500)]
    upsert_vecs = rng.standard_normal((len(upsert_keys), col.dim)).astype(np.float32)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    if op == "finalize":
        col.finalize()
    elif op == "upsert":
        col.write(upsert_keys, upsert_vecs, mode="upsert")
    elif op == "delete":
        col.delete([f"k{i}" for i in range(1, 4000, 3)])
    elif op == "rebuild":
        col.rebuild()
    print("done", time.perf_counter() - started, flush=True)
    """
)


def snapshot_state(directory: Path) -> tuple[int, dict[str, bytes]]:
    col = Collection(directory)
    keys = col.keys()
    vectors = col.vectors(keys) if keys else np.empty((0, DIM), np.float32)
    return col.generation, {k: v.tobytes() for k, v in zip(keys, vectors, strict=True)}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection with a main, a delta, tombstones and a pending upsert session."""
    directory = tmp_path_factory.mktemp("crash") / "base"
    col = Collection.create(directory, dim=DIM, dtype="f32")
    x = clustered(4500, DIM, seed=2)
    col.write([f"k{i}" for i in range(4000)], x[:4000], mode="build")
    col.write([f"d{i}" for i in range(300)], x[4000:4300], mode="insert")
    col.delete([f"k{i}" for i in range(0, 4000, 40)])
    col.init("upsert")
    col.ingest_batch(
        [f"k{i}" for i in range(1, 2000, 2)] + [f"s{i}" for i in range(1000)], clustered(2000, DIM, seed=3)
    )
    return directory


def run_child(directory: Path, op: str, kill_after: float | None) -> float | None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), op],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if kill_after is None:
        line = proc.stdout.readline()
        assert proc.wait() == 0
        assert line.startswith("done")
        return time.perf_counter() - started
    time.sleep(kill_after)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


@pytest.mark.parametrize("op", ["finalize", "upsert", "delete", "rebuild"])
def test_sigkill_leaves_old_or_new_state(base: Path, tmp_path: Path, op: str) -> None:
    old = snapshot_state(base)
    calibration = tmp_path / "calibrate"
    shutil.copytree(base, calibration)
    duration = run_child(calibration, op, None)
    assert duration is not None
    new = snapshot_state(calibration)
    assert new[0] > old[0]
    if op != "rebuild":
        assert new[1] != old[1]

    rng = np.random.default_rng(hash(op) % 2**32)
    outcomes = []
    for attempt in range(KILLS_PER_OP):
        work = tmp_path / f"kill{attempt}"
        shutil.copytree(base, work)
        run_child(work, op, float(rng.uniform(0, 1.6 * duration)))
        generation, data = snapshot_state(work)
        if generation == old[0]:
            assert data == old[1], f"kill {attempt}: old generation with different data"
            if op == "finalize":
                assert Collection(work).status().staged_count == 2000, "acknowledged vectors were lost"
            outcomes.append("old")
        else:
            assert (generation, data) == new, f"kill {attempt}: neither the old nor the new state"
            outcomes.append("new")
        # The next write succeeds and sweeps whatever the killed writer left behind.
        col = Collection(work)
        col.write(["after"], np.ones((1, DIM), np.float32), mode="upsert")
        manifest_files = set(col._snapshot().manifest.files())
        leftovers = [
            p.name
            for p in work.iterdir()
            if p.name.startswith(("main-", "delta-", "rows-", "tomb-")) and p.name not in manifest_files
        ]
        assert leftovers == []
        shutil.rmtree(work)
    assert "old" in outcomes and "new" in outcomes, outcomes
