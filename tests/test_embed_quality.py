"""The quality gate's check texts and measures."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from brinicle_etl.embed.quality import Quality, check_texts, measure, recall
from tests.conftest import REPO


def test_check_texts_are_fixed_distinct_short_and_long() -> None:
    texts = check_texts()
    assert len(texts) == len(set(texts)) == 256
    lengths = [len(t.split()) for t in texts]
    assert all(6 <= n <= 16 for n in lengths[:200]) and all(60 <= n <= 160 for n in lengths[200:])
    other = subprocess.run(
        [sys.executable, "-c", "from brinicle_etl.embed.quality import check_texts; print(check_texts()[17])"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "7", "PATH": "/usr/bin:/bin"},
    )
    assert other.stdout.strip() == texts[17]


def test_identical_vectors_pass_with_full_marks() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    quality = measure(vectors, vectors * 3)  # scale does not matter: cosine
    assert (quality.cosine, quality.cosine_min, quality.recall_at_10) == pytest.approx((1.0, 1.0, 1.0))
    assert quality.passes() and quality.why() == "passes"
    assert str(quality) == "cosine 1.00000, recall@10 1.000"


def test_a_lossy_path_fails_and_says_what_falls_short() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 32))
    noisy = vectors + rng.normal(scale=0.3, size=vectors.shape)
    quality = measure(vectors, noisy)
    assert not quality.passes()
    assert quality.cosine < 0.999 and quality.recall_at_10 < 0.99
    assert quality.why() == (
        f"mean cosine to f32 {quality.cosine:.5f} (needs 0.999), "
        f"recall@10 against f32 {quality.recall_at_10:.3f} (needs 0.99)"
    )
    assert Quality.from_dict(quality.to_dict()) == quality


def test_recall_counts_the_shared_neighbours() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(100, 8))
    assert recall(vectors, vectors) == 1.0
    # Vectors that have nothing to do with the first: neighbours shared by chance only (10/99).
    assert recall(vectors, rng.normal(size=(100, 8))) < 0.3
