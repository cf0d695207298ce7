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

from brinicle_etl import (
    AlreadyExistsError,
    ConfigError,
    ConflictError,
    DiskFullError,
    InputError,
    LockedError,
    NotFoundError,
    PublishConflictError,
    StateError,
    Store,
    ingest,
)
from brinicle_etl.store.sharding import ShardedPlace, shard_of, shard_row_base
from brinicle_etl.store.shards import ShardedCollection
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
    rows = col.search_rows(queries, 10, ef=400)
    assert [[h.id for h in hits] for hits in rows] == expected and rows[0][0].row == {}
    assert [h.id for h in col.search_rows(queries[:1], 10, ef=400)[0]] == expected[0]
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
    busy = ShardedCollection.open(ShardedPlace(col.place.directory, "db/ns", col.place.marker))  # another writer
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


def test_rows_of_a_sharded_search_carry_every_shards_columns_filtered_or_not(store: Store) -> None:
    import pyarrow as pa

    from brinicle_etl.search import search

    col = store.create("db/ns", dim=DIM, shards=3)
    keys = keys_of(60)
    x = clustered(61, DIM, seed=8)
    col.write(keys, x[:60], rows=pa.table({"n": list(range(60)), "c": ["a", "b"] * 30}))
    late = _keys_in(1, 3, 1, "late")[0]  # a column only shard 1's newest file has
    col.write([late], x[60:], rows=pa.table({"n": [60], "c": ["a"], "extra": ["x"]}))
    for hits in col.search_rows(x[[60, 3, 7]], 8):
        assert all(list(h.row) == ["n", "c", "extra"] for h in hits)
        assert all(h.row["extra"] == ("x" if h.id == late else None) for h in hits)
    found = search(col, x[60], 8, filter={"c": "a"})
    assert len(found) == 8 and found[0].key == late and found[0].row == {"n": 60, "c": "a", "extra": "x"}
    assert all(h.row["c"] == "a" and h.row["n"] == int(h.key[1:]) for h in found[1:])


def _keys_in(shard: int, shards: int, n: int, prefix: str = "k") -> list[str]:
    """``n`` keys that belong to ``shard``."""
    found = [k for k in keys_of(50 * n * shards, prefix) if shard_of([k], shards)[0] == shard]
    return found[:n]


def test_a_write_across_shards_refused_by_one_shard_writes_no_shard(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    taken = [_keys_in(1, 3, 1, "a")[0], _keys_in(2, 3, 1, "b")[0]]
    col.write(taken, clustered(2, DIM, seed=1))
    before = col.generations()
    fresh = _keys_in(0, 3, 5, "c")
    with pytest.raises(ConflictError) as caught:
        col.write(fresh + taken, clustered(7, DIM, seed=2), mode="insert")
    assert str(caught.value) == (
        f"in 'db/ns': shard 1: write: 1 id(s) already exist: {taken[0]!r}; use mode 'upsert' to replace them; "
        f"nothing was applied; shard 2: write: 1 id(s) already exist: {taken[1]!r}; use mode 'upsert' to replace "
        "them; nothing was applied (no shard was written)"
    )
    assert caught.value.keys == taken
    assert col.generations() == before and len(col) == 2 and not any(k in col for k in fresh)
    # Nothing of the refused write was left behind either: each shard holds its published files only.
    for shard in col.shards:
        listed = {p.name for p in shard.directory.iterdir() if p.is_file()}
        assert listed - {"manifest.json", ".lock"} <= set(shard.snapshot().manifest.files())


def test_a_shard_that_fails_to_publish_is_named_and_a_rerun_completes_the_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    keys = keys_of(60)
    x = clustered(60, DIM, seed=3)
    broken = col.shard(1)

    def full_disk(manifest: object) -> None:
        raise DiskFullError("the disk is full", path=str(broken.directory))

    monkeypatch.setattr(broken, "_publish", full_disk)
    with pytest.raises(DiskFullError) as caught:
        col.write(keys, x)
    assert str(caught.value) == (
        "in 'db/ns': shard 1: the disk is full (shard(s) [0, 2] were published and the others were not; "
        "run it again to complete it)"
    )
    owner = shard_of(keys, 3)
    assert len(col) == int((owner != 1).sum())
    monkeypatch.undo()
    result = col.write(keys, x)
    assert (result.inserted, result.updated, len(col)) == (int((owner == 1).sum()), int((owner != 1).sum()), 60)


def test_another_machine_publishing_first_is_reported_with_its_generation(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    col = store.create("db/ns", dim=DIM, shards=2)
    assert isinstance(col, ShardedCollection)

    def raced(manifest: object) -> None:
        raise PublishConflictError("generation 1 of 'db/ns/shard-0000' was published by another writer", generation=1)

    monkeypatch.setattr(col.shard(0), "_publish", raced)
    with pytest.raises(PublishConflictError) as caught:
        col.write(keys_of(20), clustered(20, DIM, seed=3), mode="insert")
    assert caught.value.generation == 1
    assert str(caught.value) == (
        "in 'db/ns': shard 0: generation 1 of 'db/ns/shard-0000' was published by another writer "
        "(shard(s) [1] were published and the others were not; run it again with mode='upsert' to complete it)"
    )


def test_an_error_outside_the_tree_keeps_its_class_and_gets_the_story_as_a_note(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    col = store.create("db/ns", dim=DIM, shards=2)
    assert isinstance(col, ShardedCollection)

    def broken(manifest: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(col.shard(1), "_publish", broken)
    with pytest.raises(OSError, match="Input/output error") as caught:
        col.write(keys_of(20), clustered(20, DIM, seed=3))
    assert caught.value.__notes__ == [
        "in 'db/ns': shard 1: [Errno 5] Input/output error (shard(s) [0] were published and the others were not; "
        "run it again to complete it)"
    ]


def test_a_finalize_cut_short_is_completed_by_finalizing_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    col.init("upsert")
    col.ingest_batch(keys_of(60), clustered(60, DIM, seed=4))

    def full_disk(manifest: object) -> None:
        raise DiskFullError("the disk is full", path="/")

    with monkeypatch.context() as patch:
        patch.setattr(col.shard(2)._sessions, "_publish", full_disk)
        with pytest.raises(DiskFullError, match=r"call finalize\(\) again to apply the others"):
            col.finalize()
    assert [s.status().session_mode for s in col.shards] == [None, None, "upsert"]
    assert col.finalize().inserted == int((shard_of(keys_of(60), 3) == 2).sum())
    assert len(col) == 60
    with pytest.raises(StateError, match="finalize: no pending ingest session on 'db/ns'; call init"):
        col.finalize()


def test_a_failed_first_ingest_of_every_shard_leaves_no_collection(store: Store) -> None:
    bad = pl.DataFrame({"id": ["1", "2", "2"], "title": ["a", "b", "c"]})  # a key twice: refused
    with pytest.raises(InputError, match="duplicate primary key 'id'"):
        ingest(bad, "db/ns", store=store, model="hash-32", primary_key="id", shards=3)
    assert not Store(store.root).exists("db/ns") and Store(store.root).names() == []
    good = ingest(bad.unique("id"), "db/ns", store=store, model="hash-32", primary_key="id", shards=2)
    assert good.rows_inserted == 2


def test_delete_routes_keys_and_lists_the_missing_in_the_order_given(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=4)
    col.write(keys_of(40), clustered(40, DIM, seed=4))
    asked = ["nope-3", "k5", "nope-1", "k17", "nope-2", "k5"]
    result = col.delete(asked, return_not_found=True)
    assert (result.deleted_count, result.not_found) == (2, ["nope-3", "nope-1", "nope-2"])
    assert len(col) == 38 and "k5" not in col and result.generation == col.generation
    assert col.delete(["nope"], return_not_found=True).not_found == ["nope"]


def test_write_takes_rows_deletes_and_metadata_like_one_collection(store: Store) -> None:
    import pyarrow as pa

    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    x = clustered(30, DIM, seed=5)
    rows = pa.table({"title": [f"t{i}" for i in range(30)]})
    seen: list[tuple[int, int]] = []
    col.write(keys_of(30), x, rows=rows, meta={"owner": "me"}, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (30, 30) and all(s.meta == {"owner": "me"} for s in col.shards)
    col.write(["new"], x[:1], delete=["k1", "k2"], rows=pa.table({"title": ["n"]}))
    assert len(col) == 29 and "k1" not in col and "new" in col
    assert sorted(col.rows(["title"]).column("title").to_pylist()) == sorted(
        [f"t{i}" for i in range(30) if i not in (1, 2)] + ["n"]
    )
    with pytest.raises(InputError, match=r"^write: 2 ids but 1 rows$"):
        col.write(["a", "b"], x[:2], rows=pa.table({"title": ["x"]}))
    with pytest.raises(ConfigError, match="mode must be one of"):
        col.write(["a"], x[:1], mode="merge")  # type: ignore[arg-type]
    col.set_meta({"v": 2})
    assert all(s.meta == {"v": 2} for s in col.shards)


def test_a_session_one_shard_refuses_ends_on_every_shard_with_nothing_applied(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    taken = _keys_in(2, 3, 1)[0]
    col.write([taken], clustered(1, DIM, seed=6))
    before = col.generations()
    col.init("insert")
    col.ingest_batch([*keys_of(30, "new"), taken], clustered(31, DIM, seed=7))
    with pytest.raises(ConflictError, match=r"^in 'db/ns': shard 2: finalize: 1 id\(s\) already exist"):
        col.finalize()
    assert col.generations() == before and len(col) == 1
    assert [s.status().session_mode for s in col.shards] == [None, None, None]


def test_a_batch_with_one_shard_busy_stages_nothing_anywhere(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    assert isinstance(col, ShardedCollection)
    col.init("upsert")
    busy = ShardedCollection.open(ShardedPlace(col.place.directory, "db/ns", col.place.marker))  # another writer
    assert busy.shard(1).hold_writer_lock()
    try:
        with pytest.raises(LockedError):
            col.ingest_batch(keys_of(30), clustered(30, DIM, seed=8), wait=False)
        rows = np.zeros(30, dtype=[("id", "S8"), ("v", "<f4", (DIM,))])
        rows["id"] = [k.encode() for k in keys_of(30)]
        batch = col.ingest_binary(id_width=8)
        batch.feed(rows.tobytes())
        with pytest.raises(LockedError):
            batch.finish(wait=False)
        assert col.status().staged_count == 0
    finally:
        busy.shard(1).release_writer_lock()
    assert batch.finish(wait=False) == 30  # a busy shard keeps the batch: it may be retried
    assert col.abort() == 30 and col.status().staged_count == 0
    col.init("upsert")
    assert col.ingest_batch(keys_of(30), clustered(30, DIM, seed=8)) == 30
    assert col.finalize().inserted == 30 and len(col) == 30


def test_a_binary_batch_is_routed_as_it_arrives(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=4)
    assert isinstance(col, ShardedCollection)
    col.init("build")
    x = clustered(500, DIM, seed=9)
    rows = np.zeros(500, dtype=[("id", "S12"), ("v", "<f4", (DIM,))])
    rows["id"] = [k.encode() for k in keys_of(500)]
    rows["v"] = x
    data = rows.tobytes()
    with col.ingest_binary(id_width=12) as batch:
        for start in range(0, len(data), 997):  # pieces that split rows
            batch.feed(data[start : start + 997])
        assert batch.finish() == 500
    col.finalize()
    assert sorted(col.keys()) == sorted(keys_of(500))
    np.testing.assert_allclose(col.vectors(["k77"]), x[[77]], atol=1e-2)
    bad = rows[:3].copy()
    bad["v"][2, 0] = np.nan
    col.init("upsert")
    with col.ingest_binary(id_width=12) as batch, pytest.raises(InputError, match=r"row 2 \(id 'k2'\) contains NaN"):
        batch.feed(bad.tobytes())
    assert col.status().staged_count == 0


def test_threads_sharing_one_collection_write_across_shards_at_once(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=4)
    x = clustered(400, DIM, seed=10)

    def writer(t: int) -> None:
        for round_ in range(5):
            part = slice(t * 100 + round_ * 20, t * 100 + round_ * 20 + 20)
            col.write(keys_of(400)[part], x[part], wait=True)
            col.search(x[t], 5)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))
    assert sorted(Store(store.root).open("db/ns").keys()) == sorted(keys_of(400))


def test_a_drop_cut_short_is_named_and_finished_by_dropping_again(store: Store) -> None:
    col = store.create("db/ns", dim=DIM, shards=3)
    col.write(keys_of(30), clustered(30, DIM, seed=11))
    assert isinstance(col, ShardedCollection)
    col.shard(1).destroy()  # as a drop stopped after its second shard
    other = Store(store.root)
    assert other.exists("db/ns") and other.names() == ["db/ns"]
    with pytest.raises(NotFoundError) as caught:
        len(other.open("db/ns"))
    assert str(caught.value) == (
        "collection 'db/ns' has lost shard 1 (shard-0001): a drop of it was cut short, or its files were removed; "
        "drop the collection again to finish"
    )
    other.drop("db/ns")
    assert not other.exists("db/ns") and other.names() == []


def test_a_writer_of_one_shard_opens_that_shard_alone(store: Store) -> None:
    frame = pl.DataFrame({"id": [str(i) for i in range(40)], "title": [f"t{i}" for i in range(40)]})
    ingest(frame, "db/ns", store=store, model="hash-32", primary_key="id", shards=4)
    fresh = Store(store.root)
    col = fresh.open("db/ns")
    assert isinstance(col, ShardedCollection)
    ingest(frame, "db/ns", store=fresh, shard=2)
    opened = [i for i in range(4) if col.shards._opened[i] is not None]  # type: ignore[attr-defined]
    assert opened == [2]  # the store's collection object, as the run used it: its own shard only


def test_an_ingest_of_every_shard_refused_by_one_writes_no_shard(store: Store) -> None:
    ids = [str(i) for i in range(40)]
    frame = pl.DataFrame({"id": ids, "title": [f"t{i}" for i in range(40)]})
    ingest(frame, "db/ns", store=store, model="hash-32", primary_key="id", shards=3)
    col = Store(store.root).open("db/ns")
    assert isinstance(col, ShardedCollection)
    before = col.generations()
    changed = next(k for k in ids if shard_of([k], 3)[0] == 1)
    edited = frame.with_columns(
        pl.when(pl.col("id") == changed).then(pl.lit("edited")).otherwise(pl.col("title")).alias("title")
    )
    more = pl.concat([edited, pl.DataFrame({"id": [f"n{i}" for i in range(20)], "title": ["new"] * 20})])
    with pytest.raises(ConflictError, match=r"^in 'db/ns': shard 1: .*\(no shard was written\)$") as caught:
        ingest(more, "db/ns", store=store, on_conflict="error")
    assert caught.value.keys == [changed]
    assert col.generations() == before and len(col) == 40 and "n0" not in col
    result = ingest(more, "db/ns", store=store, on_conflict="update")
    assert (result.rows_inserted, result.rows_updated, len(col)) == (20, 1, 60)
    assert result.generation == col.generation == sum(col.generations())


def test_many_shards_are_searched_shard_by_shard_with_the_same_answers(store: Store) -> None:
    from brinicle_etl.store.segment import JOINT_MAX_FILES

    shards = JOINT_MAX_FILES + 6  # more segments than one joint view set may map
    col = store.create("db/ns", dim=DIM, metric="l2sq", dtype="f32", shards=shards)
    assert isinstance(col, ShardedCollection)
    x = clustered(700, DIM, seed=12, normalize=False)
    col.write(keys_of(700), x)
    queries = clustered(5, DIM, seed=13, normalize=False)
    truth = [[f"k{j}" for j in row] for row in exact_knn(x, queries, 10, "l2sq")]
    assert [[h.id for h in hits] for hits in col.search_batch(queries, 10, ef=200)] == truth
    assert col._joined() is None


def test_i8_shards_are_searched_in_one_call_and_re_scored_to_exact_distances(store: Store) -> None:
    col = store.create("db/i8", dim=DIM, dtype="i8", shards=3)
    assert isinstance(col, ShardedCollection)
    x = clustered(900, DIM, seed=14)
    col.write(keys_of(900), x)
    queries = clustered(6, DIM, seed=15)
    exact = 1 - queries @ x.T  # unit vectors: cosine distance
    truth = np.argsort(exact, axis=1, kind="stable")[:, :10]
    batch = col.search_batch(queries, 10, ef=300)
    joined = col._joined()
    assert joined is not None and joined[2]  # one native call, then re-scored on the vectors files
    for q, hits, want in zip(range(len(queries)), batch, truth, strict=True):
        assert [h.id for h in hits] == [f"k{j}" for j in want]
        np.testing.assert_allclose([h.distance for h in hits], exact[q, want], atol=1e-5)
        assert [h.id for h in col.search(queries[q], 10, ef=300)] == [h.id for h in hits]
