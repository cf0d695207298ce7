"""Sharded collections: stable key routing, fan-out search equal to exact search, shards written apart."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from brinicle_etl import AlreadyExistsError, ConfigError, LockedError, StateError, Store, ingest
from brinicle_etl.store.shards import ShardedCollection, ShardedPlace, shard_of, shard_row_base
from tests.conftest import REPO, clustered, exact_knn

DIM = 16


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def keys_of(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_shard_of_is_the_documented_function_of_the_key_bytes() -> None:
    keys = ["", "a", "sku-1207", "ключ", "🦆", "x" * 1000]
    expected = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") % 7 for k in keys]
    assert shard_of(keys, 7).tolist() == expected
    # Fixed values: a change of the function would move every stored key to another shard.
    assert shard_of(["a", "b", "c", "sku-1207"], 8).tolist() == [0, 4, 7, 0]
    assert shard_of(["a", "b", "c", "sku-1207"], 1).tolist() == [0, 0, 0, 0]


def test_shard_of_is_the_same_in_another_process_with_another_hash_seed() -> None:
    keys = keys_of(200)
    script = (
        "import json, sys\n"
        "from brinicle_etl.store.shards import shard_of\n"
        "print(json.dumps(shard_of(json.loads(sys.argv[1]), 5).tolist()))\n"
    )
    for seed in ("0", "12345"):
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(keys)],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert json.loads(done.stdout) == shard_of(keys, 5).tolist()


def test_create_open_list_and_drop(store: Store) -> None:
    col = store.create("db/sharded", dim=DIM, shards=4)
    assert isinstance(col, ShardedCollection) and len(col.shards) == 4
    assert store.names() == ["db/sharded"] and store.exists("db/sharded")
    assert isinstance(store.open("db/sharded"), ShardedCollection)
    with pytest.raises(AlreadyExistsError):
        store.create("db/sharded", dim=DIM, shards=4)
    with pytest.raises(ConfigError, match="shards must be a whole number from 1 to 1024; got 0"):
        store.create("db/other", dim=DIM, shards=0)
    store.drop("db/sharded")
    assert store.names() == [] and not (store.root / "db" / "sharded").exists()


def test_rows_are_routed_by_key_and_numbered_per_shard(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    keys = keys_of(300)
    x = clustered(300, DIM, seed=1)
    col.write(keys, x)
    owner = shard_of(keys, 3)
    for i, shard in enumerate(col.shards):
        assert sorted(shard.keys()) == sorted(k for k, o in zip(keys, owner.tolist(), strict=True) if o == i)
        row_ids = shard.rows([]).column("_row_id").to_numpy()
        assert ((row_ids >> 48) == i).all() and row_ids.min() == shard_row_base(i)
    assert len(col) == 300 and sorted(col.keys()) == sorted(keys)
    assert "k7" in col and "nope" not in col
    np.testing.assert_allclose(col.vectors(["k5", "k9"]), x[[5, 9]], atol=1e-2)
    status = col.status()
    assert (status.live_count, len(status.shards)) == (300, 3)
    assert [s.live_count for s in status.shards] == np.bincount(owner, minlength=3).tolist()


@pytest.mark.parametrize("shards", [1, 2, 5])
def test_fan_out_search_equals_exact_search_with_tombstones_and_filters(store: Store, shards: int) -> None:
    col = store.create("db/ns", dim=DIM, metric="l2sq", dtype="f32", shards=shards)
    keys = keys_of(1500)
    x = clustered(1500, DIM, seed=2, normalize=False)
    col.write(keys, x)
    queries = clustered(20, DIM, seed=3, normalize=False)
    # Without tombstones the shards' segments are searched in one native call.
    everything = [[keys[j] for j in row] for row in exact_knn(x, queries, 10, "l2sq")]
    assert [[h.id for h in hits] for hits in col.search_batch(queries, 10, ef=400)] == everything
    assert [h.id for h in col.search(queries[1], 10, ef=400)] == everything[1]
    dead = set(keys[::7])
    assert col.delete(sorted(dead)).deleted_count == len(dead)
    live = [i for i, k in enumerate(keys) if k not in dead]
    truth = exact_knn(x[live], queries, 10, "l2sq")
    expected = [[keys[live[j]] for j in row] for row in truth]
    got = col.search_batch(queries, 10, ef=400)
    assert [[h.id for h in hits] for hits in got] == expected
    assert [h.id for h in col.search(queries[0], 10, ef=400)] == expected[0]
    table = col.search_table(queries, 10, ef=400, columns=None)
    assert table.column("rank").to_pylist() == list(range(10)) * 20
    assert table.column("_key").to_pylist() == [k for row in expected for k in row]
    # A filter that leaves 30 rows still gives k=10 hits, from whichever shards hold them.
    allowed = [keys[i] for i in live[:30]]
    truth = exact_knn(x[live[:30]], queries[:3], 10, "l2sq")
    got = col.search_batch(queries[:3], 10, ef=400, allow=allowed)
    assert [[h.id for h in hits] for hits in got] == [[allowed[j] for j in row] for row in truth]
    assert [h.id for h in col.search(queries[0], 10, ef=400, allow=allowed)] == [allowed[j] for j in truth[0]]


def test_sessions_rebuild_and_optimize_span_the_shards(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=4)
    x = clustered(200, DIM, seed=4)
    col.init("build")
    col.ingest("first", x[0])
    assert col.ingest_batch(keys_of(199, "b"), x[1:]) == 199
    assert col.status().staged_count == 200
    result = col.finalize()
    assert (result.inserted, len(col)) == (200, 200)
    before = col.generations()
    col.rebuild()
    assert all(after == b + 1 for after, b in zip(col.generations(), before, strict=True))
    assert col.search(x[3], 1)[0].id == "b2"


def test_shards_are_written_by_separate_processes_at_once(store: Store) -> None:
    store.create("db/ns", dim=DIM, shards=4)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from brinicle_etl import Store
        from brinicle_etl.store.shards import shard_of
        i = int(sys.argv[1])
        keys = [f"k{{j}}" for j in range(2000)]
        mine = [k for k, o in zip(keys, shard_of(keys, 4).tolist()) if o == i]
        x = np.random.default_rng(i).standard_normal((len(mine), {DIM})).astype(np.float32)
        shard = Store({str(store.root)!r}).open("db/ns").shard(i)
        for start in range(0, len(mine), 100):
            shard.write(mine[start:start + 100], x[start:start + 100], mode="insert")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=REPO, stderr=subprocess.PIPE) for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    col = Store(store.root).open("db/ns")
    assert len(col) == 2000
    assert isinstance(col, ShardedCollection)
    assert [s.generation for s in col.shards] == [(len(s) + 99) // 100 for s in col.shards]  # one per write


def test_sigkill_of_one_shard_writer_leaves_the_others_untouched(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    col.write(keys_of(300), clustered(300, DIM, seed=5))
    before = {i: sorted(s.keys()) for i, s in enumerate(col.shards)}
    script = textwrap.dedent(
        f"""
        from brinicle_etl import Store
        shard = Store({str(store.root)!r}).open("db/ns").shard(1)
        while True:
            shard.rebuild()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    time.sleep(3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    reopened = Store(store.root).open("db/ns")
    assert isinstance(reopened, ShardedCollection)
    assert {i: sorted(s.keys()) for i, s in enumerate(reopened.shards)} == before
    reopened.write(["after"], clustered(1, DIM, seed=6))
    assert "after" in Store(store.root).open("db/ns")


@pytest.mark.parametrize(("shards", "expected"), [(2, 41), (4, 26), (8, 16)])
def test_each_shard_is_searched_with_a_share_of_ef(store: Store, shards: int, expected: int) -> None:
    col = store.create(f"db/s{shards}", dim=DIM, shards=shards)
    assert isinstance(col, ShardedCollection)
    assert col.shard_ef(None, 10) == expected  # the collection's ef_search, 64
    assert col.shard_ef(64, 10) == expected
    assert col.shard_ef(64, 50) == 50  # never fewer than k
    with pytest.raises(ConfigError, match="ef must be an integer between 1 and 16384; got 0"):
        col.shard_ef(0, 10)


def test_the_joint_search_follows_new_generations_and_serves_threads(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, metric="l2sq", dtype="f32", shards=4)
    assert isinstance(col, ShardedCollection)
    x = clustered(400, DIM, seed=8, normalize=False)
    col.write(keys_of(200), x[:200])
    assert col.search(x[150], 1, ef=200)[0].id == "k150"
    col.write(keys_of(400)[200:], x[200:], mode="insert")  # every shard moves on
    assert col.search(x[350], 1, ef=200)[0].id == "k350"
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(lambda i: col.search(x[i], 1, ef=200)[0].id, range(400)))
    assert found == keys_of(400)


def test_init_and_destroy_with_one_shard_busy_change_no_shard(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    col.write(keys_of(30), clustered(30, DIM, seed=1))
    busy = ShardedPlace(col.place.directory, "db/ns", col.place.marker).open()  # another writer
    assert busy.shard(2).hold_writer_lock()
    try:
        with pytest.raises(LockedError):
            col.init("upsert")
        assert [s.status().session_mode for s in col.shards] == [None, None, None]
        with pytest.raises(LockedError):
            col.destroy()
        assert len(Store(store.root).open("db/ns")) == 30
    finally:
        busy.shard(2).release_writer_lock()
    col.init("upsert")
    with pytest.raises(StateError) as caught:
        col.init("upsert")
    assert str(caught.value) == (
        "init: an ingest session is already pending on shard(s) [0, 1, 2] of 'db/ns'; finalize() or abort() it first"
    )
    assert col.abort() == 0
    col.destroy()
    assert not Store(store.root).exists("db/ns")


def test_an_ingest_into_shards_filled_without_a_schema_is_refused(store: Store) -> None:
    col = store.create("db/ns", dim=32, shards=2)
    col.write(keys_of(20), clustered(20, 32, seed=2))
    frame = pl.DataFrame({"id": [str(i) for i in range(20)], "title": [f"t{i}" for i in range(20)]})
    with pytest.raises(ConfigError, match="holds vectors written without a schema"):
        ingest(frame, "db/ns", store=store, model="hash-32", primary_key="id")
    assert len(Store(store.root).open("db/ns")) == 20


def test_a_filter_is_computed_again_for_a_collection_created_anew_elsewhere(store: Store) -> None:
    from brinicle_etl.search import search

    def frame(category: str) -> pl.DataFrame:
        return pl.DataFrame(
            {"id": [str(i) for i in range(12)], "title": [f"t{i}" for i in range(12)], "c": [category] * 12}
        )

    ingest(frame("a"), "db/ns", store=store, model="hash-32", primary_key="id", shards=2)
    assert len(search("db/ns", "t3", 5, store=store, filter={"c": "a"})) == 5
    other = Store(store.root)  # another process: drops it and creates it again, same generations
    other.drop("db/ns")
    ingest(frame("b"), "db/ns", store=other, model="hash-32", primary_key="id", shards=2)
    time.sleep(0.05)  # past the reader's manifest check interval
    assert search("db/ns", "t3", 5, store=store, filter={"c": "a"}) == []
    assert len(search("db/ns", "t3", 5, store=store, filter={"c": "b"})) == 5
