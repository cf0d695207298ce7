"""A collection at a size where HNSW, tombstones and the delta segment interact: slow, run by `make test-slow`.

100,000 vectors, then rounds of upserts, inserts and deletes against a plain dict of what
should be live; after each round, search must agree with exact search over that dict.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import Collection, Store
from tests.conftest import clustered, exact_knn

pytestmark = pytest.mark.slow

N, DIM, ROUNDS, K = 100_000, 32, 6, 10
# Real embeddings have a low intrinsic dimension; full-rank 32-d noise defeats any HNSW
# (raw usearch finds 0.65 of the neighbours on it), so draw in 8-d and project up.
PROJECTION = np.random.default_rng(5).standard_normal((8, DIM)).astype(np.float32)


def embeddings(n: int, seed: int) -> np.ndarray:
    x = clustered(n, 8, seed=seed, normalize=False) @ PROJECTION
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_against_truth(col: Collection, live: dict[str, np.ndarray], queries: np.ndarray) -> float:
    keys = list(live)
    data = np.stack([live[k] for k in keys])
    truth = exact_knn(data, queries, K, "cosine")
    got = col.search_batch(queries, K, ef=128)
    found = 0
    for row, hits in zip(truth, got, strict=True):
        assert len(hits) == K, "tombstones or the delta segment ate results"
        assert all(h.id in live for h in hits), "a deleted or replaced-away key came back"
        found += len({keys[j] for j in row} & {h.id for h in hits})
    return found / (K * len(queries))


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_many_rounds_of_changes_keep_search_exact_enough(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(11)
    store = Store(tmp_path)
    col = store.create("scale", dim=DIM, dtype=dtype, delta_ratio=0.5)  # type: ignore[arg-type]
    vectors = embeddings(N, seed=1)
    live = {f"k{i}": v for i, v in enumerate(vectors)}
    col.write(list(live), vectors, mode="build", wait=True)
    queries = embeddings(200, seed=2)
    main_after_build = col.status().main_count
    assert main_after_build == N
    assert recall_against_truth(col, live, queries) >= 0.95

    next_id = N
    for round_ in range(ROUNDS):
        keys = np.array(list(live))
        changed = rng.choice(keys, N // 50, replace=False).tolist()
        new = [f"k{next_id + i}" for i in range(N // 100)]
        next_id += len(new)
        fresh = embeddings(len(changed) + len(new), seed=100 + round_)
        col.write(changed + new, fresh, mode="upsert", wait=True)
        live.update(zip(changed + new, fresh, strict=True))
        gone = rng.choice(np.array(list(live)), N // 30, replace=False).tolist()
        assert col.delete(gone, wait=True).deleted_count == len(gone)
        for key in gone:
            del live[key]

        status = col.status()
        assert status.live_count == len(live)
        assert status.main_count + status.delta_count == len(live)
        # Changes go to the delta; the 100k-row main is not rebuilt behind the user's back.
        assert status.main_count <= main_after_build
        assert recall_against_truth(col, live, queries) >= 0.93, f"round {round_}"

    assert set(col.keys()) == set(live)
    before = col.status()
    assert before.deleted_count > 0
    col.rebuild(wait=True)
    after = col.status()
    assert (after.live_count, after.delta_count, after.deleted_count) == (len(live), 0, 0)
    assert recall_against_truth(col, live, queries) >= 0.95
    sample = rng.choice(np.array(list(live)), 500, replace=False).tolist()
    stored = col.vectors(sample)
    expected = np.stack([live[k] for k in sample])
    tolerance = 0 if dtype == "f32" else 1e-2  # bf16 keeps 8 bits of mantissa
    assert np.abs(stored - expected).max() <= tolerance
