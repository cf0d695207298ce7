"""DuckDB functions: search by text and vector, rows, embed, filters, batches, errors."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from brinicle_etl import Store, ingest
from brinicle_etl.errors import InputError
from brinicle_etl.sql import connect, register, run
from tests.conftest import clustered, exact_knn

PRODUCTS = pl.DataFrame(
    {
        "product_id": [1, 2, 3, 4, 5, 6],
        "title": [
            "Trail running shoes",
            "Waterproof hiking boots",
            "Insulated water bottle",
            "Rain jacket",
            "Camping stove",
            "Leather hiking boots",
        ],
        "category": ["footwear", "footwear", "kitchen", "apparel", "camping", "footwear"],
        "price": [89.0, 149.0, 24.5, 119.0, 59.0, 99.0],
    }
)


@pytest.fixture
def shop(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store")
    ingest(PRODUCTS, "shop/products", store=store, model="hash-64", semantic_fields=["title"])
    return store


@pytest.fixture
def con(shop: Store) -> duckdb.DuckDBPyConnection:
    c = connect(shop)
    yield c
    c.close()


def test_table_search_by_text_returns_rows_nearest_first(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.sql("SELECT * FROM brinicle_search('shop/products', 'hiking boots', k := 3)").fetchall()
    columns = [
        d[0] for d in con.sql("SELECT * FROM brinicle_search('shop/products', 'hiking boots', k := 3)").description
    ]
    assert columns == ["_key", "_distance", "product_id", "title", "category", "price"]
    assert len(rows) == 3
    assert {r[3] for r in rows[:2]} == {"Waterproof hiking boots", "Leather hiking boots"}
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)


def test_search_ids_and_unnest(con: duckdb.DuckDBPyConnection) -> None:
    value = con.execute("SELECT brinicle_search_ids('shop/products', 'rain jacket', 2)").fetchall()[0][0]
    assert value[0]["key"] == "4"
    assert set(value[0]) == {"key", "distance"}
    rows = con.sql(
        "SELECT h.key, h.distance FROM (SELECT unnest(brinicle_search_ids('shop/products', 'stove', 2)) AS h)"
    ).fetchall()
    assert rows[0][0] == "5"


def test_rows_as_a_table(con: duckdb.DuckDBPyConnection, shop: Store) -> None:
    rows = con.sql("SELECT _key, title, price FROM brinicle_rows('shop/products') WHERE price < 90 ORDER BY price")
    assert rows.fetchall() == [
        ("3", "Insulated water bottle", 24.5),
        ("5", "Camping stove", 59.0),
        ("1", "Trail running shoes", 89.0),
    ]
    shop.open("shop/products").delete(["3"])
    assert con.execute("SELECT count(*) FROM brinicle_rows('shop/products')").fetchall()[0][0] == 5
    cols = [d[0] for d in con.sql("SELECT * FROM brinicle_rows('shop/products')").description]
    assert cols == ["_key", "product_id", "title", "category", "price"]


def test_embed_matches_the_collection_model(con: duckdb.DuckDBPyConnection) -> None:
    from brinicle_etl.embed import HashEmbedder

    vec = con.execute("SELECT brinicle_embed('shop/products', 'hiking boots')").fetchall()[0][0]
    np.testing.assert_allclose(vec, HashEmbedder(64).embed_batch(["hiking boots"])[0], rtol=1e-6)
    same = con.sql(
        "SELECT * FROM brinicle_search('shop/products', brinicle_embed('shop/products', 'hiking boots'), k := 2)"
    ).fetchall()
    assert {r[0] for r in same} == {"2", "6"}


def test_filter_restricts_before_ranking(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.sql(
        "SELECT title, category FROM brinicle_search('shop/products', 'hiking boots', k := 3, "
        "filter := 'category <> ''footwear''')"
    ).fetchall()
    assert len(rows) == 3, "k results although the 3 nearest are all filtered out"
    assert all(cat != "footwear" for _, cat in rows)
    cheap = con.sql(
        "SELECT title FROM brinicle_search('shop/products', 'boots', k := 10, filter := 'price < 100')"
    ).fetchall()
    assert {t for (t,) in cheap} == {
        "Trail running shoes",
        "Insulated water bottle",
        "Camping stove",
        "Leather hiking boots",
    }


def test_vector_queries_literals_parameters_and_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "vs")
    x = clustered(500, 8, seed=5)
    store.create("vec", dim=8, dtype="f32").write([f"v{i}" for i in range(500)], x, mode="build")
    con = connect(store)
    literal = "[" + ", ".join(f"{v:.6f}" for v in x[7]) + "]"
    whole = "[" + ", ".join(str(round(v * 1000)) for v in x[7]) + "]"  # INTEGER[], same direction
    for form, params in [
        (literal, None),
        (f"{literal}::FLOAT[8]", None),
        (f"{literal}::DOUBLE[]", None),
        (whole, None),
        ("?", [x[7].tolist()]),
        ("$v::FLOAT[]", {"v": x[7].tolist()}),
        ("$v::FLOAT[8]", {"v": x[7]}),
    ]:
        # one query: the table-shaped call and the single-row path of brinicle_search_ids
        for query in (
            f"SELECT _key FROM brinicle_search('vec', {form}, k := 1)",
            f"SELECT brinicle_search_ids('vec', {form}, 1)[1].key",
        ):
            got = con.execute(query, params).fetchall() if params is not None else con.sql(query).fetchall()
            assert got == [("v7",)], query
    con.execute(
        "CREATE TABLE queries AS SELECT i AS id, v::FLOAT[8] AS vec FROM (SELECT unnest(range(20)) AS i, "
        "unnest(?) AS v)",
        [x[:20].tolist()],
    )
    rows = con.sql(
        "SELECT q.id, unnest(brinicle_search_ids('vec', q.vec, 3)) AS h FROM queries q ORDER BY q.id"
    ).fetchall()
    assert len(rows) == 60
    truth = exact_knn(x, x[:20], 3)
    got = {}
    for qid, hit in rows:
        got.setdefault(qid, set()).add(hit["key"])
    recall = np.mean([len(got[i] & {f"v{j}" for j in truth[i]}) / 3 for i in range(20)])
    assert recall > 0.9
    con.close()


def test_vector_queries_never_embed(con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    vector = con.sql("SELECT brinicle_embed('shop/products', 'rain jacket')").fetchall()[0][0]

    embedded: list[object] = []

    def record(col: object, texts: list[str], registry: object) -> None:
        embedded.append(texts)  # DuckDB swallows errors while folding constants, so record, don't raise
        raise AssertionError("a vector query was embedded")

    monkeypatch.setattr("brinicle_etl.sql.embed_query", record)
    got = con.execute("SELECT _key FROM brinicle_search('shop/products', $v::FLOAT[], k := 1)", {"v": vector})
    assert got.fetchall() == [("4",)]
    assert embedded == []


def test_null_inputs_give_null_and_rows_may_name_different_collections(tmp_path: Path) -> None:
    store = Store(tmp_path / "two")
    store.create("a", dim=2, dtype="f32").write(["a1", "a2"], [[1.0, 0.0], [0.0, 1.0]], mode="build")
    store.create("b", dim=3, dtype="f32").write(["b1", "b2"], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], mode="build")
    con = connect(store)
    rows = con.sql(
        """
        SELECT c, brinicle_search_ids(c, q, 1)[1].key AS nearest FROM (VALUES
            ('a', [0.1, 0.9]::FLOAT[]), ('b', [0.0, 0.1, 0.9]::FLOAT[]), ('a', NULL), (NULL, [1.0, 0.0]::FLOAT[]),
            ('b', [0.9, 0.0, 0.1]::FLOAT[])) t(c, q)
        """
    ).fetchall()
    assert rows == [("a", "a2"), ("b", "b2"), ("a", None), (None, None), ("b", "b1")]
    con.close()


def test_errors_read_as_one_line(con: duckdb.DuckDBPyConnection) -> None:
    cases = [
        ("SELECT * FROM brinicle_search('nope', 'x')", "collection 'nope/default' not found"),
        (
            "SELECT * FROM brinicle_search('shop/products', [1.0, 2.0])",
            "search: dimension mismatch: query vector 1 has 2 values, the collection 64",
        ),
        (
            "SELECT brinicle_search_ids('shop/products', [1.0, 2.0])",
            "search: dimension mismatch: query vector 1 has 2 values, the collection 64",
        ),
        (
            f"SELECT brinicle_search_ids('shop/products', [{', '.join(['0.5'] * 63)}, 'nan'::FLOAT])",
            "search: vector contains NaN/Inf at index 63",
        ),
        (
            f"SELECT brinicle_search_ids('shop/products', [{', '.join(['0.5'] * 64)}], 0)",
            "search: k must be an integer between 1 and 10000; got 0",
        ),
        (
            "SELECT * FROM brinicle_search('shop/products', 'x', k := 0)",
            "search: k must be an integer between 1 and 10000; got 0",
        ),
        (
            "SELECT * FROM brinicle_search('shop/products', 'x', filter := 'colour = 1')",
            "filter 'colour = 1' on 'shop/products' failed: Binder Error: Referenced column \"colour\" not found",
        ),
        ("SELECT * FROM brinicle_search('../etc', 'x')", "invalid collection name '../etc'"),
        (
            "SELECT * FROM brinicle_search('shop/products', 42)",
            "search: the query must be text or a list of numbers (FLOAT[]); got int32",
        ),
        (
            "SELECT * FROM brinicle_search('shop/products', 'x', filter := 3)",
            "search: filter must be a SQL predicate as text; got int32",
        ),
        (
            "SELECT * FROM brinicle_search('shop/products', 'x', k := 'ten')",
            "search: k must be an integer between 1 and 10000; got string",
        ),
    ]
    for query, message in cases:
        with pytest.raises(duckdb.Error) as info:
            con.sql(query).fetchall()
        text = str(info.value)
        assert message in text, text
        assert "Traceback" not in text
        assert "\n" not in text.strip()


def test_run_returns_arrow_and_wraps_errors(con: duckdb.DuckDBPyConnection) -> None:
    table = run(con, "SELECT count(*) AS n FROM brinicle_rows('shop/products')")
    assert table is not None
    assert table.to_pylist() == [{"n": 6}]
    with pytest.raises(InputError, match="Catalog Error"):
        run(con, "SELECT * FROM no_such_table")


def test_sees_new_generations_without_reregistering(con: duckdb.DuckDBPyConnection, shop: Store) -> None:
    before = con.execute("SELECT count(*) FROM brinicle_rows('shop/products')").fetchall()[0][0]
    ingest(PRODUCTS.with_columns(product_id=PRODUCTS["product_id"] + 100), "shop/products", store=shop)
    after = con.execute("SELECT count(*) FROM brinicle_rows('shop/products')").fetchall()[0][0]
    assert (before, after) == (6, 12)
    fresh = con.sql("SELECT _key FROM brinicle_search('shop/products', 'rain jacket', k := 2)").fetchall()
    assert {k for (k,) in fresh} == {"4", "104"}


def test_empty_collection(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.create("empty", dim=4)
    con = register(duckdb.connect(), store)
    assert con.execute("SELECT count(*) FROM brinicle_rows('empty')").fetchall()[0][0] == 0
    assert con.sql("SELECT * FROM brinicle_search('empty', [1.0, 0, 0, 0])").fetchall() == []
    con.close()


@pytest.mark.parametrize("query", ["'hiking boots'", "brinicle_embed('shop/products', 'hiking boots')"])
def test_distances_are_doubles_that_print_as_written(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """A distance is the float32 usearch computed, as the double its shortest decimal names:
    round() then prints 0.123, not 0.12300000339746475."""
    rows = con.sql(f"SELECT _distance, round(_distance, 3) FROM brinicle_search('shop/products', {query}, k := 3)")
    assert [t for t in rows.types] == ["DOUBLE", "DOUBLE"]
    for distance, rounded in rows.fetchall():
        assert repr(distance) == str(np.float32(distance))  # no widening noise
        assert len(repr(rounded)) <= 5  # 0.186, never 0.18600000441074371
    hits = con.execute(f"SELECT brinicle_search_ids('shop/products', {query}, 2)").fetchall()[0][0]
    assert all(repr(h["distance"]) == str(np.float32(h["distance"])) for h in hits)


def test_an_empty_text_query_is_refused(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.Error, match="search: the query text is empty; give words to search for, or a vector"):
        con.sql("SELECT * FROM brinicle_search('shop/products', '')").fetchall()


def test_a_sharded_collection_in_sql(tmp_path: Path) -> None:
    store = Store(tmp_path / "sharded")
    ingest(PRODUCTS, "shop/products", store=store, model="hash-64", semantic_fields=["title"], shards=3)
    plain = Store(tmp_path / "plain")
    ingest(PRODUCTS, "shop/products", store=plain, model="hash-64", semantic_fields=["title"])
    sharded_con, plain_con = connect(store), connect(plain)
    rows = "SELECT product_id, title, price FROM brinicle_rows('shop/products') ORDER BY product_id"
    assert sharded_con.sql(rows).fetchall() == plain_con.sql(rows).fetchall()
    # Search equals the unsharded collection's (exact at this size), a filter included.
    for query in (
        "SELECT _key, title FROM brinicle_search('shop/products', 'hiking boots', k := 4)",
        "SELECT _key, title FROM brinicle_search('shop/products', 'boots', k := 2, filter := 'price < 120')",
        "SELECT brinicle_search_ids('shop/products', 'rain jacket', 3)",
    ):
        assert sharded_con.sql(query).fetchall() == plain_con.sql(query).fetchall(), query
    # Rows deleted from one shard leave the table and the search.
    sharded = store.open("shop/products")
    sharded.delete(["2"])
    assert [r[0] for r in sharded_con.sql(rows).fetchall()] == [1, 3, 4, 5, 6]
    hits = sharded_con.sql("SELECT _key FROM brinicle_search('shop/products', 'waterproof hiking boots', k := 6)")
    assert sorted(r[0] for r in hits.fetchall()) == ["1", "3", "4", "5", "6"]
    sharded_con.close()
    plain_con.close()


def test_search_rows_keep_every_type_as_brinicle_rows_has_it(tmp_path: Path) -> None:
    import datetime

    frame = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "n": [1, None, 3],
            "x": [1.5, float("nan"), float("-inf")],
            "ok": [True, False, None],
            "day": [datetime.date(2024, 1, 2), None, datetime.date(1999, 12, 31)],
            "at": [datetime.datetime(2024, 1, 2, 3, 4, 5, 123456), None, datetime.datetime(2000, 1, 1)],
            "s": ['ünï "q" \\ x', None, "z"],
            "v": [[0.1, 0.2, 0.3], [0.3, 0.1, 0.2], [0.2, 0.3, 0.1]],
        }
    )
    ingest(frame, "db/types", store=tmp_path / "store", vector_col="v", primary_key="id")
    con = connect(tmp_path / "store")
    found = con.execute("SELECT * FROM brinicle_search('db/types', [0.1, 0.2, 0.3]::FLOAT[], k := 3)")
    columns = [d[0] for d in found.description]
    types = [str(d[1]) for d in found.description][2:]
    hits = found.fetchall()
    stored = con.execute("SELECT * FROM brinicle_rows('db/types')")
    assert columns == ["_key", "_distance", *[d[0] for d in stored.description][1:]]
    assert types == ["VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "DATE", "TIMESTAMP", "VARCHAR"]
    rows = {r[0]: r[1:] for r in stored.fetchall()}
    assert sorted(h[0] for h in hits) == ["a", "b", "c"]
    for hit in hits:
        # repr: NaN equals itself there, and 1 and 1.0 or a date and a datetime do not
        assert repr(hit[2:]) == repr(rows[hit[0]])
