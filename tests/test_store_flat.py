"""Pending vectors: written by a deferred write, found by exact search, linked by the next
write or the background job (the job itself is tested in test_store_indexing.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import Collection, CorruptCollectionError, Store
from brinicle_etl.store import writer
from brinicle_etl.store.flat import FlatSegment, exact_distances, write_flat
from tests.conftest import clustered, deferred, exact_knn

DIM = 16


def ids(n: int, start: int = 0) -> list[str]:
    return [f"k{i}" for i in range(start, start + n)]


@contextmanager
def indexing_held(col: Collection) -> Iterator[None]:
    """Keep the background job out (it waits for the writer lock this object holds), so the
    test sees the pending vectors; afterwards let it run and wait for it."""
    col.hold_writer_lock()
    try:
        yield
    finally:
        col.release_writer_lock()
    col.index_pending(wait=True)  # waits for the job first: nothing is left for it


@pytest.fixture
def col(store: Store) -> Collection:
    c = store.create("db/ns", dim=DIM, dtype="f32")
    c.write(ids(400), clustered(400, DIM, seed=1), mode="build")
    return c


# ---- the file and its exact search ---------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2sq"])
def test_flat_search_is_exact_and_padded(tmp_path: Path, metric: str) -> None:
    x = clustered(50, DIM, seed=2, normalize=metric != "l2sq")
    row_ids = np.arange(100, 150, dtype=np.uint64)
    write_flat(tmp_path / "p.npz", row_ids, x)
    seg = FlatSegment(tmp_path / "p.npz", metric=metric)
    queries = clustered(5, DIM, seed=3, normalize=metric != "l2sq")
    keys, dists, counts = seg.search(queries, 60, ef=None, exact=False, threads=1)
    assert keys.shape == (5, 60) and counts.tolist() == [50] * 5
    assert (keys[:, 50:] == np.uint64(2**64 - 1)).all() and np.isinf(dists[:, 50:]).all()
    assert (keys[:, :10] - 100).tolist() == exact_knn(x, queries, 10, metric).tolist()
    expected = exact_distances(queries, x, metric)
    np.testing.assert_allclose(dists[:, 0], expected.min(axis=1), rtol=1e-5, atol=1e-5)
    one_keys, _ = seg.search_one(queries[0], 3, ef=None)
    assert one_keys.tolist() == keys[0, :3].tolist()


def test_flat_lookups(tmp_path: Path) -> None:
    x = clustered(20, DIM, seed=4)
    row_ids = np.arange(20, dtype=np.uint64)[::-1].copy()  # stored in any order
    write_flat(tmp_path / "p.npz", row_ids, x)
    seg = FlatSegment(tmp_path / "p.npz", metric="cosine")
    assert seg.contains(np.array([0, 19, 20, 99], np.uint64)).tolist() == [True, True, False, False]
    np.testing.assert_array_equal(seg.get(np.array([19, 0], np.uint64)), x[[0, 19]])
    live_ids, live = seg.vectors(np.array([3, 5], np.uint64))
    assert sorted(live_ids.tolist()) == [i for i in range(20) if i not in (3, 5)]
    np.testing.assert_array_equal(live, x[[19 - int(i) for i in live_ids]])
    with pytest.raises(KeyError):
        seg.get(np.array([42], np.uint64))


def test_a_damaged_pending_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "p.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptCollectionError, match="cannot read pending vectors"):
        FlatSegment(tmp_path / "p.npz", metric="cosine")


# ---- deferred writes -------------------------------------------------------------------


def test_a_deferred_upsert_is_found_at_once_and_after_linking(col: Collection) -> None:
    new = clustered(60, DIM, seed=5)
    with indexing_held(col):
        deferred(col, ids(30) + ids(30, start=1000), new)  # 30 replaced, 30 new
        status = col.status()
        assert (status.main_count, status.delta_count, status.pending_count) == (370, 0, 60)
        assert json.loads((col.directory / "manifest.json").read_text())["format"] == 2
        pending_hits = [col.search(q, 1)[0] for q in new]
        assert [(h.id, h.distance < 1e-5) for h in pending_hits] == [(k, True) for k in ids(30) + ids(30, 1000)]
        allowed = col.search(new[0], 3, allow=["k0", "k5", "k399"])
        assert allowed[0].id == "k0" and {h.id for h in allowed} == {"k0", "k5", "k399"}
    status = col.status()
    assert (status.main_count, status.delta_count, status.pending_count) == (370, 60, 0)
    assert json.loads((col.directory / "manifest.json").read_text())["format"] == 1
    assert [col.search(q, 1)[0].id for q in new] == ids(30) + ids(30, 1000)
    np.testing.assert_allclose(col.vectors(["k0", "k1000"]), new[[0, 30]], atol=1e-6)


def test_pending_rows_replaced_or_deleted_are_never_found(col: Collection) -> None:
    first = clustered(40, DIM, seed=6)
    second = clustered(10, DIM, seed=7)
    with indexing_held(col):
        deferred(col, ids(40, start=500), first)
        # rewrites the pending file with the live ones only: 10 replaced, 5 deleted, 25 kept
        deferred(col, ids(10, start=500), second, delete=ids(5, start=530))
        assert col.status().pending_count == 35
        gone = set(ids(5, start=530))
        for q in first[30:35]:
            assert not gone & {h.id for h in col.search(q, 10)}
        assert [col.search(q, 1)[0].id for q in second] == ids(10, start=500)
        assert len(col) == 435
    assert col.status().pending_count == 0 and len(col) == 435
    assert [col.search(q, 1)[0].id for q in first[10:30]] == ids(20, start=510)


def test_a_write_that_links_takes_the_pending_vectors_along(col: Collection) -> None:
    pending, linked = clustered(20, DIM, seed=8), clustered(5, DIM, seed=9)
    with indexing_held(col):
        deferred(col, ids(20, start=600), pending)
        col.write(ids(5, start=700), linked)  # not deferred
        status = col.status()
        assert (status.delta_count, status.pending_count) == (25, 0)
        assert [col.search(q, 1)[0].id for q in pending] == ids(20, start=600)


def test_deletes_alone_count_pending_rows_dead(col: Collection) -> None:
    with indexing_held(col):
        deferred(col, ids(10, start=800), clustered(10, DIM, seed=10))
        assert col.delete(ids(3, start=800)).deleted_count == 3
        status = col.status()
        assert (status.pending_count, status.live_count) == (7, 407)


def test_a_deferred_write_too_large_for_exact_search_is_linked(
    col: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "PENDING_BYTES", 50 * 4 * DIM)  # room for 50 vectors
    with indexing_held(col):
        deferred(col, ids(40, start=900), clustered(40, DIM, seed=11))
        assert col.status().pending_count == 40
        deferred(col, ids(40, start=950), clustered(40, DIM, seed=12))  # 80 > 50
        status = col.status()
        assert (status.delta_count, status.pending_count) == (80, 0)


def test_build_and_rebuild_leave_nothing_pending(col: Collection) -> None:
    x = clustered(30, DIM, seed=13)
    with indexing_held(col):
        deferred(col, ids(30, start=2000), x)
        col.rebuild()
        status = col.status()
        assert (status.main_count, status.delta_count, status.pending_count) == (430, 0, 0)
        assert [col.search(q, 1)[0].id for q in x] == ids(30, start=2000)
        deferred(col, ids(5, start=3000), x[:5])
        col.write(ids(3), x[:3], mode="build")
        status = col.status()
        assert (status.main_count, status.pending_count, status.live_count) == (3, 0, 3)


def test_a_first_write_builds_its_index_even_when_deferred(store: Store) -> None:
    col = store.create("db/fresh", dim=DIM, dtype="f32")
    deferred(col, ids(50), clustered(50, DIM, seed=14))
    status = col.status()
    assert (status.main_count, status.pending_count) == (50, 0)
