"""usearch files: what a build must guarantee whatever the threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brinicle_etl.store.manifest import CollectionConfig
from brinicle_etl.store.segment import Segment, build_segment
from brinicle_etl.types import HnswParams
from tests.conftest import clustered


@pytest.mark.parametrize("threads", [1, 2, 0])
@pytest.mark.parametrize("seed", range(8))
def test_every_vector_of_a_build_finds_itself(tmp_path: Path, threads: int, seed: int) -> None:
    # 300 low-dimensional vectors built by two threads strand a node in most builds
    # unless the build links them again (usearch#735).
    x = clustered(300, 8, seed=seed, normalize=False)
    keys = np.arange(300, dtype=np.uint64)
    config = CollectionConfig(dim=8, metric="l2sq", dtype="f32")
    params = HnswParams(ef_construction=128, rng_seed=seed, build_n_threads=threads)
    assert build_segment(tmp_path / "s.usearch", keys, x, config, params).count == 300
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
    assert build_segment(tmp_path / "d.usearch", keys, x, config, HnswParams(build_n_threads=2)).count == 400
    found, dists, _ = Segment(tmp_path / "d.usearch", ef_search=64).search(x[:200], 2, ef=None, exact=False, threads=1)
    assert [set(row) for row in found.tolist()] == [{i, i + 200} for i in range(200)]
    assert np.all(dists == 0)


def test_many_copies_of_one_vector_build_and_the_rest_find_themselves(tmp_path: Path) -> None:
    distinct = clustered(300, 8, seed=3, normalize=False)
    x = np.concatenate([distinct, np.repeat(distinct[:1] + 100, 2000, axis=0)])
    keys = np.arange(len(x), dtype=np.uint64)
    config = CollectionConfig(dim=8, metric="l2sq", dtype="f32")
    assert build_segment(tmp_path / "c.usearch", keys, x, config, HnswParams(build_n_threads=2)).count == len(x)
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
    build_segment(tmp_path / "s.usearch", keys, x, config, HnswParams(build_n_threads=0))
    assert set(asked) <= {1, 3} and 3 in asked  # 1: lost nodes are linked again on one thread
