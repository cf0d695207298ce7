"""Grouped single-vector ingests: synced together within ``sync_window``, never lost otherwise."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import Collection, ConfigError, DiskFullError, StateError, Store, VectorEngine
from brinicle_etl.store.grouped import GROUP_ROWS
from brinicle_etl.store.staging import StagingLog
from brinicle_etl.store.writer import Transaction
from tests.conftest import clustered

DIM = 8
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def held(store: Store) -> Collection:
    """A collection in an upsert session, its writer lock held as VectorEngine holds it."""
    col = store.create("g", dim=DIM, dtype="f32")
    col.write([f"old{i}" for i in range(50)], clustered(50, DIM, seed=1), mode="build")
    col.hold_writer_lock()
    col.init("upsert")
    return col


def logged(col: Collection) -> int:
    """Rows on disk in the session log (what a crash would keep)."""
    log = StagingLog.open(col.directory / "session.log")
    return 0 if log is None else log.count


def test_grouped_rows_reach_disk_on_flush_and_count_as_staged(held: Collection) -> None:
    x = clustered(10, DIM, seed=2)
    for i in range(10):
        held.ingest(f"n{i}", x[i], sync_window=60)
    assert logged(held) == 0
    assert held.status().staged_count == 10
    held.flush()
    assert logged(held) == 10
    held.finalize()
    np.testing.assert_allclose(held.vectors([f"n{i}" for i in range(10)]), x, rtol=1e-6)


def test_the_window_bounds_how_long_a_row_waits(held: Collection) -> None:
    held.ingest("late", clustered(1, DIM, seed=3)[0], sync_window=0.2)
    assert logged(held) == 0
    deadline = time.monotonic() + 10
    while logged(held) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert logged(held) == 1


def test_a_full_group_is_written_at_once(held: Collection) -> None:
    x = clustered(GROUP_ROWS + 5, DIM, seed=4)
    for i, v in enumerate(x):
        held.ingest(f"n{i}", v, sync_window=60)
    assert logged(held) == GROUP_ROWS + 1  # the call that found the group full wrote it, then itself
    assert held.status().staged_count == GROUP_ROWS + 5


def test_without_the_held_lock_every_call_is_durable(store: Store) -> None:
    col = store.create("free", dim=DIM, dtype="f32")
    col.init("build")
    col.ingest("a", clustered(1, DIM, seed=5)[0], sync_window=60)
    assert logged(col) == 1


def test_the_caller_may_reuse_its_array(held: Collection) -> None:
    v = clustered(1, DIM, seed=6)[0].copy()
    kept = v.copy()
    held.ingest("reused", v, sync_window=60)
    v[:] = 0
    held.finalize()
    np.testing.assert_allclose(held.vectors(["reused"])[0], kept, rtol=1e-6)


def test_calls_reach_the_log_in_the_order_made(held: Collection) -> None:
    x = clustered(4, DIM, seed=7)
    held.ingest("a", x[0], sync_window=60)
    held.ingest_batch(["b"], x[1:2])
    held.ingest("c", x[2], sync_window=60)
    held.ingest("d", x[3])  # no window: durable now, after what is grouped
    log = StagingLog.open(held.directory / "session.log")
    assert log is not None
    keys, vectors = log.read()
    assert keys.to_pylist() == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(vectors, x)


def test_abort_drops_grouped_rows_too(held: Collection) -> None:
    held.ingest_batch(["a"], clustered(1, DIM, seed=8))
    held.ingest("b", clustered(1, DIM, seed=9)[0], sync_window=60)
    assert held.abort() == 2
    assert held.status().staged_count == 0
    held.release_writer_lock()
    assert logged(held) == 0


def test_letting_the_lock_go_writes_the_group(held: Collection) -> None:
    held.ingest("kept", clustered(1, DIM, seed=10)[0], sync_window=60)
    held.release_writer_lock()
    assert logged(held) == 1


def full_disk_for(monkeypatch: pytest.MonkeyPatch, times: int) -> dict[str, int]:
    """The next ``times`` appends to a session log fail as on a full disk."""
    real = StagingLog.append
    failing = {"left": times}

    def append(self: StagingLog, block: bytes, vectors: np.ndarray) -> None:
        if failing["left"]:
            failing["left"] -= 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real(self, block, vectors)

    monkeypatch.setattr(StagingLog, "append", append)
    return failing


def test_a_failed_background_write_is_raised_by_the_next_call_and_loses_nothing(
    held: Collection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failing = full_disk_for(monkeypatch, 2)
    x = clustered(3, DIM, seed=11)
    held.ingest("a", x[0], sync_window=0.05)
    deadline = time.monotonic() + 10
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.01)
    assert failing["left"] == 1  # the background write hit the full disk...
    assert caplog.records[0].getMessage() == "writing 1 grouped ingest calls failed; the next call retries"
    with pytest.raises(DiskFullError) as err:
        held.ingest("b", x[1], sync_window=0.05)  # written in the caller's thread: fails again
    assert "(while writing 1 earlier ingest calls, grouped, to the session log)" in err.value.__notes__
    held.ingest("c", x[2], sync_window=0.05)  # space again: "a" first, then "c"
    held.finalize()
    assert sorted(k for k in held.keys() if not k.startswith("old")) == ["a", "c"]


def test_a_full_group_that_cannot_be_written_does_not_keep_the_failed_call(
    held: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = clustered(GROUP_ROWS + 1, DIM, seed=12)
    for i in range(GROUP_ROWS):
        held.ingest(f"n{i}", x[i], sync_window=60)
    full_disk_for(monkeypatch, 1)
    with pytest.raises(DiskFullError):
        held.ingest("last", x[-1], sync_window=60)
    held.ingest("last", x[-1], sync_window=60)  # the retry a user makes: not a repeated id
    held.finalize()
    assert len(held) == 50 + GROUP_ROWS + 1


def test_a_call_racing_finalize_is_refused_not_dropped(held: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread's ingest during finalize waits for it and is told the session is over."""
    held.ingest("a", clustered(1, DIM, seed=13)[0], sync_window=60)
    started = threading.Event()
    real = Transaction.prepare

    def slow_prepare(self: Transaction, **kwargs: object) -> object:
        started.set()
        time.sleep(0.5)
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Transaction, "prepare", slow_prepare)
    outcome: list[BaseException | None] = []

    def late() -> None:
        started.wait(10)
        try:
            held.ingest("late", clustered(1, DIM, seed=14)[0], sync_window=60)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=late)
    thread.start()
    held.finalize()
    thread.join(10)
    assert isinstance(outcome[0], StateError)
    assert str(outcome[0]) == "ingest: no pending ingest session on 'g/default'; call init() first"
    assert "a" in held and "late" not in held
    assert held.status().staged_count == 0


def test_dropping_the_collection_drops_the_group(held: Collection) -> None:
    held.ingest("a", clustered(1, DIM, seed=15)[0], sync_window=60)
    held.destroy()
    assert not held.directory.exists()


def test_a_sharded_engine_groups_per_shard_and_writes_on_close(tmp_path: Path) -> None:
    engine = VectorEngine(tmp_path / "e", DIM, n_shards=2, sync_window=60)
    engine.init("build")
    x = clustered(20, DIM, seed=16)
    for i, v in enumerate(x):
        engine.ingest(f"k{i}", v)
    shards = engine.collection.shards  # type: ignore[union-attr]
    assert [logged(s) for s in shards] == [0, 0]
    assert engine.collection.status().staged_count == 20
    engine.close()
    assert sum(logged(s) for s in shards) == 20
    reopened = VectorEngine(tmp_path / "e")
    reopened.finalize()
    assert reopened.collection.status().live_count == 20


def test_the_engine_groups_by_default_and_writes_at_exit(tmp_path: Path) -> None:
    script = (
        "import sys, numpy as np\n"
        "from brinicle_etl import VectorEngine\n"
        "e = VectorEngine(sys.argv[1], 8)\n"
        "e.init('build')\n"
        "for i in range(25):\n"
        "    e.ingest(f'k{i}', np.full(8, i + 1, np.float32))\n"
        "print(e.collection.status().staged_count, flush=True)\n"
        "from brinicle_etl.store.staging import StagingLog\n"
        "log = StagingLog.open(e.collection.directory / 'session.log')\n"
        "print(log.count, flush=True)\n"  # grouped: nothing synced yet
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "e")], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["25", "0"]
    assert logged(Collection(tmp_path / "e")) == 25  # written at interpreter exit


def test_sync_window_is_checked(store: Store, tmp_path: Path) -> None:
    col = store.create("c", dim=DIM)
    col.init("build")
    with pytest.raises(ConfigError) as err:
        col.ingest("a", np.ones(DIM), sync_window=0)
    assert str(err.value) == "sync_window must be seconds above 0 and at most 60; got 0"
    with pytest.raises(ValueError, match=r"^sync_window must be") as bad:
        VectorEngine(tmp_path / "e", DIM, sync_window=120)
    assert str(bad.value) == (
        "sync_window must be seconds above 0 and at most 60; got 120, or None to sync every ingest call"
    )


CHILD = """
import sys, time
import numpy as np
from brinicle_etl import VectorEngine
path, window = sys.argv[1], sys.argv[2]
engine = VectorEngine(path, 8, dtype="f32", sync_window=None if window == "none" else float(window))
engine.init("build")
rng = np.random.default_rng(0)
print("ready", flush=True)
i = 0
while True:
    engine.ingest(f"k{i}", rng.standard_normal(8).astype(np.float32))
    print(i, time.monotonic(), flush=True)  # acknowledged: the call returned
    i += 1
    time.sleep(0.001)  # slower than a group fills: only the window's sync keeps rows
"""


@pytest.mark.parametrize("window", ["0.3", "none"])
def test_sigkill_loses_only_the_last_window(tmp_path: Path, window: str) -> None:
    """Killed at random moments: every call acknowledged more than the window (plus the time a
    sync takes on a loaded machine) before the kill is on disk; with no window, every one."""
    rng = np.random.default_rng(17)
    slack = 0.4  # the sync itself, on a loaded machine
    for attempt in range(3):
        path = tmp_path / f"e{attempt}"
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), window], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(1.5, 2.5)))
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        # A line the kill cut short is left out: its call returned, at an unknown time.
        acked = [line.split() for line in proc.stdout.read().split("\n")[:-1]]
        proc.wait()
        acked_ids = [int(i) for i, _ in acked]
        assert len(acked_ids) > 100
        col = Collection(path)
        col.finalize()
        kept = {int(k[1:]) for k in col.keys()}
        if window == "none":
            assert set(acked_ids) <= kept
        else:
            must = {int(i) for i, t in acked if float(t) < killed - float(window) - slack}
            assert must, "the child ran long enough to have rows past the window"
            assert must <= kept
        # Whatever survived is a prefix of what was sent: no hole, no half record.
        assert kept == set(range(len(kept)))
