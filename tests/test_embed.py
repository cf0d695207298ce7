"""Embedders, the model registry and precomputed vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from brinicle_etl.embed import HashEmbedder, ModelRegistry, ModelSpec, embed_unique, parse_vectors
from brinicle_etl.errors import ConfigError, InputError, NotFoundError
from tests.conftest import CountingEmbedder


def where(i: int) -> str:
    return f"v.csv row {i + 1}"


def test_hash_embedder_is_deterministic_normalised_and_word_sensitive() -> None:
    e = HashEmbedder(64)
    a, b, c, empty = e.embed_batch(["waterproof hiking boots", "hiking boots, waterproof", "espresso machine", ""])
    np.testing.assert_allclose(np.linalg.norm([a, b, c, empty], axis=1), 1.0, rtol=1e-6)
    assert a @ b > 0.9 > a @ c
    np.testing.assert_array_equal(e.embed_batch(["waterproof hiking boots"])[0], a)


def test_identical_texts_are_embedded_once(counting: CountingEmbedder) -> None:
    vectors, computed = embed_unique(counting, ["a b", "c", "a b", "c", "d"])
    assert (computed, counting.calls) == (3, [3])
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert vectors.shape == (5, counting.dim)


def test_registry_builtins_and_hash_models(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models.json")
    assert reg.get("all-MiniLM-L6-v2").dim == 384
    assert reg.get("hash-48") == ModelSpec(id="hash-48", dim=48, kind="hash")
    assert reg.embedder("hash-48") is reg.embedder("hash-48")
    with pytest.raises(NotFoundError) as info:
        reg.get("gpt-embed")
    assert str(info.value) == (
        "unknown embedding model 'gpt-embed'; known models: 'all-MiniLM-L6-v2' (or 'hash-<dim>')"
    )


def test_registered_models_persist(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models.json")
    reg.register(ModelSpec(id="catalogue-hash", dim=24, kind="hash"))
    again = ModelRegistry(tmp_path / "models.json")
    assert [s.id for s in again.specs()] == ["all-MiniLM-L6-v2", "catalogue-hash"]
    assert again.embedder("catalogue-hash").dim == 24
    with pytest.raises(ConfigError, match="model kind must be one of 'sentence-transformers', 'hash'; got 'openai'"):
        ModelSpec(id="x", dim=3, kind="openai")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model id 'a b' must be"):
        ModelSpec(id="a b", dim=3)


@pytest.mark.parametrize(
    "column",
    [
        pl.Series("v", ["[1, 2, 3]", "[4.5, -5e-1, 6]"]),
        pl.Series("v", [[1.0, 2.0, 3.0], [4.5, -0.5, 6.0]]),
        pl.Series("v", [[1.0, 2.0, 3.0], [4.5, -0.5, 6.0]], dtype=pl.Array(pl.Float32, 3)),
    ],
)
def test_parse_vectors_from_json_lists_and_arrays(column: pl.Series) -> None:
    m = parse_vectors(column, dim=None, where=where)
    np.testing.assert_allclose(m, [[1, 2, 3], [4.5, -0.5, 6]])
    assert m.dtype == np.float32


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["[1, 2]", None], "v.csv row 2, column 'v': the vector is missing"),
        (["[1, 2]", "[1, 2"], "v.csv row 2, column 'v': not a JSON array (Expecting ',' delimiter)"),
        (["[1, 2]", '["a", 2]'], "v.csv row 2, column 'v': expected a JSON array of numbers, got '[\"a\", 2]'"),
        (["[1, 2]", "[1, NaN]"], "v.csv row 2, column 'v': the vector contains NaN or Inf"),
        (["[1, 2]", "[1, 2, 3]"], "v.csv row 2, column 'v': the vector has 3 values, expected 2"),
        (["[1, 2]", "null"], "v.csv row 2, column 'v': the vector is missing"),
    ],
)
def test_bad_vectors_name_the_row(values: list[str | None], message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_vectors(pl.Series("v", values), dim=None, where=where)
    assert str(info.value) == message


def test_list_vectors_with_nan_or_wrong_dim() -> None:
    with pytest.raises(InputError, match="row 1, column 'v': the vector contains NaN or Inf"):
        parse_vectors(pl.Series("v", [[1.0, float("inf")]]), dim=2, where=where)
    with pytest.raises(InputError, match="row 1, column 'v': the vector has 2 values, expected 4"):
        parse_vectors(pl.Series("v", [[1.0, 2.0]]), dim=4, where=where)


@pytest.mark.parametrize("rows", [1, 8191, 8192 * 3 + 5])
def test_vector_digest_is_fnv1a_of_each_rows_float32_words(rows: int) -> None:
    # Stored row hashes depend on it: the threaded form must give what one loop over
    # FNV-1a gives, for any number of rows.
    from brinicle_etl.embed import vector_digest

    m = np.random.default_rng(rows).standard_normal((rows, 5)).astype(np.float32)
    expected = []
    for row in m:
        h = 0xCBF29CE484222325
        for word in row.astype("<f4").view("<u4").tolist():
            h = ((h ^ word) * 0x100000001B3) % 2**64
        expected.append(str(h))
    assert vector_digest(m).to_list() == expected
