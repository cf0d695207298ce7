"""The collection: configuration, the three write modes, sessions, delete, search, status, rebuild."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import (
    AlreadyExistsError,
    Collection,
    ConfigError,
    ConflictError,
    DimensionError,
    HnswParams,
    InputError,
    LockedError,
    NotFoundError,
    StateError,
    Store,
)
from brinicle_etl.store import indexing
from brinicle_etl.store import manifest as manifest_module
from brinicle_etl.store import segment as segment_module
from brinicle_etl.store import snapshot as snapshot_module
from brinicle_etl.store.current import REFRESH_SECONDS
from brinicle_etl.store.lock import writer_lock
from brinicle_etl.store.manifest import read_manifest
from tests.conftest import REPO, clustered, deferred, exact_knn

DIM = 16


def ids(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def state(col: Collection) -> dict[str, bytes]:
    keys = col.keys()
    vectors = col.vectors(keys) if keys else np.empty((0, col.dim), np.float32)
    return {k: v.tobytes() for k, v in zip(keys, vectors, strict=True)}


@pytest.fixture
def col(store: Store) -> Collection:
    return store.create("db/ns", dim=DIM, dtype="f32")


# ---- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "dtype"),
    # i8 with l2sq is refused (tested below)
    [(m, d) for m in ("cosine", "ip", "l2sq") for d in ("f32", "f16", "bf16", "i8") if (m, d) != ("l2sq", "i8")],
)
def test_config_is_persisted_and_restored(store: Store, metric: str, dtype: str) -> None:
    params = HnswParams(M=12, ef_construction=77, ef_search=33, rng_seed=5, build_n_threads=1)
    store.create("c", dim=24, metric=metric, dtype=dtype, params=params, delta_ratio=0.25)  # type: ignore[arg-type]
    reopened = Collection(store.path_for("c"))
    cfg = reopened.config
    assert (cfg.dim, cfg.metric, cfg.dtype, cfg.params, cfg.delta_ratio) == (24, metric, dtype, params, 0.25)
    status = reopened.status()
    assert (status.dim, status.metric, status.dtype, status.params) == (24, metric, dtype, params)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be an integer between 1 and 65536; got 0"),
        ({"dim": 2**31}, "dim must be an integer between 1 and 65536; got 2147483648"),
        ({"dim": 4, "metric": "euclid"}, "metric must be one of 'cosine', 'ip', 'l2sq'; got 'euclid'"),
        ({"dim": 4, "dtype": "f64"}, "dtype must be one of 'f32', 'f16', 'bf16', 'i8'; got 'f64'"),
        ({"dim": 4, "delta_ratio": 0.6}, "delta_ratio must be in range (0, 0.5] (at least 1e-06); got 0.6"),
        ({"dim": 4, "delta_ratio": 0}, "delta_ratio must be in range (0, 0.5] (at least 1e-06); got 0"),
        ({"dim": 4, "delta_ratio": 5e-324}, "delta_ratio must be in range (0, 0.5] (at least 1e-06); got 5e-324"),
        (
            {"dim": 4, "dtype": "i8", "metric": "l2sq"},
            "dtype 'i8' stores values in [-1, 1] and suits metric 'cosine' or 'ip', not 'l2sq'",
        ),
    ],
)
def test_invalid_config_is_rejected(store: Store, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        store.create("c", **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("M", 1, "M must be an integer between 2 and 256; got 1"),
        ("M", 2**62, "M must be an integer between 2 and 256; got 4611686018427387904"),
        ("ef_search", 0, "ef_search must be an integer between 1 and 16384; got 0"),
        ("ef_search", 2**63, "ef_search must be an integer between 1 and 16384; got 9223372036854775808"),
        ("ef_construction", 2**63, "ef_construction must be an integer between 1 and 16384; got 9223372036854775808"),
        ("rng_seed", 2**63, "rng_seed must be an integer between 0 and 4294967295; got 9223372036854775808"),
        ("rng_seed", -1, "rng_seed must be an integer between 0 and 4294967295; got -1"),
        ("build_n_threads", 2**63, "build_n_threads must be an integer between 0 and 1024; got 9223372036854775808"),
        ("M", True, "M must be an integer between 2 and 256; got True"),
    ],
)
def test_invalid_params_are_rejected(field: str, value: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        HnswParams(**{field: value})
    assert str(info.value) == message


@pytest.mark.parametrize(("metric", "dtype"), [("cosine", "i8"), ("ip", "bf16"), ("l2sq", "bf16")])
def test_the_default_dtype_follows_the_metric_and_is_kept(
    tmp_path: Path, metric: str, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s")
    col = store.create("d", dim=DIM, metric=metric)  # type: ignore[arg-type]
    assert col.status().dtype == dtype
    # Persisted: a collection keeps its dtype when the rule changes.
    monkeypatch.setattr(manifest_module, "default_dtype", lambda metric: "f32")
    assert Store(tmp_path / "s").open("d").status().dtype == dtype
    assert store.create("e", dim=DIM, metric=metric).status().dtype == "f32"  # type: ignore[arg-type]
    assert json.loads((col.directory / "manifest.json").read_text())["config"]["dtype"] == dtype


def test_create_twice_and_open_missing(store: Store) -> None:
    store.create("c", dim=4)
    with pytest.raises(AlreadyExistsError, match="collection 'c/default' already exists"):
        store.create("c", dim=4)
    assert store.create("c", dim=4, exist_ok=True).dim == 4
    with pytest.raises(NotFoundError, match="collection 'nope/default' not found"):
        store.open("nope")


def test_open_does_not_serve_a_collection_dropped_elsewhere(store: Store) -> None:
    store.create("c", dim=4)
    assert store.open("c/default") is store.open("c")  # one object per collection, however named
    Store(store.root).drop("c")  # another Store object: another process, as far as `store` knows
    with pytest.raises(NotFoundError, match="collection 'c/default' not found"):
        store.open("c/default")
    with pytest.raises(ConfigError, match="collection name must be a string; got list"):
        store.open(["c"])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["../x", "a/b/c", "", "a/", "-a", "a b", "x" * 65, "a/.."])
def test_names_that_could_escape_the_store_are_rejected(store: Store, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid collection name"):
        store.create(name, dim=4)


def test_store_lists_collections(store: Store) -> None:
    store.create("b", dim=4)
    store.create("a/x", dim=4)
    store.create("a/y", dim=4)
    assert store.names() == ["a/x", "a/y", "b/default"]
    store.drop("a/x")
    assert store.names() == ["a/y", "b/default"]
    with pytest.raises(NotFoundError):
        store.drop("a/x")


# ---- the three write modes -----------------------------------------------------------


def test_build_replaces_everything(col: Collection) -> None:
    x = clustered(300, DIM)
    col.write(ids(300), x, mode="build")
    result = col.write(ids(50, "n"), x[:50], mode="build")
    assert (result.inserted, result.deleted) == (50, 300)
    assert sorted(col.keys()) == sorted(ids(50, "n"))
    assert col.status().deleted_count == 0


def test_insert_adds_and_refuses_existing_ids(col: Collection) -> None:
    x = clustered(200, DIM)
    col.write(ids(100), x[:100], mode="build")
    before = state(col)
    with pytest.raises(ConflictError) as info:
        col.write(["k5", "new1", "k7"], x[100:103], mode="insert")
    assert str(info.value) == (
        "write: 2 id(s) already exist: 'k5', 'k7'; use mode 'upsert' to replace them; nothing was applied"
    )
    assert info.value.keys == ["k5", "k7"]
    assert state(col) == before
    result = col.write(ids(100, "new"), x[100:], mode="insert")
    assert (result.inserted, result.updated) == (100, 0)
    assert len(col) == 200


def test_upsert_replaces_and_adds(col: Collection) -> None:
    x = clustered(200, DIM)
    col.write(ids(100), x[:100], mode="build")
    result = col.write(["k1", "k2", "brand-new"], x[150:153], mode="upsert")
    assert (result.inserted, result.updated) == (1, 2)
    assert len(col) == 101
    np.testing.assert_allclose(col.vectors(["k1", "brand-new"]), x[[150, 152]], rtol=1e-6)
    hits = col.search(x[150], 3)
    assert hits[0].id == "k1"
    # the replaced version of k1 is gone, not merely outranked
    assert [h.id for h in col.search(x[1], 200)].count("k1") == 1


@pytest.mark.parametrize("mode", ["build", "insert", "upsert"])
def test_repeated_id_in_one_write_applies_nothing(col: Collection, mode: str) -> None:
    x = clustered(10, DIM)
    col.write(ids(5), x[:5], mode="build")
    before = state(col)
    with pytest.raises(ConflictError, match=r"^write: ids repeated within one write: 'dup'; nothing was applied$"):
        col.write(["a", "dup", "b", "dup"], x[5:9], mode=mode)  # type: ignore[arg-type]
    assert state(col) == before


def test_bad_vectors_name_the_row(col: Collection) -> None:
    x = clustered(3, DIM)
    x[1, 4] = np.nan
    with pytest.raises(InputError, match=r"^write: vector contains NaN/Inf at row 1 \(id 'b'\), index 4$"):
        col.write(["a", "b", "c"], x, mode="build")
    with pytest.raises(DimensionError, match="vectors have 15 values, the collection 16"):
        col.write(["a"], np.zeros((1, 15)), mode="build")
    with pytest.raises(InputError, match="write: 2 ids but 3 vectors"):
        col.write(["a", "b"], clustered(3, DIM), mode="build")
    with pytest.raises(ConfigError, match="mode must be one of 'build', 'insert', 'upsert'; got 'append'"):
        col.write(["a"], clustered(1, DIM), mode="append")  # type: ignore[arg-type]
    assert len(col) == 0


@pytest.mark.parametrize(
    "key", ["", "x" * 10_000, "ünïcödé ✓ 日本語 🚀", "with\nnewline and \x00 nul", " spaces ", "k" * 31 + "é"]
)
def test_any_string_id_round_trips(col: Collection, key: str) -> None:
    x = clustered(20, DIM)
    col.write([key, *ids(19)], x, mode="build")
    assert col.search(x[0], 1)[0].id == key
    assert key in col.keys()
    moved = clustered(1, DIM, seed=99)[0]
    col.init("upsert")
    col.ingest(key, moved)
    col.finalize()
    assert col.search(moved, 1)[0].id == key
    assert col.delete([key]).deleted_count == 1
    assert key not in col


def test_ids_that_are_not_text_are_rejected(col: Collection) -> None:
    with pytest.raises(InputError, match="write: id at position 1 must be a string, got int"):
        col.write(["a", 7], clustered(2, DIM), mode="build")  # type: ignore[list-item]
    with pytest.raises(InputError, match="id at position 0 is not valid Unicode text"):
        col.write(["\ud800"], clustered(1, DIM), mode="build")


# ---- sessions -----------------------------------------------------------------------


def test_session_build_then_upsert(col: Collection) -> None:
    x = clustered(120, DIM)
    col.init("build")
    for i in range(20):
        col.ingest(f"k{i}", x[i])
    assert col.ingest_batch(ids(80, "b"), x[20:100]) == 80
    assert len(col) == 0, "nothing is visible before finalize"
    assert col.status().staged_count == 100
    result = col.finalize()
    assert (result.mode, result.inserted) == ("build", 100)
    assert len(col) == 100
    col.init("upsert")
    col.ingest_batch(["k0", "fresh"], x[100:102])
    result = col.finalize()
    assert (result.inserted, result.updated) == (1, 1)
    assert col.search(x[100], 1)[0].id == "k0"


def test_a_bad_vector_fails_its_own_call_and_keeps_the_session(col: Collection) -> None:
    x = clustered(5, DIM)
    col.init("build")
    col.ingest("a", x[0])
    with pytest.raises(DimensionError, match=r"^ingest: dimension mismatch: vector has 3 values, the collection 16$"):
        col.ingest("b", [1.0, 2.0, 3.0])
    bad = x[1].copy()
    bad[2] = np.inf
    with pytest.raises(InputError, match=r"^ingest: vector contains NaN/Inf at index 2$"):
        col.ingest("b", bad)
    with pytest.raises(InputError, match=r"^ingest_batch: vector contains NaN/Inf at row 1 \(id 'd'\), index 2$"):
        col.ingest_batch(["c", "d"], np.stack([x[2], bad]))
    col.ingest("e", x[4])
    col.finalize()
    assert sorted(col.keys()) == ["a", "e"]


def test_init_while_pending_says_how_to_end_it(col: Collection) -> None:
    col.init("upsert")
    col.ingest("a", clustered(1, DIM)[0])
    with pytest.raises(StateError) as info:
        col.init("build")
    assert str(info.value) == (
        "init: an ingest session is already pending on 'db/ns' (mode 'upsert', 1 vectors staged); "
        "call finalize() to apply it or abort() to discard it"
    )
    assert col.abort() == 1
    col.init("build")


def test_calls_out_of_order(col: Collection) -> None:
    with pytest.raises(StateError, match=r"^ingest: no pending ingest session on 'db/ns'; call init\(\) first$"):
        col.ingest("a", np.zeros(DIM))
    with pytest.raises(StateError, match=r"^finalize: no pending ingest session"):
        col.finalize()
    with pytest.raises(StateError, match=r"^abort: no pending ingest session"):
        col.abort()
    with pytest.raises(ConfigError, match=r"^init\(mode\): mode must be 'build', 'insert' or 'upsert'; got 'x'$"):
        col.init("x")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["build", "insert", "upsert"])
def test_session_id_repeated_within_session_applies_nothing_and_ends_it(col: Collection, mode: str) -> None:
    x = clustered(10, DIM)
    col.write(ids(3), x[:3], mode="build")
    before = state(col)
    col.init(mode)  # type: ignore[arg-type]
    col.ingest_batch(["a", "b"], x[3:5])
    col.ingest("a", x[5])
    with pytest.raises(ConflictError, match=r"^finalize: ids repeated within one write: 'a'; nothing was applied$"):
        col.finalize()
    assert state(col) == before
    assert col.status().session_mode is None
    col.init(mode)  # type: ignore[arg-type]  # the session ended, a new one may start


def test_session_insert_of_existing_id_applies_nothing(col: Collection) -> None:
    x = clustered(10, DIM)
    col.write(ids(3), x[:3], mode="build")
    before = state(col)
    col.init("insert")
    col.ingest_batch(["k1", "new", "k2"], x[3:6])
    with pytest.raises(ConflictError) as info:
        col.finalize()
    assert info.value.keys == ["k1", "k2"]
    assert "finalize: 2 id(s) already exist: 'k1', 'k2'" in str(info.value)
    assert state(col) == before
    assert col.status().session_mode is None


def test_staged_vectors_survive_a_new_process(col: Collection, store: Store) -> None:
    x = clustered(3, DIM)
    col.init("build")
    col.ingest_batch(["a", "b"], x[:2])
    del col
    script = textwrap.dedent(
        f"""
        import numpy as np
        from brinicle_etl import Collection
        c = Collection({str(store.path_for("db/ns"))!r})
        c.ingest("c", np.ones({DIM}, dtype=np.float32))
        print(c.finalize().inserted)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3"
    assert sorted(Collection(store.path_for("db/ns")).keys()) == ["a", "b", "c"]


def test_a_torn_record_at_the_end_of_the_log_is_dropped(col: Collection) -> None:
    x = clustered(3, DIM)
    col.init("build")
    col.ingest_batch(["a", "b"], x[:2])
    log = col.directory / "session.log"
    with open(log, "ab") as fh:
        fh.write(b"REC1\x05\x00\x00")  # a crash in the middle of the next record's header
    fresh = Collection(col.directory)
    assert fresh.status().staged_count == 2
    fresh.ingest("c", x[2])
    fresh.finalize()
    assert sorted(fresh.keys()) == ["a", "b", "c"]


# ---- delete -------------------------------------------------------------------------


def test_delete_counts_and_not_found(col: Collection) -> None:
    x = clustered(50, DIM)
    col.write(ids(50), x, mode="build")
    result = col.delete(["k1", "k2", "nope", "k1"], return_not_found=True)
    assert (result.deleted_count, result.not_found) == (2, ["nope"])
    again = col.delete(["k1", "k3"], return_not_found=True)
    assert (again.deleted_count, again.not_found) == (1, ["k1"])
    assert col.delete(["k4"]).not_found is None
    assert len(col) == 46
    assert all(h.id not in {"k1", "k2", "k3", "k4"} for h in col.search(x[1], 50))


# ---- search -------------------------------------------------------------------------


def test_search_empty_collection_returns_nothing(col: Collection) -> None:
    assert col.search(np.ones(DIM), 5) == []
    assert col.search_batch(np.ones((3, DIM)), 5) == [[], [], []]


def test_search_validates_its_arguments(col: Collection) -> None:
    col.write(["a"], clustered(1, DIM), mode="build")
    with pytest.raises(DimensionError, match="search: dimension mismatch: vector has 3 values, the collection 16"):
        col.search([1, 2, 3])
    with pytest.raises(ConfigError, match=r"^search: k must be an integer between 1 and 10000; got 0$"):
        col.search(np.ones(DIM), 0)
    with pytest.raises(ConfigError, match=r"^search_batch: k must be an integer between 1 and 10000; got 10001$"):
        col.search_batch(np.ones((1, DIM)), 10_001)
    with pytest.raises(ConfigError, match=r"^ef must be an integer between 1 and 16384; got -1$"):
        col.search(np.ones(DIM), 1, ef=-1)
    with pytest.raises(ConfigError, match=r"^ef must be an integer between 1 and 16384; got 9223372036854775808$"):
        col.search(np.ones(DIM), 1, ef=2**63)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2sq"])
def test_search_matches_exact_neighbours(store: Store, metric: str) -> None:
    x = clustered(2000, DIM, seed=3)
    col = store.create("m", dim=DIM, metric=metric, dtype="f32")  # type: ignore[arg-type]
    col.write(ids(2000), x, mode="build")
    q = clustered(50, DIM, seed=4)
    truth = exact_knn(x, q, 10, metric)
    got = col.search_batch(q, 10, ef=128)
    recall = np.mean([len({f"k{j}" for j in t} & {h.id for h in g}) / 10 for t, g in zip(truth, got, strict=True)])
    assert recall > 0.95
    single = col.search(q[0], 10, ef=128)
    assert [h.id for h in single] == [h.id for h in got[0]]
    assert all(a.distance <= b.distance for a, b in itertools.pairwise(single))


def test_tombstones_never_eat_results(col: Collection) -> None:
    x = clustered(1000, DIM, seed=7, centers=4)
    col.write(ids(1000), x, mode="build")
    q = x[:20]
    # delete each query's 200 nearest neighbours, and 90% of everything else
    near = exact_knn(x, q, 200)
    doomed = {f"k{j}" for j in near.ravel()} | {f"k{j}" for j in range(1000) if j % 10}
    col.delete(sorted(doomed))
    live = set(col.keys())
    assert 0 < len(live) < 100
    for k in (5, len(live), len(live) + 10):
        results = col.search_batch(q, k)
        for hits in results:
            assert len(hits) == min(k, len(live))
            assert {h.id for h in hits} <= live
    assert len(col.search(q[0], len(live))) == len(live)


def test_search_spans_main_and_delta(col: Collection) -> None:
    x = clustered(600, DIM, seed=9)
    col.write(ids(500), x[:500], mode="build")
    col.write(ids(100, "d"), x[500:], mode="insert")
    status = col.status()
    assert (status.main_count, status.delta_count) == (500, 100)
    truth = exact_knn(x, x[480:520], 5)
    names = [f"k{j}" if j < 500 else f"d{j - 500}" for j in range(600)]
    got = col.search_batch(x[480:520], 5, ef=200)
    hits = sum(len({names[j] for j in t} & {h.id for h in g}) for t, g in zip(truth, got, strict=True))
    assert hits / (40 * 5) > 0.95


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize(
    ("metric", "dtype", "delta_rows"),
    [("l2sq", "f32", 6), ("l2sq", "f32", 200), ("cosine", "i8", 6), ("cosine", "i8", 700)],
    ids=["a tiny delta (searched exactly)", "a delta", "i8, a tiny delta", "i8, a delta (re-scored)"],
)
def test_one_query_over_main_delta_pending_and_tombstones_finds_the_exact_neighbours(
    store: Store, metric: str, dtype: str, delta_rows: int, cores: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With two cores and a delta worth a graph search, main and delta are searched in one
    # native call (snapshot._search_joint); otherwise one after the other. An i8 graph's
    # candidates are re-scored on its vectors file, jointly too.
    monkeypatch.setattr(snapshot_module, "_CPUS", cores)
    # The pending vectors stay pending throughout (a background job would link them).
    monkeypatch.setattr(indexing, "start", lambda *args: None)
    alone: list[str] = []
    by_segment = snapshot_module.Snapshot._search_segment

    def spy(self: snapshot_module.Snapshot, seg: object, *args: object, **kwargs: object) -> object:
        alone.append(type(seg).__name__)
        return by_segment(self, seg, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_module.Snapshot, "_search_segment", spy)
    col = store.create("db/one", dim=DIM, metric=metric, dtype=dtype)  # type: ignore[arg-type]
    x = clustered(1000 + delta_rows + 40, DIM, seed=17, normalize=metric == "cosine")
    names = [f"k{i}" for i in range(len(x))]
    col.write(names[:1000], x[:1000], mode="build")
    col.write(names[1000 : 1000 + delta_rows], x[1000 : 1000 + delta_rows], mode="insert")
    col.delete(names[:1000:3] + names[1000 : 1000 + delta_rows : 2])
    # Left pending (compared exactly): a deferred write, deleting a few more main rows with it.
    deferred(col, names[1000 + delta_rows :], x[1000 + delta_rows :], delete=names[2:1000:9][:10])
    gone = names[:1000:3] + names[1000 : 1000 + delta_rows : 2] + names[2:1000:9][:10]
    status = col.status()
    assert status.main_count and status.delta_count and status.pending_count
    live = [i for i, name in enumerate(names) if name not in set(gone)]
    queries = x[[1, 5, 1000, 1001, len(x) - 8]] + 0.01
    truth = exact_knn(x[live], queries, 10, metric)
    single: list[str] = []
    for q, want in zip(queries, truth, strict=True):
        before = len(alone)
        one = col.search(q, 10, ef=500)
        single += alone[before:]
        assert [h.id for h in one] == [names[live[j]] for j in want]
        batch = col.search_batch(q[None], 10, ef=500)[0]
        assert [h.id for h in one] == [h.id for h in batch]
        # One query and many are scored by different products (pending rows, i8 re-scoring):
        # they may round differently, by float32's resolution of distances near 1.
        np.testing.assert_allclose([h.distance for h in one], [h.distance for h in batch], rtol=1e-5, atol=1e-6)
    joint = cores == 2 and delta_rows > 6
    assert (col._snapshot()._joint is not None) == joint
    if joint:  # the graph segments answered together; only the pending vectors alone
        assert set(single) == {"FlatSegment"}


def test_one_query_whose_joint_candidates_are_mostly_tombstoned_is_answered_segment_by_segment(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot_module, "_CPUS", 2)
    col = store.create("db/holes", dim=DIM, metric="l2sq", dtype="f32")
    x = clustered(1400, DIM, seed=23, normalize=False)
    names = [f"k{i}" for i in range(len(x))]
    col.write(names[:1200], x[:1200], mode="build")
    col.write(names[1200:], x[1200:], mode="insert")
    q = x[7] + 0.01
    # The 40 main rows nearest the query, and a tenth of the rest, are gone: the joint
    # search's few extra candidates cannot cover them.
    near = exact_knn(x[:1200], q[None], 40, "l2sq")[0].tolist()
    gone = sorted(set(near) | set(range(0, 1200, 10)))
    col.delete([names[i] for i in gone])
    calls: list[int] = []
    by_segment = snapshot_module.Snapshot._search_segment

    def spy(self: snapshot_module.Snapshot, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return by_segment(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_module.Snapshot, "_search_segment", spy)
    live = [i for i in range(len(x)) if i not in set(gone)]
    want = exact_knn(x[live], q[None], 10, "l2sq")[0]
    assert [h.id for h in col.search(q, 10, ef=500)] == [names[live[j]] for j in want]
    assert col._snapshot()._joint is not None and calls


@pytest.mark.parametrize("dtype", ["f32", "i8"])
def test_a_build_past_one_graphs_rows_is_several_graphs_searched_as_one(
    store: Store, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    monkeypatch.setattr(segment_module, "GRAPH_ROWS", 400)
    monkeypatch.setattr(snapshot_module, "_CPUS", 2)
    col = store.create("db/big", dim=DIM, dtype=dtype, params=HnswParams(build_n_threads=2))  # type: ignore[arg-type]
    x = clustered(1000, DIM, seed=31)
    names = ids(1000)
    col.write(names, x, mode="build")
    m = read_manifest(col.directory)
    # 400 rows in the first graph, 400 in the second, then the rest to the smaller
    assert [graph.count for graph in m.main] == [600, 400]
    assert json.loads((col.directory / "manifest.json").read_text())["format"] == 4
    assert (col.status().main_count, col.status().has_index) == (1000, True)

    def check(col: Collection, live: list[int], vectors: np.ndarray, *, joint: bool = True) -> None:
        queries = vectors[[3, 650, 999]] + 0.01
        truth = exact_knn(vectors[live], queries, 10)
        for q, want in zip(queries, truth, strict=True):
            one = [h.id for h in col.search(q, 10, ef=500)]
            assert one == [names[live[j]] for j in want]
            assert [h.id for h in col.search_batch(q[None], 10, ef=500)[0]] == one
        # the graphs answered one query together (a delta of two rows is compared exactly)
        assert (col._snapshot()._joint is not None) == joint

    check(col, list(range(1000)), x)
    assert np.array_equal(col.vectors(["k3", "k999"]), x[[3, 999]])
    # Tombstones in both graphs, no delta: still one native call over the graphs.
    col.delete(["k3", "k650"])
    check(col, [i for i in range(1000) if i not in (3, 650)], x)
    col.write(["k3", "k650"], x[[3, 650]], mode="insert")
    # An upsert and a delete touching both graphs (rows 0-399 and 800-999 are in the
    # first): each counts its own dead rows.
    changed = x.copy()
    changed[[5, 700]] = x[[6, 701]]
    col.write(["k5", "k700"], changed[[5, 700]], mode="upsert", delete=["k10", "k900", "k901"])
    m = read_manifest(col.directory)
    assert [graph.dead for graph in m.main] == [5, 2]  # with k3 and k650, deleted above
    live = [i for i in range(1000) if names[i] not in {"k10", "k900", "k901"}]
    check(store.open("db/big"), live, changed, joint=False)
    col.rebuild()
    m = read_manifest(col.directory)
    assert [graph.count for graph in m.main] == [499, 498] and m.delta is None  # the total known: even
    check(col, live, changed)


# ---- status, rebuild, optimize ---------------------------------------------------------


def test_status_counts(col: Collection) -> None:
    x = clustered(130, DIM)
    col.write(ids(100), x[:100], mode="build")
    col.write(ids(30, "d"), x[100:], mode="insert")
    col.delete(["k0", "d0"])
    s = col.status()
    assert (s.live_count, s.main_count, s.delta_count, s.deleted_count) == (128, 99, 29, 2)
    assert s.generation == 3
    assert s.bytes_on_disk == sum(p.stat().st_size for p in col.directory.iterdir() if p.name != ".lock")
    assert s.has_index and s.needs_rebuild  # 29 live delta vectors >= 0.1 * 128


def test_needs_rebuild_follows_delta_ratio(store: Store) -> None:
    col = store.create("r", dim=DIM, dtype="f32", delta_ratio=0.2)
    x = clustered(200, DIM)
    col.write(ids(100), x[:100], mode="build")
    col.delete(ids(15))
    assert not col.status().needs_rebuild  # 15 < 0.2 * 85
    assert col.optimize() is False
    col.delete(["k15", "k16"])
    assert col.status().needs_rebuild  # 17 >= 0.2 * 83
    generation = col.generation
    assert col.optimize() is True
    s = col.status()
    assert (s.needs_rebuild, s.deleted_count, s.main_count, s.generation) == (False, 0, 83, generation + 1)


def test_rebuild_keeps_params_unless_given_and_keeps_data(col: Collection) -> None:
    x = clustered(300, DIM)
    col.write(ids(200), x[:200], mode="build")
    col.write(ids(100, "d"), x[200:], mode="upsert")
    col.delete(ids(50))
    before = state(col)
    own = col.config.params
    col.rebuild()
    assert col.config.params == own
    assert state(col) == before
    s = col.status()
    assert (s.main_count, s.delta_count, s.deleted_count) == (250, 0, 0)
    assert len(list(col.directory.glob("rows-*"))) == 1
    col.rebuild({"M": 8, "ef_search": 99})
    assert col.config.params == dataclasses.replace(own, M=8, ef_search=99)
    assert Collection(col.directory).config.params.M == 8
    assert state(col) == before


def test_finalize_params_apply_to_a_build(col: Collection) -> None:
    col.init("build")
    col.ingest_batch(ids(10), clustered(10, DIM))
    col.finalize(params={"M": 24, "ef_construction": 300, "unknown": 1})
    assert (col.config.params.M, col.config.params.ef_construction) == (24, 300)


def test_finalize_optimize_merges_when_needed(col: Collection) -> None:
    x = clustered(150, DIM)
    col.write(ids(100), x[:100], mode="build")
    col.init("insert")
    col.ingest_batch(ids(50, "n"), x[100:])
    col.finalize(optimize=True)
    s = col.status()
    assert (s.main_count, s.delta_count, s.live_count) == (150, 0, 150)


def test_small_insert_goes_to_the_delta_without_touching_main(col: Collection) -> None:
    x = clustered(1010, DIM)
    col.write(ids(1000), x[:1000], mode="build")
    main_files = sorted(p.name for p in col.directory.glob("main-*"))
    col.write(ids(10, "n"), x[1000:], mode="insert")
    assert sorted(p.name for p in col.directory.glob("main-*")) == main_files
    assert col.status().delta_count == 10


def test_main_is_memory_mapped(col: Collection) -> None:
    col.write(ids(500), clustered(500, DIM), mode="build")
    reader = Collection(col.directory)
    reader.search(np.ones(DIM), 3)
    main = next(col.directory.glob("main-*")).name
    maps = Path("/proc/self/maps").read_text()
    assert main in maps


# ---- files, locks and other processes ------------------------------------------------


def test_stray_files_are_cleaned_on_the_next_write(col: Collection) -> None:
    col.write(["a"], clustered(1, DIM), mode="build")
    for name in ("main-00000009-deadbeef.usearch", "rows-00000009-deadbeef.parquet", "manifest.json.tmp-1234"):
        (col.directory / name).write_bytes(b"half-written")
    (col.directory / "notes.txt").write_text("not ours")
    col.write(["b"], clustered(1, DIM), mode="upsert")
    names = {p.name for p in col.directory.iterdir()}
    assert "main-00000009-deadbeef.usearch" not in names
    assert "manifest.json.tmp-1234" not in names
    assert "notes.txt" in names


def test_a_second_writer_gets_a_clear_error_or_waits(col: Collection) -> None:
    x = clustered(2, DIM)
    with writer_lock(col.directory, name="db/ns"):
        with pytest.raises(LockedError) as info:
            col.write(["a"], x[:1], mode="build")
        assert str(info.value).startswith("collection 'db/ns' is locked by another writer")
        assert "pass wait=True to wait for it" in str(info.value)
    script = textwrap.dedent(
        f"""
        import time, sys
        from pathlib import Path
        from brinicle_etl.store.lock import writer_lock
        with writer_lock(Path({str(col.directory)!r})):
            print("locked", flush=True)
            time.sleep(1.0)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(LockedError, match=r"locked by another writer \(pid \d+\)"):
        col.write(["a"], x[:1], mode="build")
    started = time.monotonic()
    col.write(["a"], x[:1], mode="build", wait=True)
    assert time.monotonic() - started > 0.2
    assert proc.wait() == 0


def test_reader_in_another_process_sees_new_generations(col: Collection) -> None:
    x = clustered(40, DIM)
    col.write(ids(20), x[:20], mode="build")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        from brinicle_etl import Collection
        c = Collection({str(col.directory)!r})
        for line in sys.stdin:
            q = np.array([float(v) for v in line.split()], dtype=np.float32)
            print(len(c), c.search(q, 1)[0].id, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(v: np.ndarray) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(" ".join(map(repr, v.tolist())) + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    assert ask(x[30]).startswith("20 ")
    col.write(["late"], x[30:31], mode="insert")
    time.sleep(2 * REFRESH_SECONDS)  # readers look for a new manifest at most this often
    assert ask(x[30]) == "21 late"
    col.rebuild()
    col.delete(["late"])
    time.sleep(2 * REFRESH_SECONDS)
    assert ask(x[30]).startswith("20 k")
    proc.stdin.close()
    assert proc.wait() == 0


def test_environment_store_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRINICLE_STORE", str(tmp_path / "env-store"))
    assert Store().root == tmp_path / "env-store"
    monkeypatch.delenv("BRINICLE_STORE")
    assert Store().root == Path("brinicle_store")
    assert os.fspath(Store(tmp_path).root) == str(tmp_path)


# ---- filtered search ------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0005, 0.01, 0.5])
def test_allowed_rows_keep_k_results(store: Store, share: float) -> None:
    """Few allowed rows are searched exactly, many through the graph; either way k allowed rows come back."""
    n = 12_000
    x = clustered(n, DIM, seed=21)
    col = store.create("f", dim=DIM, dtype="f32")
    col.write(ids(n), x, mode="build")
    rng = np.random.default_rng(3)
    allowed_idx = np.sort(rng.choice(n, max(3, int(n * share)), replace=False))
    col.delete([f"k{allowed_idx[0]}"])  # a deleted row in the allowed set never comes back
    live_allowed = allowed_idx[1:]
    allow = [f"k{i}" for i in allowed_idx]
    q = clustered(20, DIM, seed=22)
    k = 10
    got = col.search_batch(q, k, allow=allow, ef=128)
    truth = exact_knn(x[live_allowed], q, k)
    recalls = []
    for hits, t in zip(got, truth, strict=True):
        assert len(hits) == min(k, len(live_allowed))
        assert {h.id for h in hits} <= {f"k{i}" for i in live_allowed}
        recalls.append(len({h.id for h in hits} & {f"k{live_allowed[j]}" for j in t}) / len(hits))
    assert np.mean(recalls) >= (1.0 if len(live_allowed) <= 4096 else 0.9)
    single = col.search(q[0], k, allow=allow, ef=128)
    assert [h.id for h in single] == [h.id for h in got[0]]
    assert all(a.distance <= b.distance for a, b in itertools.pairwise(single))


@pytest.fixture
def gathered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many vectors each ``Segment.get`` call fetched, in order."""
    from brinicle_etl.store.segment import Segment

    counts: list[int] = []
    real_get = Segment.get

    def counting_get(self: Segment, keys: np.ndarray) -> np.ndarray:
        counts.append(len(keys))
        return real_get(self, keys)

    monkeypatch.setattr(Segment, "get", counting_get)
    return counts


@pytest.mark.parametrize("shards", [None, 3])
def test_a_cached_filter_is_compared_exactly_and_gathered_once(
    store: Store, gathered: list[int], shards: int | None
) -> None:
    # 10% of 12,000 rows: past the one-off exact share, within a cached filter's.

    n = 12_000
    x = clustered(n, DIM, seed=23)
    col = store.create("f", dim=DIM, dtype="f32", shards=shards)
    col.write(ids(n), x, mode="build")
    col.delete(["k10"])  # tombstones: the allowed rows are narrowed to live ones per query
    members = [i for i in range(0, n, 10) if i != 10]
    row_ids = col.filtered(
        "test:every tenth", lambda: col.search_table(x[members], 1, ef=256).column("_row_id").to_numpy()
    )
    assert len(row_ids) == len(members)
    q = clustered(12, DIM, seed=24)
    truth = exact_knn(x[members], q, 10)
    for i, query in enumerate(q):
        table = col.search_table(query[None], 10, allow_row_ids=row_ids)
        assert table.column("_key").to_pylist() == [f"k{members[j]}" for j in truth[i]]
        if i == 0:
            assert sum(gathered) == len(members)
            gathered.clear()
    assert gathered == []  # the next queries only compared


def test_filters_past_what_can_be_kept_go_through_the_graph_instead_of_gathering_again(
    store: Store, monkeypatch: pytest.MonkeyPatch, gathered: list[int]
) -> None:
    # Queries cycling over more filters than their vectors can be kept for would gather
    # them on every query; the ones that do not fit take the graph path instead.
    import pyarrow as pa

    from brinicle_etl.store import snapshot

    monkeypatch.setattr(snapshot, "EXACT_KEPT_BYTES", 0)  # the budget: the collection's own vectors
    n = 25_000  # filters of 5,000 rows: past the 4,096 always compared exactly
    x = clustered(n, DIM, seed=25)
    col = store.create("f", dim=DIM, dtype="f32")
    col.write(ids(n), x, mode="build")
    snap = col.snapshot()
    filters = [
        col.filtered(f"test:{f}", lambda f=f: snap.ids.lookup(pa.array(ids(n)[f * 1000 : f * 1000 + 5000])))
        for f in range(6)
    ]  # 20% each, ids and vectors: four fit within the collection's own vectors' size, the fifth does not
    q = clustered(1, DIM, seed=26)
    for round_ in range(2):
        for i, allowed in enumerate(filters):
            gathered.clear()
            found = col.search_table(q, 5, allow_row_ids=allowed, ef=256).column("_key").to_pylist()
            assert len(found) == 5 and set(found) <= set(ids(n)[i * 1000 : i * 1000 + 5000])
            assert gathered == ([5000] if round_ == 0 and i < 4 else []), (round_, i, gathered)


def test_allowed_keys_that_do_not_exist_are_ignored(col: Collection) -> None:
    x = clustered(50, DIM)
    col.write(ids(50), x, mode="build")
    hits = col.search(x[0], 5, allow=["k3", "k4", "nope"])
    assert sorted(h.id for h in hits) == ["k3", "k4"]
    assert col.search(x[0], 5, allow=[]) == []


def test_sampled_recall_against_exact_search(col: Collection) -> None:
    x = clustered(3000, DIM, seed=31)
    col.write(ids(3000), x, mode="build")
    col.delete(ids(300))
    good = col.recall(sample=200, k=10, ef=200)
    assert 0.95 <= good <= 1.0
    # the same number computed by hand: graph search against numpy over the live vectors
    rng = np.random.default_rng(0)
    live = np.arange(300, 3000)
    picked = np.sort(rng.choice(live, 200, replace=False))
    queries = col.vectors([f"k{i}" for i in picked])
    approx = col.search_batch(queries, 10, ef=7)
    stored = col.vectors([f"k{i}" for i in live])
    truth = exact_knn(stored, queries, 10) + 300
    by_hand = np.mean([len({h.id for h in a} & {f"k{j}" for j in t}) / 10 for a, t in zip(approx, truth, strict=True)])
    assert col.recall(sample=200, k=10, ef=7) == pytest.approx(by_hand, abs=0.01)
    # exact search itself agrees with numpy on the live rows
    snap = col._snapshot()
    q = clustered(5, DIM, seed=32)
    row_ids, _, counts = snap.search(q, 10, ef=None, threads=0, exact=True)
    truth = exact_knn(x[300:], q, 10) + 300
    for i in range(5):
        assert set(snap.ids.keys_for(row_ids[i, : counts[i]])) == {f"k{j}" for j in truth[i]}


def test_recall_of_an_empty_collection_is_one(col: Collection) -> None:
    assert col.recall() == 1.0


def test_rows_of_hits_come_from_every_row_file_in_the_order_asked(store: Store) -> None:
    import pyarrow as pa

    col = store.create("db/rows", dim=DIM)
    x = clustered(90, DIM, seed=21)
    for start in (0, 30, 60):  # three writes: three row files
        part = range(start, start + 30)
        col.write([f"k{i}" for i in part], x[start : start + 30], rows=pa.table({"n": list(part)}))
    col.write(["k5", "k70"], x[[5, 70]], rows=pa.table({"n": [1005, 1070]}))  # a fourth, replacing two rows
    snap = col.snapshot()
    live = snap.rows(["n"])
    by_key = dict(zip(live.column("_key").to_pylist(), live.column("n").to_pylist(), strict=True))
    rng = np.random.default_rng(3)
    for count in (25, live.num_rows):  # a search's few rows (by slices), a batch's many (by takes)
        ids = live.column("_row_id").to_numpy()[rng.permutation(live.num_rows)[:count]]
        got = snap.rows_at(ids, ["_key", "n"])
        expected = live.take(pa.array(np.searchsorted(live.column("_row_id").to_numpy(), ids)))
        assert got.column("_key").to_pylist() == expected.column("_key").to_pylist()
        assert got.column("n").to_pylist() == [by_key[k] for k in got.column("_key").to_pylist()]
    table = col.search_table(x[[5, 40, 70]], 5, columns=None)
    for key, n in zip(table.column("_key").to_pylist(), table.column("n").to_pylist(), strict=True):
        assert by_key[key] == n
    assert by_key["k5"] == 1005 and by_key["k70"] == 1070


@pytest.mark.parametrize("n_queries", [1, 4], ids=["one query", "a batch"])
def test_search_rows_give_each_hit_the_row_search_table_gives(store: Store, n_queries: int) -> None:
    import pyarrow as pa

    col = store.create("db/rowhits", dim=DIM)
    x = clustered(90, DIM, seed=21)
    col.write(ids(60), x[:60], rows=pa.table({"n": list(range(60)), "title": [f"t{i}" for i in range(60)]}))
    later = {"n": list(range(60, 90)), "title": [None] * 30, "price": [i / 4 for i in range(60, 90)]}
    col.write([f"k{i}" for i in range(60, 90)], x[60:], rows=pa.table(later))  # a column the first file lacks
    col.write(["k7"], x[[7]], rows=pa.table({"n": [1007], "title": ["seven"]}))  # a third file; k7's first row dead
    col.delete(["k3", "k61"])
    q = x[[3, 7, 61, 80]][:n_queries] + 0.01
    found = col.search_rows(q, 5)
    table = col.search_table(q, 5, columns=None)
    expected: list[list[tuple[str, float, dict[str, object]]]] = [[] for _ in range(n_queries)]
    for row in table.to_pylist():
        own = {name: row[name] for name in ("n", "title", "price")}
        expected[row["query"]].append((row["_key"], row["distance"], own))
    assert [[(h.id, h.distance, h.row) for h in hits] for hits in found] == expected
    assert found[0][0].id != "k3" and all(len(hits) == 5 for hits in found)
    if n_queries > 1:
        assert found[1][0].row == {"n": 1007, "title": "seven", "price": None}
        assert {"n": 80, "title": None, "price": 20.0} in [h.row for h in found[3]]


def test_a_store_by_location_is_one_object_per_process(tmp_path: Path) -> None:
    assert Store.shared(tmp_path / "s") is Store.shared(str(tmp_path / "s") + "/")
    assert Store.shared(tmp_path / "s") is not Store.shared(tmp_path / "t")


def test_a_reader_never_takes_an_older_generation_while_another_thread_opens_the_new_one(
    col: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from brinicle_etl.store import current as current_module

    col.write(ids(10), clustered(10, DIM), mode="build")
    assert col.snapshot().manifest.generation == 1
    Collection(col.directory).write(["new"], clustered(1, DIM, seed=5))  # generation 2, published here
    opening, original = threading.Event(), current_module.Snapshot

    def slow(*args: object, **kwargs: object) -> object:
        opening.set()
        time.sleep(0.3)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(current_module, "Snapshot", slow)
    other = threading.Thread(target=col.snapshot)
    other.start()
    assert opening.wait(10)
    assert col.snapshot().manifest.generation == 2  # not generation 1 while the other thread opens 2
    other.join()
