"""ingest(): every mode, policy and vector source; re-runs that cost only what changed; atomic failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest

from brinicle_etl import ConfigError, ConflictError, InputError, Store, TemplateSchema, ingest
from brinicle_etl.embed import HashEmbedder
from brinicle_etl.search import search
from brinicle_etl.store import ShardedCollection, shard_of
from tests.conftest import REPO, CountingEmbedder

DAY1 = pl.DataFrame(
    {
        "product_id": [1, 2, 3, 4, 5],
        "title": ["Trail shoes", "Hiking boots", "Water bottle", "Rain jacket", "Camp stove"],
        "description": ["grippy soles", "waterproof leather", "keeps drinks cold", "sheds rain", "boils fast"],
        "price": [89.9, 149.0, 24.5, 119.0, 59.0],
    }
)
# 1: price only (same text), 2: new description, 3: unchanged, 4: dropped, 5: unchanged, 6: new
DAY2 = pl.DataFrame(
    {
        "product_id": [1, 2, 3, 5, 6],
        "title": ["Trail shoes", "Hiking boots", "Water bottle", "Camp stove", "Trekking poles"],
        "description": ["grippy soles", "full-grain waterproof leather", "keeps drinks cold", "boils fast", "carbon"],
        "price": [79.9, 149.0, 24.5, 59.0, 99.0],
    }
)


def write_csv(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_csv(path)
    return path


def live(store: Store, name: str = "shop/products") -> dict[str, dict[str, object]]:
    table = store.open(name).rows()
    return {r["_key"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in table.to_pylist()}


@pytest.fixture
def day1(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "day1.csv", DAY1)


@pytest.fixture
def day2(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "day2.csv", DAY2)


def test_first_ingest_creates_and_reports(store: Store, day1: Path, counting: CountingEmbedder) -> None:
    result = ingest(day1, "shop/products", store=store, embedder=counting)
    assert (result.mode, result.collection, result.namespace, result.vector_source) == (
        "Create",
        "shop/products",
        "products",
        "generated",
    )
    assert (result.rows_read, result.rows_added, result.rows_inserted, result.rows_embedded) == (5, 5, 5, 5)
    assert result.inferred == "primary key 'product_id'; semantic fields ['title', 'description']"
    assert set(result.timings) >= {"read", "plan", "embed", "write", "commit", "total"}
    assert live(store)["2"] == {
        "product_id": 2,
        "title": "Hiking boots",
        "description": "waterproof leather",
        "price": 149.0,
    }
    assert counting.texts[0] == "Trail shoes\ngrippy soles"
    spec = result.to_dict()
    assert spec["status"] == "success"
    assert json.loads(json.dumps(spec))["rows_inserted"] == 5


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("update", {"inserted": 1, "updated": 2, "skipped": 0, "unchanged": 2, "embedded": 2}),
        ("skip", {"inserted": 1, "updated": 0, "skipped": 2, "unchanged": 2, "embedded": 1}),
    ],
)
@pytest.mark.parametrize("sync", [False, True])
def test_second_day_every_outcome(
    store: Store, day1: Path, day2: Path, counting: CountingEmbedder, policy: str, expected: dict, sync: bool
) -> None:
    ingest(day1, "shop/products", store=store, embedder=counting)
    counting.texts.clear()
    result = ingest(day2, "shop/products", store=store, embedder=counting, on_conflict=policy, sync=sync)  # type: ignore[arg-type]
    got = {
        "inserted": result.rows_inserted,
        "updated": result.rows_updated,
        "skipped": result.rows_skipped,
        "unchanged": result.rows_unchanged,
        "embedded": result.rows_embedded,
    }
    assert got == expected
    assert result.conflicts == [1, 2]
    assert result.rows_deleted == (1 if sync else 0)
    assert result.rows_added == expected["inserted"] + expected["updated"]
    rows = live(store)
    assert ("4" in rows) is not sync
    assert rows["6"]["title"] == "Trekking poles"
    if policy == "update":
        assert rows["1"]["price"] == 79.9
        assert rows["2"]["description"] == "full-grain waterproof leather"
        # only the rewritten description and the new product were embedded; the price change reused its vector
        assert counting.texts == ["Hiking boots\nfull-grain waterproof leather", "Trekking poles\ncarbon"]
    else:
        assert rows["1"]["price"] == 89.9
        assert counting.texts == ["Trekking poles\ncarbon"]


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_conflicts_with_error_policy_write_nothing(
    store: Store, day1: Path, day2: Path, counting: CountingEmbedder, mode: str
) -> None:
    ingest(day1, "shop/products", store=store, embedder=counting)
    before, generation = live(store), store.open("shop/products").generation
    calls = len(counting.calls)
    with pytest.raises(ConflictError) as info:
        ingest(day2, "shop/products", store=store, embedder=counting, mode=mode)  # type: ignore[arg-type]
    assert str(info.value).startswith("primary key 'product_id' already holds different content for 2 row(s): 1, 2;")
    assert (info.value.field, info.value.keys) == ("product_id", [1, 2])
    assert live(store) == before
    assert store.open("shop/products").generation == generation
    assert len(counting.calls) == calls, "nothing is embedded before conflicts are checked"


def test_insert_mode_skips_existing_rows(store: Store, day1: Path, day2: Path, counting: CountingEmbedder) -> None:
    ingest(day1, "shop/products", store=store, embedder=counting)
    result = ingest(day2, "shop/products", store=store, embedder=counting, mode="insert", on_conflict="skip")
    assert (result.rows_inserted, result.rows_skipped, result.rows_updated) == (1, 2, 0)
    with pytest.raises(ConfigError, match="mode 'insert' never replaces rows"):
        ingest(day2, "shop/products", store=store, embedder=counting, mode="insert", on_conflict="update")


def test_re_ingesting_the_same_file_embeds_nothing(store: Store, day1: Path, counting: CountingEmbedder) -> None:
    first = ingest(day1, "shop/products", store=store, embedder=counting)
    calls = len(counting.calls)
    again = ingest(day1, "shop/products", store=store, embedder=counting)
    assert (again.mode, again.rows_unchanged, again.rows_added, again.rows_embedded) == ("Append", 5, 0, 0)
    assert len(counting.calls) == calls
    # nothing changed: nothing is published, and the CLI says "Unchanged"
    assert (again.generation, again.published, store.open("shop/products").generation) == (first.generation, False, 1)


def test_build_replaces_and_reuses_vectors(store: Store, day1: Path, day2: Path, counting: CountingEmbedder) -> None:
    ingest(day1, "shop/products", store=store, embedder=counting)
    counting.texts.clear()
    result = ingest(day2, "shop/products", store=store, embedder=counting, mode="build")
    assert (result.rows_inserted, result.rows_updated, result.rows_unchanged, result.rows_deleted) == (1, 2, 2, 1)
    assert counting.texts == ["Hiking boots\nfull-grain waterproof leather", "Trekking poles\ncarbon"]
    assert sorted(live(store), key=int) == ["1", "2", "3", "5", "6"]
    hits = search("shop/products", "Trekking poles carbon", 1, store=store, registry=None)
    assert hits[0].row["title"] == "Trekking poles"


def test_row_ids_continue_across_appends(store: Store, day1: Path, day2: Path, counting: CountingEmbedder) -> None:
    ingest(day1, "shop/products", store=store, embedder=counting)
    ingest(day2, "shop/products", store=store, embedder=counting, on_conflict="update")
    ids = store.open("shop/products").rows(["_row_id"]).column("_row_id").to_pylist()
    # day 1 took row ids 0-4; day 2 rewrote products 1 and 2 as 5 and 6, and added product 6 as 7
    assert sorted(ids) == [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("keep", ["error", "keep_last"])
def test_duplicate_keys_in_the_source(store: Store, tmp_path: Path, counting: CountingEmbedder, keep: str) -> None:
    dup = write_csv(tmp_path / "dup.csv", pl.concat([DAY1, DAY1.head(2).with_columns(price=pl.lit(1.0))]))
    if keep == "error":
        with pytest.raises(InputError) as info:
            ingest(dup, "shop/products", store=store, embedder=counting, primary_key="product_id")
        assert str(info.value).startswith(
            "duplicate primary key 'product_id' in the source: 2 value(s) occur more "
            f"than once, e.g. '1' ({dup} row 1, {dup} row 6)"
        )
        assert not store.exists("shop/products"), "a failed first ingest leaves no collection behind"
        return
    result = ingest(
        dup, "shop/products", store=store, embedder=counting, primary_key="product_id", on_duplicate="keep_last"
    )
    assert (result.rows_inserted, result.duplicates_dropped) == (5, 2)
    assert live(store)["1"]["price"] == 1.0


def test_bad_value_fails_atomically_on_an_existing_collection(
    store: Store, day1: Path, tmp_path: Path, counting: CountingEmbedder
) -> None:
    ingest(day1, "shop/products", store=store, embedder=counting)
    before = live(store)
    bad = tmp_path / "bad.csv"
    bad.write_text("product_id,title,description,price\n7,New,thing,1.0\n8,Other,thing,not-a-price\n")
    with pytest.raises(InputError) as info:
        ingest(bad, "shop/products", store=store, embedder=counting)
    assert str(info.value) == f"{bad} row 2, column 'price': 'not-a-price' is not a valid float64"
    assert live(store) == before
    missing = tmp_path / "missing.csv"
    missing.write_text("product_id,title,description,price\n7,New,thing,1.0\n,Other,thing,2.0\n")
    with pytest.raises(InputError, match=r"missing.csv row 2: primary key 'product_id' is missing"):
        ingest(missing, "shop/products", store=store, embedder=counting)


def test_source_that_no_longer_fits_is_refused(store: Store, day1: Path, tmp_path: Path) -> None:
    ingest(day1, "shop/products", store=store, model="hash-16")
    other = write_csv(tmp_path / "other.csv", DAY1.drop("price").with_columns(colour=pl.lit("red")))
    with pytest.raises(InputError, match="no longer fits the collection's schema: missing column"):
        ingest(other, "shop/products", store=store)
    with pytest.raises(ConfigError, match="has primary_key='product_id', not 'title'; an existing collection keeps"):
        ingest(day1, "shop/products", store=store, primary_key="title")


@pytest.mark.parametrize("fmt", ["csv-json", "parquet-list", "parquet-array"])
def test_precomputed_vectors(store: Store, tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6, 8)).astype(np.float32)
    frame = pl.DataFrame({"doc": [f"d{i}" for i in range(6)], "label": list("abcabc")})
    if fmt == "csv-json":
        path = tmp_path / "v.csv"
        frame.with_columns(vec=pl.Series([json.dumps(v.tolist()) for v in vectors])).write_csv(path)
    else:
        dtype = pl.List(pl.Float32) if fmt == "parquet-list" else pl.Array(pl.Float32, 8)
        path = tmp_path / "v.parquet"
        frame.with_columns(vec=pl.Series(vectors.tolist(), dtype=dtype)).write_parquet(path)
    result = ingest(path, "docs", store=store, vector_col="vec", primary_key="doc")
    assert (result.vector_source, result.rows_inserted, result.rows_embedded) == ("precomputed", 6, 0)
    col = store.open("docs")
    assert col.dim == 8
    assert "vec" not in col.rows().column_names
    assert search(col, vectors[4], 1)[0].key == "d4"
    again = ingest(path, "docs", store=store)
    assert again.rows_unchanged == 6


def test_precomputed_errors_name_the_row_and_leave_nothing(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_text('id,vec\na,"[1, 2, 3]"\nb,"[1, 2]"\n')
    with pytest.raises(InputError) as info:
        ingest(path, "docs", store=store, vector_col="vec")
    assert str(info.value) == f"{path} row 2, column 'vec': the vector has 2 values, expected 3"
    assert not store.exists("docs")
    with pytest.raises(InputError, match="dimension mismatch: dim=4 was given, the vectors have 3 values"):
        ingest(path, "docs", store=store, vector_col="vec", dim=4)


def test_rows_without_vectors(store: Store, day1: Path) -> None:
    schema = TemplateSchema(primary_key="product_id")
    result = ingest(day1, "shop/catalogue", store=store, schema=schema, dim=128)
    assert (result.vector_source, result.rows_inserted, result.rows_embedded) == ("none", 5, 0)
    col = store.open("shop/catalogue")
    assert len(col) == 5
    assert col.status().main_count == 0


def test_schema_as_json_and_saved_templates(store: Store, day1: Path, tmp_path: Path) -> None:
    schema_json = '{"primary_key": "product_id", "semantic_fields": ["title"], "model": "hash-16"}'
    first = ingest(day1, "a", store=store, schema=schema_json, template_name="catalogue")
    assert first.schema.semantic_fields == ("title",)
    assert store.templates() == ["catalogue"]
    second = ingest(day1, "b", store=store, template_name="catalogue")
    assert (second.schema.primary_key, second.schema.semantic_fields, second.schema.model) == (
        "product_id",
        ("title",),
        "hash-16",
    )
    assert second.inferred is None or "primary key" not in second.inferred


def test_template_text(store: Store, day1: Path, counting: CountingEmbedder) -> None:
    ingest(day1, "t", store=store, embedder=counting, template="{title} costs {price}")
    assert counting.texts[0] == "Trail shoes costs 89.9"


def test_no_primary_key_keys_rows_by_content(store: Store, tmp_path: Path, counting: CountingEmbedder) -> None:
    path = write_csv(tmp_path / "notes.csv", pl.DataFrame({"note": ["buy milk today please", "call the plumber now"]}))
    first = ingest(path, "notes", store=store, embedder=counting)
    assert first.schema.primary_key is None
    again = ingest(path, "notes", store=store, embedder=counting)
    assert (again.rows_unchanged, again.rows_inserted) == (2, 0)


def test_batches_smaller_than_the_source(store: Store, tmp_path: Path, counting: CountingEmbedder) -> None:
    n = 53
    frame = pl.DataFrame({"id": list(range(n)), "text": [f"item number {i} text" for i in range(n)]})
    path = write_csv(tmp_path / "many.csv", frame)
    result = ingest(path, "many", store=store, embedder=counting, batch_rows=10)
    assert (result.rows_inserted, len(store.open("many"))) == (n, n)
    assert max(counting.calls) <= 10
    again = ingest(path, "many", store=store, embedder=counting, batch_rows=7, sync=True)
    assert again.rows_unchanged == n


@pytest.mark.parametrize("kind", ["polars", "arrow", "pandas"])
def test_in_memory_frames(store: Store, counting: CountingEmbedder, kind: str) -> None:
    source = {"polars": DAY1, "arrow": DAY1.to_arrow(), "pandas": DAY1.to_pandas()}[kind]
    result = ingest(source, "mem", store=store, embedder=counting)
    assert result.rows_inserted == 5
    assert live(store, "mem")["3"]["price"] == 24.5


def test_invalid_policies_list_the_choices(store: Store, day1: Path) -> None:
    with pytest.raises(ConfigError, match="on_conflict must be one of 'error', 'update', 'skip'; got 'replace'"):
        ingest(day1, store=store, on_conflict="replace")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mode must be one of 'build', 'insert', 'upsert'; got 'append'"):
        ingest(day1, store=store, mode="append")  # type: ignore[arg-type]


def test_vector_collections_are_not_ingest_targets(store: Store, day1: Path) -> None:
    store.create("vec", dim=4)
    with pytest.raises(ConfigError, match="holds vectors written without a schema"):
        ingest(day1, "vec", store=store)


def _with_vectors(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Day files for each vector source; a precomputed vector changes exactly when the description does."""
    if source != "precomputed":
        return frame
    vectors = [HashEmbedder(6).embed_batch([d])[0].tolist() for d in frame["description"]]
    return frame.with_columns(vec=pl.Series(vectors, dtype=pl.Array(pl.Float32, 6)))


@pytest.mark.parametrize("source", ["generated", "precomputed", "none"])
@pytest.mark.parametrize("policy", ["error", "update", "skip"])
@pytest.mark.parametrize("mode", ["build", "insert", "upsert"])
def test_mode_policy_source_matrix(store: Store, tmp_path: Path, mode: str, policy: str, source: str) -> None:
    """Day 1 then day 2 (1 new, 2 unchanged, 1 price-only change, 1 text change, 1 dropped) under every setting."""
    day1 = _with_vectors(DAY1, source)
    day2 = _with_vectors(DAY2, source)
    p1, p2 = tmp_path / "d1.parquet", tmp_path / "d2.parquet"
    day1.write_parquet(p1)
    day2.write_parquet(p2)
    embedder = CountingEmbedder(16)
    kwargs: dict = {"store": store, "primary_key": "product_id"}
    if source == "generated":
        kwargs["embedder"] = embedder
    elif source == "precomputed":
        kwargs["vector_col"] = "vec"
    else:
        kwargs.update(schema=TemplateSchema(primary_key="product_id"), dim=128)
        kwargs.pop("primary_key")
    first = ingest(p1, "m", **kwargs)
    assert (first.vector_source, first.rows_inserted) == (source, 5)
    before = live(store, "m")
    embedder.texts.clear()
    if mode != "build" and policy == "error":
        with pytest.raises(ConflictError) as info:
            ingest(p2, "m", **kwargs, mode=mode, on_conflict=policy)
        assert info.value.keys == [1, 2]
        assert live(store, "m") == before
        return
    if mode == "insert" and policy == "update":
        with pytest.raises(ConfigError):
            ingest(p2, "m", **kwargs, mode=mode, on_conflict=policy)
        return
    result = ingest(p2, "m", **kwargs, mode=mode, on_conflict=policy)
    counts = (result.rows_inserted, result.rows_updated, result.rows_skipped, result.rows_unchanged)
    rows = live(store, "m")
    if mode == "build" or policy == "update":
        assert counts == (1, 2, 0, 2)
        assert rows["1"]["price"] == 79.9
        assert rows["2"]["description"] == "full-grain waterproof leather"
        assert result.rows_embedded == (2 if source == "generated" else 0)
    else:
        assert counts == (1, 0, 2, 2)
        assert rows["1"]["price"] == 89.9
        assert result.rows_embedded == (1 if source == "generated" else 0)
    assert ("4" in rows) is (mode != "build")
    assert result.rows_deleted == (1 if mode == "build" else 0)
    assert len(embedder.texts) == result.rows_embedded
    if source != "none":
        assert store.open("m").status().live_count == len(rows)
        row2 = (day2 if mode == "build" or policy == "update" else day1).filter(pl.col("product_id") == 2)
        if source == "generated":
            expected = embedder.embed_batch([f"Hiking boots\n{row2['description'][0]}"])[0]
        else:
            expected = np.array(row2["vec"][0])
        np.testing.assert_allclose(store.open("m").vectors(["2"])[0], expected, atol=1e-2)


@pytest.mark.parametrize("emptied_by", ["header_only_first_export", "deleting_every_row", "sync_to_an_empty_export"])
@pytest.mark.parametrize("mode", ["upsert", "insert", "build"])
def test_a_collection_with_no_live_rows_can_be_written_again(
    store: Store, tmp_path: Path, counting: CountingEmbedder, emptied_by: str, mode: str
) -> None:
    empty = write_csv(tmp_path / "empty.csv", DAY1.head(0))
    if emptied_by == "header_only_first_export":
        ingest(empty, "shop/products", store=store, embedder=counting, primary_key="product_id")
    else:
        ingest(DAY1, "shop/products", store=store, embedder=counting)
        if emptied_by == "deleting_every_row":
            store.open("shop/products").delete([str(k) for k in DAY1["product_id"]])
        else:
            ingest(empty, "shop/products", store=store, embedder=counting, sync=True)
    assert len(store.open("shop/products")) == 0
    result = ingest(DAY2, "shop/products", store=store, embedder=counting, mode=mode)
    assert (result.mode, result.rows_inserted) == ("Append", 5)
    assert sorted(live(store)) == ["1", "2", "3", "5", "6"]


@pytest.mark.parametrize(
    ("policy", "counted"), [("skip", "rows_skipped"), ("update", "rows_updated")], ids=["skip", "update"]
)
def test_conflict_on_key_counts_identical_rows_as_conflicts(
    store: Store, counting: CountingEmbedder, policy: str, counted: str
) -> None:
    ingest(DAY1, "shop/products", store=store, embedder=counting)
    before = len(counting.texts)
    result = ingest(DAY2, "shop/products", store=store, embedder=counting, on_conflict=policy, conflict_on="key")
    # 1, 2, 3, 5 exist (3 and 5 identical): all four collide; 6 is new
    assert (getattr(result, counted), result.rows_inserted, result.rows_unchanged) == (4, 1, 0)
    assert result.conflicts == [1, 2, 3, 5]
    embedded = {
        "skip": ["Trekking poles\ncarbon"],
        "update": ["Hiking boots\nfull-grain waterproof leather", "Trekking poles\ncarbon"],
    }[policy]
    assert sorted(t.split("\x1f")[-1] for t in counting.texts[before:]) == embedded
    with pytest.raises(
        ConflictError, match=r"^primary key 'product_id' already holds 5 of the incoming key\(s\): 1, 2, 3, 5, 6;"
    ):
        ingest(DAY2, "shop/products", store=store, embedder=counting, conflict_on="key")


def test_conflict_on_is_checked(store: Store) -> None:
    with pytest.raises(ConfigError, match=r"^conflict_on must be one of 'change', 'key'; got 'row'$"):
        ingest(DAY1, "shop/products", store=store, model="hash-8", conflict_on="row")  # type: ignore[arg-type]


def _products(n: int, *, edited: frozenset[int] = frozenset(), dropped: frozenset[int] = frozenset()) -> pl.DataFrame:
    ids = [i for i in range(n) if i not in dropped]
    return pl.DataFrame(
        {
            "product_id": ids,
            "title": [f"product {i}" + (" (new edition)" if i in edited else "") for i in ids],
            "price": [float(i) for i in ids],
        }
    )


def test_a_sharded_ingest_writes_every_shard_and_is_searched_as_one(store: Store, counting: CountingEmbedder) -> None:
    frame = _products(200)
    result = ingest(frame, "shop/sharded", store=store, embedder=counting, primary_key="product_id", shards=4)
    col = store.open("shop/sharded")
    assert isinstance(col, ShardedCollection)
    assert (result.rows_inserted, result.rows_embedded, len(result.shards)) == (200, 200, 4)
    assert [r.shard for r in result.shards] == [0, 1, 2, 3]
    assert [r.rows_inserted for r in result.shards] == np.bincount(
        shard_of([str(i) for i in range(200)], 4), minlength=4
    ).tolist()
    assert [s["shard"] for s in result.to_dict()["shards"]] == [0, 1, 2, 3]
    hits = search("shop/sharded", "product 17", 3, store=store, registry=None)
    assert hits[0].row["title"] == "product 17"
    # Again: nothing changed, nothing embedded, no shard publishes.
    counting.texts.clear()
    again = ingest(frame, "shop/sharded", store=store, embedder=counting)
    assert (again.rows_unchanged, again.rows_embedded, again.published, counting.texts) == (200, 0, False, [])


def test_one_shard_ingest_touches_only_that_shard(store: Store, counting: CountingEmbedder) -> None:
    ingest(_products(100), "shop/sharded", store=store, embedder=counting, primary_key="product_id", shards=3)
    col = store.open("shop/sharded")
    assert isinstance(col, ShardedCollection)
    before = [sorted(s.keys()) for s in col.shards]
    owner = dict(zip(range(100), shard_of([str(i) for i in range(100)], 3).tolist(), strict=True))
    edited = frozenset(i for i in range(100) if i % 10 == 0)
    dropped = frozenset(i for i in range(100) if i % 10 == 5)
    counting.texts.clear()
    result = ingest(
        _products(100, edited=edited, dropped=dropped),
        "shop/sharded",
        store=store,
        embedder=counting,
        shard=1,
        sync=True,
        on_conflict="update",
    )
    mine = {i for i in range(100) if owner[i] == 1}
    assert result.shard == 1
    assert result.rows_read == len(mine - dropped)
    assert (result.rows_updated, result.rows_deleted) == (len(mine & edited), len(mine & dropped))
    assert sorted(counting.texts) == sorted(f"product {i} (new edition)" for i in mine & edited)
    after = [sorted(s.keys()) for s in col.shards]
    assert after[0] == before[0] and after[2] == before[2]
    assert after[1] == sorted(str(i) for i in mine - dropped)


def test_shard_options_are_checked(store: Store, counting: CountingEmbedder) -> None:
    ingest(_products(10), "shop/sharded", store=store, embedder=counting, primary_key="product_id", shards=2)
    with pytest.raises(ConfigError) as caught:
        ingest(_products(10), "shop/sharded", store=store, embedder=counting, shard=2)
    assert str(caught.value) == "shard must be from 0 to 1 for 'shop/sharded' (2 shard(s)); got 2"
    with pytest.raises(ConfigError) as caught:
        ingest(_products(10), "shop/sharded", store=store, embedder=counting, shards=3)
    assert str(caught.value) == (
        "collection 'shop/sharded' has 2 shard(s), not shards=3; an existing collection keeps its shards"
    )
    with pytest.raises(ConfigError, match="shard must be a whole number from 0 to 1023; got -1"):
        ingest(_products(10), "shop/sharded", store=store, embedder=counting, shard=-1)
    # A collection of one: shard 0 is all of it.
    result = ingest(_products(10), "shop/plain", store=store, embedder=counting, primary_key="product_id", shard=0)
    assert result.rows_inserted == 10 and result.shard is None


def test_shards_ingested_by_separate_processes_that_all_start_from_nothing(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "products.parquet"
    _products(400).write_parquet(source)
    script = (
        "import sys\n"
        "from brinicle_etl import ingest\n"
        f"r = ingest({str(source)!r}, 'shop/sharded', store={str(store.root)!r}, model='hash-32',\n"
        "           primary_key='product_id', shards=4, shard=int(sys.argv[1]))\n"
        "print(r.rows_inserted)\n"
    )
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=REPO, **pipes) for i in range(4)]
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        counts.append(int(out))
    assert counts == np.bincount(shard_of([str(i) for i in range(400)], 4), minlength=4).tolist()
    col = Store(store.root).open("shop/sharded")
    assert isinstance(col, ShardedCollection) and len(col) == 400


def test_a_bad_value_fails_only_its_own_shard_naming_its_source_row(store: Store, tmp_path: Path) -> None:
    options = {"store": store, "model": "hash-32", "primary_key": "product_id"}
    ingest(_products(40), "shop/sharded", shards=2, **options)  # type: ignore[arg-type]
    owner = shard_of([str(i) for i in range(40)], 2).tolist()
    bad = next(i for i in range(40) if owner[i] == 0 and i > 10)
    price = pl.when(pl.col("product_id") == bad).then(pl.lit("n/a")).otherwise(pl.col("price").cast(pl.String))
    path = write_csv(tmp_path / "products.csv", _products(40).with_columns(price.alias("price")))
    assert ingest(path, "shop/sharded", shard=1, **options).rows_unchanged == owner.count(1)  # type: ignore[arg-type]
    with pytest.raises(InputError) as caught:
        ingest(path, "shop/sharded", shard=0, **options)  # type: ignore[arg-type]
    assert str(caught.value) == f"{path} row {bad + 1}, column 'price': 'n/a' is not a valid float64"


def test_a_shard_written_first_takes_the_schema_its_siblings_have(store: Store, counting: CountingEmbedder) -> None:
    frame = _products(30)
    ingest(frame, "shop/sharded", store=store, embedder=counting, primary_key="product_id", shards=2, shard=0)
    col = store.open("shop/sharded")
    assert isinstance(col, ShardedCollection)
    # Shard 1's first run is told nothing about the schema: it takes shard 0's.
    ingest(frame, "shop/sharded", store=store, embedder=counting, shard=1)
    assert col.shard(1).meta["schema"] == col.shard(0).meta["schema"]


def test_changing_precision_to_or_from_int8_takes_a_build(store: Store) -> None:
    frame = pl.DataFrame({"id": ["1", "2"], "title": ["a red kettle", "a blue mug"]})
    first = ingest(frame, "db/ns", store=store, model="hash-32", primary_key="id", precision="int8")
    assert first.schema.precision == "int8"
    with pytest.raises(ConfigError) as caught:
        ingest(frame, "db/ns", store=store, precision="f32")
    assert str(caught.value) == (
        "collection 'db/ns': changing precision to or from 'int8' re-embeds every row (int8 vectors do not agree "
        "with the others within the quality gate); ingest with mode='build'"
    )
    # A build re-embeds every row: int8 counts as another model in the text hash.
    rebuilt = ingest(frame, "db/ns", store=store, model="hash-32", precision="f32", mode="build")
    assert (rebuilt.rows_embedded, rebuilt.schema.precision) == (2, "f32")
    # Between gated paths the change re-embeds nothing.
    again = ingest(frame, "db/ns", store=store, precision="bf16")
    assert (again.rows_embedded, again.schema.precision, again.published) == (0, "bf16", True)


def test_a_build_with_another_model_of_the_same_dim_re_embeds_every_row(store: Store) -> None:
    from brinicle_etl.embed import ModelSpec
    from brinicle_etl.pipeline import model_registry

    model_registry(store).register(ModelSpec(id="other-hash", dim=32, kind="hash"))
    frame = pl.DataFrame({"id": ["1", "2", "3"], "title": ["a red kettle", "a blue mug", "a tent"]})
    ingest(frame, "db/ns", store=store, model="hash-32", primary_key="id")
    rebuilt = ingest(frame, "db/ns", store=store, model="other-hash", primary_key="id", mode="build")
    # Same rows, another model: no vector of the old model is carried over.
    assert (rebuilt.rows_unchanged, rebuilt.rows_embedded) == (0, 3)
    again = ingest(frame, "db/ns", store=store, model="other-hash", primary_key="id", mode="build")
    assert (again.rows_unchanged, again.rows_embedded) == (3, 0)


@pytest.mark.parametrize("shards", [None, 2])
@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_index_in_the_background_returns_the_same_result_and_rows(
    tmp_path: Path, counting: CountingEmbedder, mode: str, shards: int | None
) -> None:
    edited = frozenset(range(0, 300, 7))
    outcomes = {}
    for index in ("now", "background"):
        store = Store(tmp_path / index)
        ingest(_products(300), "shop/p", store=store, embedder=counting, primary_key="product_id", shards=shards)
        result = ingest(
            _products(330, edited=edited),
            "shop/p",
            store=store,
            embedder=counting,
            mode=mode,  # type: ignore[arg-type]
            on_conflict="update" if mode == "upsert" else "skip",
            index=index,  # type: ignore[arg-type]
        )
        edition = " (new edition)" if mode == "upsert" else ""  # insert skips the edited rows
        queries = [f"product 7{edition}", f"product 14{edition}", "product 301"]
        found = [search("shop/p", q, 1, store=store)[0].key for q in queries]
        store.open("shop/p").index_pending(wait=True)
        status = store.open("shop/p").status()
        outcomes[index] = (result.rows_inserted, result.rows_updated, result.rows_skipped, found, status.live_count)
        assert status.pending_count == 0
    assert outcomes["background"] == outcomes["now"]
    inserted, updated, skipped, found, count = outcomes["now"]
    assert (inserted, updated, skipped, count) == ((30, 43, 0, 330) if mode == "upsert" else (30, 0, 43, 330))
    assert found == ["7", "14", "301"]


def test_the_index_option_is_checked(store: Store) -> None:
    with pytest.raises(ConfigError, match=r"^index must be one of 'now', 'background'; got 'later'$"):
        ingest(DAY1, "shop/products", store=store, model="hash-8", index="later")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limit", "kept"),
    [(24 << 30, 1 << 30), (2 << 30, 512 << 20), (None, 512 << 20)],
    ids=["24 GiB", "2 GiB", "unknown"],
)
def test_a_source_is_kept_up_to_a_quarter_of_the_memory_and_at_most_1_gib(
    monkeypatch: pytest.MonkeyPatch, limit: int | None, kept: int
) -> None:
    from brinicle_etl.pipeline import batches

    monkeypatch.setattr(batches, "_memory_limit", lambda: limit)
    assert batches._keep_bytes() == kept


@pytest.mark.parametrize("keep_bytes", [0, None])
def test_a_source_read_once_or_twice_writes_the_same(
    tmp_path: Path, counting: CountingEmbedder, monkeypatch: pytest.MonkeyPatch, keep_bytes: int | None
) -> None:
    # The second pass reuses the first pass's batches and hashes when they fit in memory,
    # else reads the source again: both ways write the same rows, hashes and vectors.
    from brinicle_etl.pipeline import batches
    from brinicle_etl.pipeline.read import Source

    if keep_bytes is not None:
        monkeypatch.setattr(batches, "KEEP_BYTES", keep_bytes)
    reads: list[int] = []
    original = Source.batches

    def counted(self: Source, *, batch_rows: int = 50_000):  # type: ignore[no-untyped-def]
        reads.append(batch_rows)
        return original(self, batch_rows=batch_rows)

    monkeypatch.setattr(Source, "batches", counted)
    store = Store(tmp_path / "s")
    day1, day2 = write_csv(tmp_path / "d1.csv", DAY1), write_csv(tmp_path / "d2.csv", DAY2)
    ingest(day1, "shop/products", store=store, embedder=counting, batch_rows=2)
    reads.clear()
    result = ingest(day2, "shop/products", store=store, embedder=counting, on_conflict="update", batch_rows=2)
    assert (result.rows_inserted, result.rows_updated, result.rows_unchanged) == (1, 2, 2)
    assert len(reads) == (2 if keep_bytes == 0 else 1) + reads.count(1)  # the schema check reads a row
    col = store.open("shop/products")
    reference = Store(tmp_path / "reference")
    ingest(DAY2, "shop/products", store=reference, embedder=counting, primary_key="product_id")
    expected = reference.open("shop/products").rows().sort_by("_key").drop_columns(["_row_id"])
    table = col.rows().sort_by("_key").drop_columns(["_row_id"])
    table = table.filter(pc.is_in(table.column("_key"), expected.column("_key")))  # "4" stays (no sync)
    assert table.select(["_key", "_hash", "_text_hash"]).equals(expected.select(["_key", "_hash", "_text_hash"]))
    keys = table.column("_key").to_pylist()
    np.testing.assert_array_equal(col.vectors(keys), reference.open("shop/products").vectors(keys))
