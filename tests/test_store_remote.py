"""Collections on object storage, against a real S3-compatible server (moto's) on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from brinicle_etl import (
    AlreadyExistsError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ObjectStoreError,
    PublishConflictError,
    StateError,
    Store,
    ingest,
)
from brinicle_etl.embed.models import ModelSpec
from brinicle_etl.search import search
from brinicle_etl.store import ShardedCollection, shard_of
from brinicle_etl.store.manifest import read_manifest
from tests.conftest import REPO
from tests.s3_server import ACCESS_KEY, SECRET, S3Server, running_s3

DIM = 16


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


def open_store(s3: S3Server, url: str, cache: Path, **kwargs: object) -> Store:
    return Store(url, storage_options=s3.options(), cache_dir=cache, **kwargs)  # type: ignore[arg-type]


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["bf16", "i8"])  # i8: a vectors file beside each graph
def test_a_collection_written_on_one_machine_is_searched_from_another(s3: S3Server, tmp_path: Path, dtype: str) -> None:
    url = s3.new_url()
    writer = open_store(s3, url, tmp_path / "writer").create("shop/items", dim=DIM, dtype=dtype)
    data = vectors(200, seed=1)
    writer.write([f"k{i}" for i in range(200)], data)
    expected = [h.id for h in writer.search(data[7], 5)]
    # Another process, with a cache of its own and its settings from the standard variables.
    script = (
        "import json, sys, numpy as np\n"
        "from brinicle_etl import Store\n"
        f"st = Store({url!r}, cache_dir={str(tmp_path / 'reader')!r})\n"
        "col = st.open('shop/items')\n"
        "q = np.array(json.loads(sys.argv[1]), dtype=np.float32)\n"
        "print(json.dumps({'n': len(col), 'hits': [h.id for h in col.search(q, 5)], 'names': st.names()}))\n"
    )
    env = {**s3.env(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(data[7].tolist())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"n": 200, "hits": expected, "names": ["shop/items"]}
    assert SECRET not in done.stderr


def test_a_reader_sees_a_new_generation_within_its_refresh_interval(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    writer = open_store(s3, url, tmp_path / "w").create("db/ns", dim=DIM)
    writer.write(["a"], vectors(1, seed=2))
    reader = open_store(s3, url, tmp_path / "r", refresh_seconds=0.5).open("db/ns")
    assert len(reader) == 1
    writer.write(["b", "c"], vectors(2, seed=3))
    published = time.monotonic()
    while len(reader) != 3:
        assert time.monotonic() - published < 5, "the reader never saw the new generation"
        time.sleep(0.05)
    assert time.monotonic() - published < 1.5
    assert reader.generation == writer.generation
    # Files of the old generation leave the reader's cache once it moved on.
    before = set(reader._snapshot().manifest.files())
    writer.rebuild()  # every file replaced
    while reader.generation != writer.generation:
        assert time.monotonic() - published < 10, "the reader never saw the rebuild"
        time.sleep(0.05)
    cached = {
        p.name for p in (tmp_path / "r" / "db" / "ns").iterdir() if p.name.startswith(("main-", "rows-", "delta-"))
    }
    assert cached == set(writer._snapshot().manifest.files()) - {m for m in before if m.startswith("tomb-")}
    assert not cached & before


def test_two_writers_on_the_same_generation_one_wins_nothing_mixes(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    a = open_store(s3, url, tmp_path / "a").create("db/ns", dim=DIM)
    a.write(["base"], vectors(1, seed=4))
    b = open_store(s3, url, tmp_path / "b").open("db/ns")
    raced = []

    def a_publishes_meanwhile(done: int, total: int) -> None:
        if not raced:  # while b builds on the generation both saw, a publishes the next one
            raced.append(a.write(["from-a"], vectors(1, seed=5)).generation)

    with pytest.raises(PublishConflictError) as info:
        b.write(["from-b"], vectors(1, seed=6), progress=a_publishes_meanwhile)
    assert info.value.generation == raced[0] == 2
    assert str(info.value) == (
        "collection 'db/ns': another writer published generation 2 first (this write was built on "
        "generation 1); nothing of this write was published: run it again to apply it on top"
    )
    fresh = open_store(s3, url, tmp_path / "c").open("db/ns")
    assert sorted(fresh.keys()) == ["base", "from-a"]
    # Run again, it applies on top of the winner's generation.
    b.write(["from-b"], vectors(1, seed=6))
    assert sorted(b.keys()) == ["base", "from-a", "from-b"]
    assert sorted(open_store(s3, url, tmp_path / "d").open("db/ns").keys()) == ["base", "from-a", "from-b"]


def test_creating_twice_from_two_machines(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    open_store(s3, url, tmp_path / "a").create("db/ns", dim=DIM)
    other = open_store(s3, url, tmp_path / "b")
    with pytest.raises(AlreadyExistsError, match=r"^collection 'db/ns' already exists at s3://"):
        other.create("db/ns", dim=DIM)
    assert other.create("db/ns", dim=DIM, exist_ok=True).dim == DIM


@pytest.mark.parametrize("index", ["now", "background"])
def test_ingest_and_search_with_rows_on_object_storage(s3: S3Server, tmp_path: Path, index: str) -> None:
    url = s3.new_url()
    store = open_store(s3, url, tmp_path / "cache")
    data = vectors(50, seed=7)
    frame = pl.DataFrame({"sku": [f"s{i}" for i in range(50)], "price": list(range(50)), "vec": data.tolist()})
    first = ingest(frame, "shop/items", store=store, primary_key="sku", vector_col="vec")
    assert first.rows_inserted == 50
    changed = frame.with_columns(pl.when(pl.col("sku") == "s3").then(999).otherwise(pl.col("price")).alias("price"))
    again = ingest(
        changed, "shop/items", store=store, on_conflict="update", primary_key="sku", vector_col="vec", index=index
    )
    assert (again.rows_updated, again.rows_unchanged, again.rows_embedded) == (1, 49, 0)
    # Never deferred on object storage: another machine may write next, and no job of this
    # process would be there to link what it left.
    status = store.open("shop/items").status()
    assert (status.main_count, status.delta_count, status.pending_count) == (49, 1, 0)
    reader = open_store(s3, url, tmp_path / "reader")
    hits = search("shop/items", data[3], k=1, store=reader)
    assert (hits[0].key, hits[0].row["price"]) == ("s3", 999)


@pytest.mark.parametrize("damage", ["removed", "garbled"])
def test_a_missing_or_damaged_pointer_is_read_past(s3: S3Server, tmp_path: Path, damage: str) -> None:
    url = s3.new_url()
    store = open_store(s3, url, tmp_path / "w")
    col = store.create("db/ns", dim=DIM)
    for i in range(3):
        col.write([f"k{i}"], vectors(1, seed=10 + i))
    assert store._bucket is not None
    assert store._bucket.exists("db/ns/_latest.json")  # keys are relative to the store's prefix
    if damage == "removed":
        store._bucket.delete(["db/ns/_latest.json"])
    else:
        store._bucket.put("db/ns/_latest.json", b"{not json")
    reader = open_store(s3, url, tmp_path / "r").open("db/ns")
    assert (reader.generation, len(reader)) == (3, 3)


def test_drop_removes_every_object(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    store = open_store(s3, url, tmp_path / "w")
    store.create("db/ns", dim=DIM).write(["a"], vectors(1, seed=8))
    store.drop("db/ns")
    assert not store.exists("db/ns")
    assert store._bucket is not None and store._bucket.objects("db") == []
    assert store._bucket.objects("") == []  # nothing else of the store either
    with pytest.raises(NotFoundError, match=r"^collection 'db/ns' not found at s3://"):
        open_store(s3, url, tmp_path / "r").open("db/ns")


def test_errors_name_the_object_and_never_a_credential(s3: S3Server, tmp_path: Path) -> None:
    port = int(s3.endpoint.rsplit(":", 1)[1])
    options = {
        **s3.options(),
        "endpoint": f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}",
        "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=2)},
    }
    store = Store("s3://brinicle-tests/nowhere", storage_options=options, cache_dir=tmp_path)
    with pytest.raises(ObjectStoreError) as info:
        store.open("db/ns")
    message = str(info.value)
    assert message.startswith("reading s3://brinicle-tests/nowhere/db/ns/_latest.json failed: ")
    assert SECRET not in message and ACCESS_KEY not in message
    assert SECRET not in repr(store) and ACCESS_KEY not in repr(store)


def write_vector_csv(path: Path, n: int, seed: int) -> np.ndarray:
    data = vectors(n, seed)
    frame = pl.DataFrame({"sku": [f"s{i}" for i in range(n)], "vec": [json.dumps(v.tolist()) for v in data]})
    frame.write_csv(path)
    return data


def test_the_cli_ingests_into_and_searches_an_s3_store(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    data = write_vector_csv(tmp_path / "items.csv", 30, seed=20)
    env = {**s3.env(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "brinicle_etl.cli", *args, "--store", url],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = cli("ingest", str(tmp_path / "items.csv"), "-c", "shop/items", "--pk", "sku", "--vector-col", "vec", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Created shop/items from {tmp_path / 'items.csv'} (precomputed vectors)")
    found = cli("search", "shop/items", json.dumps(data[4].tolist()), "--k", "1", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["key"] == "s4"
    assert SECRET not in done.stdout + done.stderr + found.stdout + found.stderr


def test_server_replicas_on_one_s3_store(s3: S3Server, tmp_path: Path) -> None:
    import httpx

    from tests.server_process import running_server, server_log

    url = s3.new_url()
    data = vectors(40, seed=21)
    frame = pl.DataFrame({"sku": [f"s{i}" for i in range(40)], "vec": data.tolist()})
    ingest(frame, "shop/items", store=open_store(s3, url, tmp_path / "w"), primary_key="sku", vector_col="vec")
    headers = {"X-API-Key": "k"}

    def nearest(base: str) -> str:
        body = {"index_name": "shop/items", "query": data[9].tolist(), "k": 1}
        r = httpx.post(base + "/search", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        key: str = r.json()["results"][0]["key"]
        return key

    with (
        running_server(url, "--api-key", "k", env={**s3.env(), "XDG_CACHE_HOME": str(tmp_path / "1")}) as (one, p1),
        # Two workers of one replica share its cache directory.
        running_server(
            url, "--api-key", "k", "--workers", "2", env={**s3.env(), "XDG_CACHE_HOME": str(tmp_path / "2")}
        ) as (two, p2),
    ):
        assert nearest(one) == nearest(two) == "s9"
        # A write through one replica is published with the same protocol; the other sees it.
        body = {"index_name": "shop/items", "external_ids": ["s9"]}
        r = httpx.post(one + "/delete", json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        assert nearest(one) != "s9"
        deadline = time.monotonic() + 5
        while any(nearest(two) == "s9" for _ in range(10)):  # ten answers: from both workers
            assert time.monotonic() < deadline, "the other replica never saw the delete"
            time.sleep(0.1)
        for proc in (p1, p2):
            assert SECRET not in server_log(proc)


def test_a_dagster_asset_materializes_into_an_s3_store(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from brinicle_etl.dagster import BrinicleResource, collection_asset

    for name, value in {**s3.env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    url = s3.new_url()
    write_vector_csv(tmp_path / "items.csv", 60, seed=22)
    asset = collection_asset("shop/items", source=tmp_path / "items.csv", primary_key="sku", vector_col="vec")
    result = dg.materialize([asset], resources={"brinicle": BrinicleResource(store=url)})
    assert result.success
    [materialization] = result.asset_materializations_for_node(asset.op.name)
    assert (materialization.metadata["rows_inserted"].value, materialization.metadata["generation"].value) == (60, 1)
    assert all(check.passed for check in result.get_asset_check_evaluations())
    assert len(Store(url, cache_dir=tmp_path / "other").open("shop/items")) == 60


def test_sql_searches_an_s3_store(s3: S3Server, tmp_path: Path) -> None:
    from brinicle_etl.sql import connect

    url = s3.new_url()
    data = vectors(30, seed=23)
    frame = pl.DataFrame({"sku": [f"s{i}" for i in range(30)], "price": list(range(30)), "vec": data.tolist()})
    ingest(frame, "shop/items", store=open_store(s3, url, tmp_path / "w"), primary_key="sku", vector_col="vec")
    con = connect(open_store(s3, url, tmp_path / "analyst"))
    rows = con.execute(
        "SELECT _key, price FROM brinicle_search('shop/items', $q::FLOAT[], k := 2)", {"q": data[5].tolist()}
    ).fetchall()
    assert rows[0] == ("s5", 5)
    assert con.sql("SELECT count(*) FROM brinicle_rows('shop/items')").fetchall() == [(30,)]


def test_vacuum_keeps_what_a_recent_reader_may_need_and_removes_the_rest(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import brinicle_etl.store.remote as remote

    url = s3.new_url()
    store = open_store(s3, url, tmp_path / "w")
    col = store.create("db/ns", dim=DIM)
    for i in range(3):
        col.write([f"k{i}"], vectors(1, seed=30 + i), mode="insert")
    col.rebuild()  # generation 4 replaces every file of the generations before it
    assert store._bucket is not None
    prefix = "db/ns/"  # keys are relative to the store's prefix
    # A loser of a publication race left a file behind a moment ago: a writer may still need it.
    store._bucket.put(prefix + "main-00000005-deadbeef.usearch", b"in flight")

    within = col.vacuum(retention_seconds=3600)
    assert (within.removed, within.kept_generations) == ([], [0, 1, 2, 3, 4])
    with pytest.raises(ConfigError, match=r"^vacuum: retention must be at least 300 seconds"):
        col.vacuum(retention_seconds=0)

    later = time.time() + 7200  # two hours on, everything but generation 4 is past the window
    monkeypatch.setattr(remote.time, "time", lambda: later)
    past = col.vacuum(retention_seconds=3600)
    assert past.kept_generations == [0, 4]
    assert "main-00000005-deadbeef.usearch" in past.removed
    assert not any(name.startswith("_gen/") for name in past.removed)  # a generation's name stays taken
    assert past.bytes_freed > 0
    left = {str(m["path"]).removeprefix(prefix) for m in store._bucket.objects(prefix.rstrip("/"))}
    manifests = {f"_gen/{g:020d}.json" for g in range(5)}
    assert left == set(col._snapshot().manifest.files()) | {"_latest.json"} | manifests
    reader = open_store(s3, url, tmp_path / "r").open("db/ns")
    assert sorted(reader.keys()) == ["k0", "k1", "k2"]


CRASH_WRITER = """
import sys
import numpy as np
from brinicle_etl import Store

url, cache = sys.argv[1], sys.argv[2]
col = Store(url, cache_dir=cache).open("db/ns")
while True:
    g = col.generation
    if g % 5 == 4:
        col.rebuild()  # a generation with the same rows in new files
    else:
        keys = [f"g{g}-{i}" for i in range(300)]
        col.write(keys, np.random.default_rng(g).standard_normal((300, 16)).astype(np.float32), mode="insert")
    print(col.generation, flush=True)
"""


def expected_keys(generation: int) -> set[str]:
    """The rows the crash writer's generations 1..generation hold together."""
    return {f"g{g}-{i}" for g in range(generation) if g % 5 != 4 for i in range(300)}


def test_sigkill_of_a_writer_at_random_points_leaves_the_old_or_the_new_generation(
    s3: S3Server, tmp_path: Path
) -> None:
    url = s3.new_url()
    open_store(s3, url, tmp_path / "setup").create("db/ns", dim=DIM)
    rng = np.random.default_rng(40)
    env = {**s3.env(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    last = 0
    for kill in range(20):
        writer = subprocess.Popen(
            [sys.executable, "-c", CRASH_WRITER, url, str(tmp_path / "writer")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        writer.stdout.readline()  # it has published at least once: the kill lands mid-work
        time.sleep(float(rng.uniform(0.0, 0.4)))
        writer.kill()
        writer.wait()
        # A reader with a fresh cache opens the old or the new generation, complete.
        col = open_store(s3, url, tmp_path / f"reader{kill}").open("db/ns")
        assert col.generation >= last
        last = col.generation
        assert set(col.keys()) == expected_keys(col.generation), f"kill {kill}: generation {col.generation}"
        assert len(col.search(np.ones(DIM, np.float32), 5)) == 5
    assert last >= 20
    # What the killed writers left in the bucket goes with a vacuum, and the collection still opens.
    import brinicle_etl.store.remote as remote

    store = open_store(s3, url, tmp_path / "final")
    later = time.time() + 7200
    original, remote.time.time = remote.time.time, lambda: later  # type: ignore[method-assign]
    try:
        assert store.open("db/ns").vacuum(retention_seconds=3600).removed
    finally:
        remote.time.time = original  # type: ignore[method-assign]
    assert set(open_store(s3, url, tmp_path / "after").open("db/ns").keys()) == expected_keys(last)


SESSION_WRITER = """
import os, sys
import numpy as np
from brinicle_etl import Store

url, cache = sys.argv[1], sys.argv[2]
col = Store(url, cache_dir=cache).open("db/ns")
col.init("upsert")
vectors = np.random.default_rng(50).standard_normal((101, 16)).astype(np.float32)
col.ingest_batch([f"b{i}" for i in range(100)], vectors[:100])
col.ingest("single", vectors[100])
print("acknowledged", flush=True)
os.kill(os.getpid(), 9)  # the machine goes away before finalize
"""


def session_parts(store: Store) -> list[str]:
    """Staged parts of sessions (not the markers of finished ones)."""
    assert store._bucket is not None
    return [str(m["path"]) for m in store._bucket.objects("db/ns/_session") if not str(m["path"]).endswith("/done")]


def test_an_acknowledged_session_survives_its_writer_machine(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    open_store(s3, url, tmp_path / "setup").create("db/ns", dim=DIM).write(["old"], vectors(1, seed=51))
    env = {**s3.env(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", SESSION_WRITER, url, str(tmp_path / "gone")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout == "acknowledged\n" and done.returncode == -9, done.stderr
    # Another machine, with nothing of the first one's disk, finishes the session.
    other = open_store(s3, url, tmp_path / "other")
    col = other.open("db/ns")
    with pytest.raises(
        StateError, match=r"^init: an ingest session is already pending on 'db/ns' \(mode 'upsert', 101"
    ):
        col.init("upsert")
    result = col.finalize()
    assert result.inserted == 101
    assert sorted(col.keys()) == sorted(["old", "single", *(f"b{i}" for i in range(100))])
    expected = np.random.default_rng(50).standard_normal((101, 16)).astype(np.float32)
    np.testing.assert_allclose(col.vectors(["b7"])[0], expected[7], atol=1e-2)
    assert session_parts(other) == []  # a finalized session's staged objects are removed


def test_abort_and_binary_batches_on_object_storage(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    store = open_store(s3, url, tmp_path / "a")
    col = store.create("db/ns", dim=DIM)
    col.init("build")
    data = vectors(3, seed=52)
    with col.ingest_binary(id_width=8) as batch:
        for i in range(3):
            batch.feed(f"x{i}".encode().ljust(8, b"\0") + data[i].tobytes())
        assert batch.finish() == 3
    assert len(session_parts(store)) == 2  # the session's header, then the batch
    assert col.abort() == 3
    assert session_parts(store) == []
    col.init("build")
    col.ingest_batch(["y"], data[:1])
    reader = open_store(s3, url, tmp_path / "b").open("db/ns")
    assert reader.finalize().inserted == 1
    assert reader.keys() == ["y"]


APPENDER = """
import sys
import numpy as np
from brinicle_etl import Store

url, cache, first = sys.argv[1], sys.argv[2], int(sys.argv[3])
col = Store(url, cache_dir=cache).open("db/ns")
if first == 0:
    col.init("insert")
batch = first
while True:
    keys = [f"b{batch}-{i}" for i in range(50)]
    col.ingest_batch(keys, np.random.default_rng(batch).standard_normal((50, 16)).astype(np.float32))
    print(batch, flush=True)
    batch += 1
"""


def test_sigkill_while_appending_to_a_session_loses_no_acknowledged_batch(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    open_store(s3, url, tmp_path / "setup").create("db/ns", dim=DIM)
    env = {**s3.env(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    rng = np.random.default_rng(60)
    acknowledged: set[int] = set()
    in_flight: set[int] = set()
    first = 0
    for kill in range(10):
        # Each writer is a new machine (its own cache) that picks the session up where it was.
        writer = subprocess.Popen(
            [sys.executable, "-c", APPENDER, url, str(tmp_path / f"writer{kill}"), str(first)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        printed = [int(writer.stdout.readline())]
        time.sleep(float(rng.uniform(0.0, 0.3)))
        writer.kill()
        out, _err = writer.communicate()
        printed += [int(line) for line in out.split()]
        acknowledged.update(printed)
        # The batch being appended when it died may or may not be staged (never acknowledged).
        in_flight.add(max(printed) + 1)
        first = max(printed) + 2
    col = open_store(s3, url, tmp_path / "finisher").open("db/ns")
    col.finalize()
    keys = col.keys()
    batches = {int(k.split("-")[0][1:]) for k in keys}
    assert acknowledged <= batches
    assert batches <= acknowledged | in_flight
    assert len(keys) == 50 * len(batches)  # no batch half there


def test_the_refresh_interval_comes_from_the_environment(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = s3.new_url()
    writer = open_store(s3, url, tmp_path / "w").create("db/ns", dim=DIM)
    monkeypatch.setenv("BRINICLE_REFRESH_SECONDS", "3600")
    reader = open_store(s3, url, tmp_path / "r").open("db/ns")
    writer.write(["a"], vectors(1, seed=70))
    time.sleep(0.3)
    assert len(reader) == 0  # it looks again only in an hour
    monkeypatch.setenv("BRINICLE_REFRESH_SECONDS", "soon")
    with pytest.raises(
        ConfigError, match=r"^BRINICLE_REFRESH_SECONDS must be a number of seconds from 0 to 3600; got 'soon'$"
    ):
        open_store(s3, url, tmp_path / "x")


def test_finalize_applies_what_every_machine_appended_to_the_session(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    a = open_store(s3, url, tmp_path / "a").create("db/ns", dim=DIM)
    b = open_store(s3, url, tmp_path / "b").open("db/ns")
    data = vectors(3, seed=80)
    a.init("upsert")
    a.ingest("s1", data[0])
    b.ingest("s2", data[1])  # machine b picks the session up from the bucket and appends
    with pytest.raises(StateError, match=r"^collection 'db/ns': another writer appended to the pending"):
        a.ingest("s3", data[2])  # a's log is behind b's: the offset is taken, nothing staged
    result = a.finalize()
    assert sorted(a.keys()) == ["s1", "s2"] and result.inserted == 2
    with pytest.raises(StateError, match=r"^ingest: no pending ingest session on 'db/ns'"):
        b.ingest("late", data[0])


def test_a_finished_session_never_comes_back(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    store = open_store(s3, url, tmp_path / "a")
    col = store.create("db/ns", dim=DIM)
    col.init("upsert")
    col.ingest_batch(["x"], vectors(1, seed=81))
    assert store._bucket is not None
    first_part = session_parts(store)[0]
    header = store._bucket.get(first_part)
    col.finalize()
    assert header is not None
    store._bucket.put(first_part, header)  # as if removing the finished session's parts had failed
    col.init("upsert")
    col.ingest_batch(["y"], vectors(1, seed=82))
    col.finalize()
    other = open_store(s3, url, tmp_path / "b").open("db/ns")
    with pytest.raises(StateError, match=r"^finalize: no pending ingest session"):
        other.finalize()
    assert sorted(other.keys()) == ["x", "y"]


def test_a_cache_missing_a_file_of_its_generation_fetches_it_again(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    writer = open_store(s3, url, tmp_path / "w").create("db/ns", dim=DIM)
    data = vectors(20, seed=95)
    writer.write([f"k{i}" for i in range(20)], data)
    reader = open_store(s3, url, tmp_path / "r", refresh_seconds=0.1).open("db/ns")
    [main] = [n for n in reader._snapshot().manifest.files() if n.startswith("main-") and n.endswith(".usearch")]
    (tmp_path / "r" / "db" / "ns" / main).unlink()  # as another process's cleanup might
    time.sleep(0.15)
    assert reader.search(data[3], 1)[0].id == "k3"
    assert (tmp_path / "r" / "db" / "ns" / main).exists()


def test_a_cache_never_takes_a_recreated_collection_for_the_one_it_holds(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    first = open_store(s3, url, tmp_path / "w1").create("db/ns", dim=DIM)
    first.write(["old1"], vectors(1, seed=96))
    first.write(["old2"], vectors(1, seed=97))
    reader = open_store(s3, url, tmp_path / "r", refresh_seconds=0.1).open("db/ns")
    assert (reader.generation, sorted(reader.keys())) == (2, ["old1", "old2"])
    # Another machine drops it and builds a new collection of the name up to the same generation.
    other = open_store(s3, url, tmp_path / "w2")
    other.drop("db/ns")
    again = other.create("db/ns", dim=DIM)
    again.write(["new1"], vectors(1, seed=98))
    again.write(["new2"], vectors(1, seed=99))
    time.sleep(0.15)
    assert (reader.generation, sorted(reader.keys())) == (2, ["new1", "new2"])
    # And a write from the reader's machine builds on the new collection, not its old cache.
    reader.write(["from-reader"], vectors(1, seed=100))
    fresh = open_store(s3, url, tmp_path / "f").open("db/ns")
    assert sorted(fresh.keys()) == ["from-reader", "new1", "new2"]


def test_a_write_that_crosses_a_drop_and_create_publishes_nothing(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    slow = open_store(s3, url, tmp_path / "slow").create("db/ns", dim=DIM)
    slow.write(["a", "b"], vectors(2, seed=1))
    remote = slow._remote
    assert remote is not None
    base = read_manifest(slow.directory)
    next_generation = dataclasses.replace(base, generation=base.generation + 1)
    # Meanwhile, on another machine: dropped, created again, and written up to the same generation.
    other = open_store(s3, url, tmp_path / "other")
    other.drop("db/ns")
    again = other.create("db/ns", dim=DIM)
    again.write(["new"], vectors(1, seed=2))
    assert again.generation == base.generation
    with pytest.raises(ConflictError) as caught:
        remote.push(base, next_generation)
    assert str(caught.value) == (
        "collection 'db/ns' was dropped and created again while this write ran; nothing of this write was "
        "published: run it again to apply it to the collection there is now"
    )
    fresh = open_store(s3, url, tmp_path / "fresh").open("db/ns")
    assert (fresh.generation, fresh.keys()) == (base.generation, ["new"])
    # Through the public API the slow writer's next write lands on the new collection.
    slow.write(["c"], vectors(1, seed=3), mode="insert")
    assert sorted(open_store(s3, url, tmp_path / "fresh2").open("db/ns").keys()) == ["c", "new"]


def test_a_drop_removes_a_generation_published_while_it_ran(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    col = open_store(s3, url, tmp_path / "w").create("db/ns", dim=DIM)
    col.write(["a"], vectors(1, seed=1))
    remote = col._remote
    assert remote is not None
    base = read_manifest(col.directory)
    listing = remote.bucket.objects

    def listed_then_published(prefix: str) -> list[dict[str, object]]:
        found = listing(prefix)
        # The write finishes just after the drop listed the objects.
        remote.bucket.objects = listing  # type: ignore[method-assign]
        remote.push(base, dataclasses.replace(base, generation=base.generation + 1))
        return found

    remote.bucket.objects = listed_then_published  # type: ignore[method-assign]
    remote.destroy()
    assert remote.bucket.objects(url.split("/", 3)[3]) == []
    created = open_store(s3, url, tmp_path / "again").create("db/ns", dim=DIM)
    for i in range(base.generation + 2):
        created.write([f"n{i}"], vectors(1, seed=i), mode="insert")
    assert len(open_store(s3, url, tmp_path / "reader").open("db/ns")) == base.generation + 2


@pytest.mark.parametrize("where", ["local", "s3"])
def test_models_registered_at_once_from_many_writers_are_all_kept(s3: S3Server, tmp_path: Path, where: str) -> None:
    location = s3.new_url() if where == "s3" else str(tmp_path / "store")

    def register(i: int) -> None:
        store = Store(location, storage_options=s3.options() if where == "s3" else None, cache_dir=tmp_path / f"c{i}")
        store.models.register(ModelSpec(id=f"hash-model-{i}", dim=8 + i, kind="hash"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, range(8)))
    ids = [s.id for s in Store(location, storage_options=s3.options() if where == "s3" else None).models.specs()]
    assert [f"hash-model-{i}" for i in range(8)] == [i for i in ids if i.startswith("hash-model-")]


def test_a_reader_keeps_serving_while_the_object_store_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_s3() as own:
        url = own.new_url()
        options = {**own.options(), "retry_config": {"max_retries": 0, "retry_timeout": timedelta(seconds=2)}}
        writer = Store(url, storage_options=options, cache_dir=tmp_path / "w").create("db/ns", dim=DIM)
        data = vectors(50, seed=4)
        writer.write([f"k{i}" for i in range(50)], data)
        reader = Store(url, storage_options=options, cache_dir=tmp_path / "r", refresh_seconds=0.05).open("db/ns")
        expected = [h.id for h in reader.search(data[3], 5)]
    time.sleep(0.1)  # the server is gone and the reader's check is due
    with caplog.at_level("WARNING", logger="brinicle_etl.store.collection"):
        assert [h.id for h in reader.search(data[3], 5)] == expected
    assert "collection 'db/ns': still serving generation 1: reading" in caplog.text
    assert SECRET not in caplog.text
    with pytest.raises(ObjectStoreError):  # a writer needs the store: it is told
        reader.write(["x"], vectors(1, seed=5), mode="insert")


def test_a_sharded_collection_on_object_storage(s3: S3Server, tmp_path: Path) -> None:
    url = s3.new_url()
    writer = open_store(s3, url, tmp_path / "w").create("db/ns", dim=DIM, metric="l2sq", dtype="f32", shards=3)
    data = vectors(300, seed=7)
    keys = [f"k{i}" for i in range(300)]
    writer.write(keys, data)
    reader = open_store(s3, url, tmp_path / "r")
    assert reader.names() == ["db/ns"]
    col = reader.open("db/ns")
    assert isinstance(col, ShardedCollection) and len(col) == 300
    assert col.search(data[42], 3, ef=200)[0].id == "k42"
    # One shard written from another machine: the reader sees it, the other shards stay.
    other = open_store(s3, url, tmp_path / "o").open("db/ns")
    assert isinstance(other, ShardedCollection)
    generations = col.generations()
    other.shard(2).delete([k for k in keys if shard_of([k], 3)[0] == 2][:5])
    # That machine fetched the one shard it wrote, not the others.
    fetched = sorted(p.name for p in (tmp_path / "o" / "db" / "ns").iterdir() if p.is_dir())
    assert fetched == ["shard-0002"]
    deadline = time.monotonic() + 5
    while col.generations()[2] == generations[2]:
        assert time.monotonic() < deadline, "the reader never saw shard 2's new generation"
        time.sleep(0.1)
    assert col.generations()[:2] == generations[:2] and len(col) == 295
    reader.drop("db/ns")
    assert open_store(s3, url, tmp_path / "fresh").names() == []
    assert open_store(s3, url, tmp_path / "fresh2")._bucket.objects(url.split("/", 3)[3]) == []  # type: ignore[union-attr]
