"""The build's insert order (store/order.py): a seeded permutation, a random share first, then
the rest region by region."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brinicle_etl.store.order import SKELETON, insert_order
from tests.conftest import clustered as shared_clustered

METRICS = ["cosine", "ip", "l2sq"]


def clustered(n: int) -> np.ndarray:
    return shared_clustered(n, 16, centers=40, normalize=False)


def step_length(vectors: np.ndarray, order: np.ndarray) -> float:
    """Mean distance from each vector to the next one inserted."""
    ordered = vectors[order]
    return float(np.linalg.norm(ordered[1:] - ordered[:-1], axis=1).mean())


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("n", [0, 1, 95, 96, 5_000])
def test_the_order_is_a_permutation(metric: str, n: int) -> None:
    order = insert_order(clustered(n), metric, 3)  # type: ignore[arg-type]
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(n))


@pytest.mark.parametrize("metric", METRICS)
def test_after_the_skeleton_near_vectors_are_inserted_one_after_another(metric: str) -> None:
    vectors = clustered(20_000)
    head = int(len(vectors) * SKELETON)
    rest = insert_order(vectors, metric, 0)[head:]  # type: ignore[arg-type]
    shuffled = step_length(vectors, np.random.default_rng(0).permutation(len(vectors)))
    assert step_length(vectors, rest) < 0.5 * shuffled


@pytest.mark.parametrize("metric", METRICS)
def test_the_skeleton_is_a_random_sample_of_the_whole_batch(metric: str) -> None:
    # It lays the long links down first: a graph built region by region from nothing links each
    # region mostly to the one before it (recall@10 0.817 against 0.990 on test_scale's data).
    rng = np.random.default_rng(4)
    cluster = rng.integers(0, 40, 20_000)
    vectors = (rng.standard_normal((40, 16))[cluster] + 0.35 * rng.standard_normal((20_000, 16))).astype(np.float32)
    head = int(len(vectors) * SKELETON)
    order = insert_order(vectors, metric, 0)  # type: ignore[arg-type]
    shuffled = step_length(vectors, np.random.default_rng(0).permutation(len(vectors)))
    assert head == 2_000
    assert step_length(vectors, order[:head]) > 0.9 * shuffled
    # Every one of the 40 clusters is in it, in about its share of the batch (50 rows each).
    counts = np.bincount(cluster[order[:head]], minlength=40)
    assert counts.min() >= 25 and counts.max() <= 90


def test_the_same_vectors_and_seed_give_the_same_order_and_another_seed_another() -> None:
    vectors = clustered(3_000)
    first = insert_order(vectors, "cosine", 7)
    assert np.array_equal(first, insert_order(vectors.copy(), "cosine", 7))
    assert not np.array_equal(first, insert_order(vectors, "cosine", 8))


def test_a_batch_too_small_for_two_regions_is_shuffled_by_the_seed() -> None:
    vectors = clustered(95)  # 95 // 48 = 1 cell
    assert np.array_equal(insert_order(vectors, "l2sq", 5), np.random.default_rng(5).permutation(95))


def test_under_cosine_a_vectors_length_does_not_move_it() -> None:
    vectors = clustered(4_000)
    lengths = np.random.default_rng(1).uniform(0.1, 10, size=(len(vectors), 1)).astype(np.float32)
    assert np.array_equal(insert_order(vectors, "cosine", 2), insert_order(vectors * lengths, "cosine", 2))


def test_zero_vectors_and_memory_maps_are_ordered(tmp_path: Path) -> None:
    vectors = clustered(6_000)
    vectors[::7] = 0
    path = tmp_path / "v.npy"
    np.save(path, vectors)
    mapped = np.load(path, mmap_mode="r")
    order = insert_order(mapped, "cosine", 0)
    assert np.array_equal(order, insert_order(vectors, "cosine", 0))
    assert np.array_equal(np.sort(order), np.arange(len(vectors)))
