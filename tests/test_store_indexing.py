"""The background job that links pending vectors: it runs after the deferred write returns,
the next writer of this process waits for it, the interpreter waits for it at exit, and a
job that fails or is killed leaves the vectors pending, still found, linked later."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from brinicle_etl import Collection, LockedError, Store
from brinicle_etl.store import collection as collection_module
from tests.conftest import REPO, clustered, deferred

DIM = 16


def ids(n: int, start: int = 0) -> list[str]:
    return [f"k{i}" for i in range(start, start + n)]


@pytest.fixture
def col(store: Store) -> Collection:
    c = store.create("db/ns", dim=DIM, dtype="f32")
    c.write(ids(300), clustered(300, DIM, seed=1), mode="build")
    return c


def test_the_job_links_pending_vectors_after_the_write_returns(col: Collection) -> None:
    x = clustered(50, DIM, seed=2)
    deferred(col, ids(50, start=1000), x)
    generation = col.generation
    assert not col.index_pending(wait=True)  # waited for the job, which left nothing
    status = col.status()
    assert (status.delta_count, status.pending_count, status.generation) == (50, 0, generation + 1)
    assert [col.search(q, 1)[0].id for q in x] == ids(50, start=1000)


@pytest.mark.parametrize("round_", range(5))
def test_the_next_writer_of_this_process_waits_for_the_job(col: Collection, store: Store, round_: int) -> None:
    # wait=False fails at once on a lock held by another writer: never on the job's
    x = clustered(40, DIM, seed=10 + round_)
    deferred(col, ids(20, start=1000), x[:20])
    col.write(ids(20, start=2000), x[20:], wait=False)
    other = Collection(col.directory)  # another object on the same directory: the same rule
    deferred(other, ids(10, start=3000), x[:10])
    other.delete(["k0"], wait=False)
    status = col.status()
    assert status.live_count == 349 and status.pending_count in (0, 10)


def test_the_interpreter_waits_for_the_job_at_exit(col: Collection) -> None:
    script = textwrap.dedent(
        f"""
        import numpy as np, pyarrow as pa
        from brinicle_etl import Collection
        col = Collection({str(col.directory)!r})
        x = np.random.default_rng(3).standard_normal((500, {DIM})).astype(np.float32)
        with col.transaction("upsert", defer_index=True) as tx:
            tx.add(pa.array([f"n{{i}}" for i in range(500)]), x)
            tx.commit()
        print(col.status().pending_count, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["500"]
    status = Collection(col.directory).status()
    assert (status.delta_count, status.pending_count, status.live_count) == (500, 0, 800)


def test_a_killed_job_leaves_the_vectors_pending_and_found(col: Collection) -> None:
    # The child holds the lock, so its job waits; SIGKILL then takes both.
    script = textwrap.dedent(
        f"""
        import time, numpy as np, pyarrow as pa
        from brinicle_etl import Collection
        col = Collection({str(col.directory)!r})
        col.hold_writer_lock()
        x = np.random.default_rng(4).standard_normal((30, {DIM})).astype(np.float32)
        np.save({str(col.directory.parent / "x.npy")!r}, x)
        with col.transaction("upsert", defer_index=True) as tx:
            tx.add(pa.array([f"n{{i}}" for i in range(30)]), x)
            tx.commit()
        print("written", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    x = np.load(col.directory.parent / "x.npy")
    reopened = Collection(col.directory)
    assert reopened.status().pending_count == 30
    assert [reopened.search(q, 1)[0].id for q in x] == [f"n{i}" for i in range(30)]
    assert reopened.index_pending()
    assert (reopened.status().delta_count, reopened.status().pending_count) == (30, 0)
    assert [reopened.search(q, 1)[0].id for q in x] == [f"n{i}" for i in range(30)]


def test_a_failed_job_is_logged_and_the_next_write_links_the_vectors(
    col: Collection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(snap: object) -> None:
        raise OSError("simulated failure")

    monkeypatch.setattr(collection_module, "index_pending", broken)
    x = clustered(20, DIM, seed=5)
    with caplog.at_level(logging.ERROR, logger="brinicle_etl.store"):
        deferred(col, ids(20, start=500), x)
        col.write(["probe"], x[:1], mode="upsert")  # waits for the job; links what it left
    assert any("indexing the pending vectors" in r.message for r in caplog.records)
    status = col.status()
    assert (status.delta_count, status.pending_count) == (21, 0)
    assert [col.search(q, 1)[0].id for q in x[1:]] == ids(19, start=501)


def _deferred_in_worker(directory: str) -> int:
    col = Collection(directory)
    x = np.random.default_rng(7).standard_normal((400, DIM)).astype(np.float32)
    with col.transaction("upsert", defer_index=True) as tx:
        tx.add(pa.array([f"w{i}" for i in range(400)]), x)
        tx.commit()
    return col.status().pending_count


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_multiprocessing_worker_waits_for_its_job_when_it_ends(col: Collection, method: str) -> None:
    # Workers end with os._exit, which runs no atexit hook: the job is a thread they join.
    import multiprocessing

    pool = multiprocessing.get_context(method).Pool(1)
    assert pool.apply(_deferred_in_worker, (str(col.directory),)) == 400
    pool.close()  # the worker ends as workers do (terminate() would kill it, and its job)
    pool.join()
    status = col.status()
    assert (status.delta_count, status.pending_count) == (400, 0)


def test_a_writer_waits_for_a_job_holding_the_lock_only_as_long_as_it_asked(col: Collection) -> None:
    from brinicle_etl.store import indexing
    from brinicle_etl.store.lock import lock_key, writer_lock

    key, x = lock_key(col.directory), clustered(1, DIM, seed=8)
    holding = threading.Event()

    def slow_job(started: object) -> None:
        with writer_lock(col.directory, wait=True):
            started()  # type: ignore[operator]
            holding.set()
            time.sleep(1.5)

    indexing.start(key, slow_job)
    assert holding.wait(10)
    began = time.monotonic()
    with pytest.raises(LockedError):
        col.write(["a"], x, wait=0.3)  # asked to wait 0.3 s: not the job's 1.5 s
    assert time.monotonic() - began < 1.0
    col.write(["a"], x, wait=False)  # the default lets this process's own job finish first
    assert time.monotonic() - began >= 1.2


def test_a_job_that_has_not_taken_the_lock_delays_a_writer_only_briefly(col: Collection) -> None:
    from brinicle_etl.store import indexing
    from brinicle_etl.store.lock import lock_key

    release = threading.Event()
    indexing.start(lock_key(col.directory), lambda started: release.wait(30))  # never takes the lock
    began = time.monotonic()
    col.write(["b"], clustered(1, DIM, seed=9), wait=False)
    assert time.monotonic() - began < 3.0
    release.set()


def test_the_job_is_found_however_the_directory_is_spelled(col: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(col.directory.parent)
    relative = Collection(col.directory.name)
    for round_ in range(3):
        x = clustered(30, DIM, seed=20 + round_)
        deferred(relative, ids(30, start=5000 + 100 * round_), x)
        col.write([f"r{round_}"], x[:1], wait=False)  # the absolute spelling waits for the same job
    assert col.status().live_count == 393
