"""usearch files: what a build must guarantee whatever the threads."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl.store import segment as segment_module
from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.segment import Segment
from brinicle_etl.types import HnswParams
from tests.conftest import build_one, clustered


@pytest.mark.parametrize("threads", [1, 2, 0])
@pytest.mark.parametrize("seed", range(8))
def test_every_vector_of_a_build_finds_itself(tmp_path: Path, threads: int, seed: int) -> None:
    # 300 low-dimensional vectors built by two threads strand a node in most builds
    # unless the build links them again (usearch#735).
    x = clustered(300, 8, seed=seed, normalize=False)
    keys = np.arange(300, dtype=np.uint64)
    config = CollectionConfig(dim=8, metric="l2sq", dtype="f32")
    params = HnswParams(ef_construction=128, rng_seed=seed, build_n_threads=threads)
    assert build_one(tmp_path / "s.usearch", keys, x, config, params).count == 300
    seg = Segment(tmp_path / "s.usearch", ef_search=64)
    # No vector is lost: each finds itself when the search may visit every node...
    found, _, _ = seg.search(x, 1, ef=300, exact=False, threads=1)
    assert np.flatnonzero(found[:, 0] != keys).tolist() == []
    # ...and nearly all at the default ef (a few are hard to reach in a concurrent build:
    # at most 3 of 300 in 400 builds measured).
    found, _, _ = seg.search(x, 1, ef=None, exact=False, threads=1)
    assert (found[:, 0] != keys).sum() <= 6


def test_duplicate_vectors_keep_their_keys(tmp_path: Path) -> None:
    x = clustered(200, 8, seed=1, normalize=False)
    x = np.concatenate([x, x])  # every vector twice, under two keys
    keys = np.arange(400, dtype=np.uint64)
    config = CollectionConfig(dim=8, metric="l2sq", dtype="f32")
    assert build_one(tmp_path / "d.usearch", keys, x, config, HnswParams(build_n_threads=2)).count == 400
    found, dists, _ = Segment(tmp_path / "d.usearch", ef_search=64).search(x[:200], 2, ef=None, exact=False, threads=1)
    assert [set(row) for row in found.tolist()] == [{i, i + 200} for i in range(200)]
    assert np.all(dists == 0)


def test_many_copies_of_one_vector_build_and_the_rest_find_themselves(tmp_path: Path) -> None:
    distinct = clustered(300, 8, seed=3, normalize=False)
    x = np.concatenate([distinct, np.repeat(distinct[:1] + 100, 2000, axis=0)])
    keys = np.arange(len(x), dtype=np.uint64)
    config = CollectionConfig(dim=8, metric="l2sq", dtype="f32")
    assert build_one(tmp_path / "c.usearch", keys, x, config, HnswParams(build_n_threads=2)).count == len(x)
    seg = Segment(tmp_path / "c.usearch", ef_search=64)
    found, _, _ = seg.search(distinct, 1, ef=None, exact=False, threads=1)
    assert np.flatnonzero(found[:, 0] != keys[:300]).tolist() == []
    copies, dists, _ = seg.search(x[300:301], 10, ef=None, exact=False, threads=1)
    assert (copies[0] >= 300).all() and (dists[0] == 0).all()


def test_threads_0_means_the_cores_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # usearch reads 0 as the machine's cores; a container's CPU set may hold fewer.
    from usearch.index import Index

    from brinicle_etl.store import segment as segment_module

    asked: list[int] = []
    add = Index.add

    def add_spy(self: Index, *args: object, threads: int = 0, **kwargs: object) -> object:
        asked.append(threads)
        return add(self, *args, threads=threads, **kwargs)

    monkeypatch.setattr(segment_module, "usable_cpus", lambda: 3)
    monkeypatch.setattr(Index, "add", add_spy)
    x = clustered(300, 8, seed=0, normalize=False)
    keys = np.arange(300, dtype=np.uint64)
    config = CollectionConfig(dim=8, metric="l2sq", dtype="f32")
    build_one(tmp_path / "s.usearch", keys, x, config, HnswParams(build_n_threads=0))
    assert set(asked) <= {1, 3} and 3 in asked  # 1: lost nodes are linked again on one thread


@pytest.mark.parametrize(
    ("threads", "adds", "sizes"),
    [
        (1, [250], [250]),  # one thread builds one graph, however large
        (2, [150], [100, 50]),
        (2, [60, 60, 60], [100, 80]),  # batches fill a graph, then start the next
        (3, [250], [100, 100, 50]),
        (2, [100, 100, 30, 30, 30], [160, 130]),  # past one per thread: the smallest takes each chunk
    ],
)
def test_a_build_fills_a_graph_then_the_next_up_to_one_per_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int, adds: list[int], sizes: list[int]
) -> None:
    monkeypatch.setattr(segment_module, "GRAPH_ROWS", 100)
    monkeypatch.setattr(segment_module, "_ADD_CHUNK", 30)
    x = clustered(sum(adds), 8, seed=3)
    keys = np.arange(len(x), dtype=np.uint64)
    config = CollectionConfig(dim=8, dtype="f32")
    graphs = segment_module.Graphs(config, HnswParams(build_n_threads=threads), directory=tmp_path)
    start = 0
    for n in adds:
        seen: list[tuple[int, int]] = []
        graphs.add(
            keys[start : start + n], x[start : start + n], lambda done, total, seen=seen: seen.append((done, total))
        )
        start += n
        # Progress counts the whole add, across the graphs it went to.
        assert seen[-1] == (n, n) and all(a[0] < b[0] for a, b in itertools.pairwise(seen))
    assert [len(part) for part in graphs.parts] == sizes
    got = np.sort(np.concatenate([np.asarray(part.index.keys, dtype=np.uint64) for part in graphs.parts]))
    assert np.array_equal(got, keys)


def test_build_graphs_writes_each_graph_to_its_own_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_module, "GRAPH_ROWS", 100)
    x = clustered(250, 8, seed=4)
    names = iter(["a.usearch", "b.usearch", "c.usearch"])
    infos = segment_module.build_graphs(
        tmp_path,
        lambda: next(names),
        np.arange(250, dtype=np.uint64),
        x,
        CollectionConfig(dim=8, dtype="i8"),
        HnswParams(build_n_threads=2),
    )
    # The total is known: two graphs of equal size, not a full one and the rest.
    assert [(i.file, i.count, i.vectors) for i in infos] == [("a.usearch", 125, "a.f32"), ("b.usearch", 125, "b.f32")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.f32", "a.usearch", "b.f32", "b.usearch"]


def test_a_build_makes_no_more_graphs_than_graphs_most(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_module, "GRAPH_ROWS", 10)
    monkeypatch.setattr(segment_module, "GRAPHS_MOST", 3)
    x = clustered(100, 8, seed=5)
    graphs = segment_module.Graphs(
        CollectionConfig(dim=8, dtype="f32"), HnswParams(build_n_threads=64), directory=tmp_path, total=100
    )
    graphs.add(np.arange(100, dtype=np.uint64), x)
    assert [len(part) for part in graphs.parts] == [34, 34, 32]
