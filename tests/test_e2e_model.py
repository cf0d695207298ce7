"""End to end with the real all-MiniLM-L6-v2 model on the bundled sample data, through the library and the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brinicle_etl import ConfigError, Store, ingest
from brinicle_etl.search import search
from tests.conftest import REPO

pytest.importorskip("sentence_transformers")
SAMPLE = REPO / "sample_data"


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("e2e") / "store")
    first = ingest(SAMPLE / "products.csv", "shop/products", store=store)
    assert (first.mode, first.rows_inserted, first.rows_embedded) == ("Create", 300, 300)
    assert first.schema.model == "all-MiniLM-L6-v2"
    assert first.inferred == "primary key 'product_id'; semantic fields ['title', 'description']"
    return store


def test_search_by_meaning(catalogue: Store) -> None:
    hits = search("shop/products", "waterproof boots for hiking in the rain", 5, store=catalogue)
    assert all("Waterproof Hiking Boots" in h.row["title"] for h in hits)
    assert hits[0].distance < 0.3
    coffee = search("shop/products", "something to make coffee in the morning", 3, store=catalogue)
    assert {h.row["category"] for h in coffee} == {"kitchen"}
    assert any("Coffee" in h.row["title"] or "French Press" in h.row["title"] for h in coffee)


def test_second_day_embeds_only_what_changed(catalogue: Store) -> None:
    result = ingest(SAMPLE / "products_day2.csv", "shop/products", store=catalogue, on_conflict="update", sync=True)
    got = (result.rows_inserted, result.rows_updated, result.rows_unchanged, result.rows_deleted, result.rows_embedded)
    assert got == (30, 40, 250, 10, 45)
    assert len(catalogue.open("shop/products")) == 320
    again = ingest(SAMPLE / "products_day2.csv", "shop/products", store=catalogue, on_conflict="update", sync=True)
    assert (again.rows_unchanged, again.rows_embedded) == (320, 0)


def test_precomputed_vectors_from_the_same_model_answer_text_queries(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    result = ingest(SAMPLE / "products_vectors.parquet", "shop/vectors", store=store, model="all-MiniLM-L6-v2")
    assert (result.vector_source, result.rows_inserted, result.rows_embedded) == ("precomputed", 300, 0)
    assert result.schema.vector_col == "embedding"
    hits = search("shop/vectors", "waterproof boots for hiking in the rain", 3, store=store)
    assert all("Waterproof Hiking Boots" in h.row["title"] for h in hits)


def test_the_embedding_path_is_reported_kept_and_changed_without_re_embedding(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = ingest(SAMPLE / "products.csv", "shop/products", store=store, backend="torch", precision="bf16")
    assert first.embedding is not None and first.embedding.startswith("torch/bf16/cpu (cosine 0.99")
    assert (first.schema.backend, first.schema.precision) == ("torch", "bf16")
    # A query is embedded on the collection's path: the registry's embedder for that path runs it.
    hits = search("shop/products", "waterproof boots for hiking in the rain", 3, store=store)
    assert all("Waterproof Hiking Boots" in h.row["title"] for h in hits)
    used = store.models.embedder("all-MiniLM-L6-v2", backend="torch", precision="bf16")
    assert str(getattr(used, "path", "")) == "torch/bf16/cpu"
    # Another path later: nothing is embedded again (the vectors agree within the gate), the schema follows.
    again = ingest(SAMPLE / "products.csv", "shop/products", store=store, backend="torch", precision="f32")
    assert (again.rows_unchanged, again.rows_embedded, again.embedding) == (300, 0, None)
    assert Store(store.root).open("shop/products").meta["schema"]["precision"] == "f32"
    with pytest.raises(ConfigError, match="precision must be one of 'auto', 'f32', 'bf16', 'fp16', 'int8'; got 'f8'"):
        ingest(SAMPLE / "products.csv", "shop/products", store=store, precision="f8")  # type: ignore[arg-type]


def test_readme_demo_commands(tmp_path: Path) -> None:
    """The commands `make demo` runs, as a user would type them."""
    env = {**os.environ, "BRINICLE_STORE": str(tmp_path / "store")}
    cli = [sys.executable, "-m", "brinicle_etl.cli"]

    def run(*args: str) -> str:
        proc = subprocess.run([*cli, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = run("ingest", "sample_data/products.csv", "--collection", "shop/products", "--mode", "build")
    assert "rows: 300 read, 300 inserted" in out
    # The rows line says what embedded them, with its quality against the reference float32 path
    # unless it is that path (OpenVINO's f32, picked on a CPU without bf16, agrees to 1.00000).
    quality = r"( \(cosine (0\.99\d+|1\.00000), recall@10 [01]\.\d+\))?"
    assert re.search(rf"; 300 embedded with \w+/\w+/cpu{quality}$", out, re.M)
    out = run(
        "ingest",
        "sample_data/products_day2.csv",
        "--collection",
        "shop/products",
        "--on-conflict",
        "update",
        "--sync",
        "--json",
    )
    result = json.loads(out)
    assert (result["rows_inserted"], result["rows_updated"], result["rows_deleted"], result["rows_embedded"]) == (
        30,
        40,
        10,
        45,
    )
    out = run("search", "shop/products", "waterproof boots for hiking in the rain", "--k", "5")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["distance", "product_id", "title"]
    assert len(lines) == 7
    assert all("Waterproof Hiking Boots" in line for line in lines[2:])


def test_a_collection_whose_path_cannot_run_here_is_queried_on_the_auto_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "store")
    ingest(SAMPLE / "products.csv", "shop/products", store=store)
    col = store.open("shop/products")
    # As if built on a GPU machine in fp16: this CPU cannot run that path.
    col.set_meta({**col.meta, "schema": {**col.meta["schema"], "backend": "torch", "precision": "fp16"}})
    with caplog.at_level("WARNING", logger="brinicle_etl.search"):
        hits = search("shop/products", "waterproof boots for hiking in the rain", 3, store=Store(store.root))
    assert all("Waterproof Hiking Boots" in h.row["title"] for h in hits)
    assert "its embedding path (backend torch, precision fp16) cannot run here" in caplog.text
