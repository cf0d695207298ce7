"""The README's SQL examples, run verbatim against the sample catalogue (real model), and the sql command."""

from __future__ import annotations

import re
import subprocess
import sys

import duckdb
import pytest

from brinicle_etl import Store, ingest
from brinicle_etl.sql import connect
from tests.conftest import REPO

pytest.importorskip("sentence_transformers")


def readme_sql() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## SQL\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = Store(tmp_path_factory.mktemp("sql") / "brinicle_store")
    ingest(REPO / "sample_data" / "products.csv", "shop/products", store=store)
    return store


@pytest.fixture(scope="module")
def con(catalogue: Store) -> duckdb.DuckDBPyConnection:
    c = connect(catalogue)
    yield c
    c.close()


def rows(con: duckdb.DuckDBPyConnection, query: str) -> list[dict]:
    relation = con.sql(query)
    names = [d[0] for d in relation.description]
    return [dict(zip(names, r, strict=True)) for r in relation.fetchall()]


def test_the_readme_has_five_sql_examples() -> None:
    assert len(readme_sql()) == 5


def test_nearest_products(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(con, readme_sql()[0])
    assert len(got) == 10
    assert list(got[0]) == ["product_id", "title", "price", "distance"]
    assert all("Waterproof Hiking Boots" in r["title"] for r in got[:5])
    assert [r["distance"] for r in got] == sorted(r["distance"] for r in got)


def test_filtered_search_keeps_k(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(con, readme_sql()[1])
    assert len(got) == 5
    assert all(r["category"] == "apparel" and r["price"] < 150 for r in got)
    assert any("Jacket" in r["title"] for r in got[:2])


def test_rows_are_plain_sql(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(con, readme_sql()[2])
    assert [r["category"] for r in got] == ["apparel", "camping", "electronics", "footwear", "kitchen", "packs"]
    assert sum(r["products"] for r in got) == 300


def test_a_table_of_queries(con: duckdb.DuckDBPyConnection, catalogue: Store) -> None:
    got = rows(con, readme_sql()[3])
    assert len(got) == 9
    titles = {r["_key"]: r["title"] for r in catalogue.open("shop/products").rows(["title"]).to_pylist()}
    first = {q: next(r for r in got if r["q"] == q) for q in ("rain jacket", "camping stove", "coffee grinder")}
    assert "Rain Jacket" in titles[first["rain jacket"]["key"]]
    assert "Camping Stove" in titles[first["camping stove"]["key"]]
    assert "Coffee Grinder" in titles[first["coffee grinder"]["key"]]


def test_embed_then_join(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(con, readme_sql()[4])
    assert len(got) == 5
    assert "Headlamp" in got[0]["title"]


def test_sql_command_runs_a_query_and_a_prompt(catalogue: Store) -> None:
    cli = [sys.executable, "-m", "brinicle_etl.cli", "sql", "--store", str(catalogue.root)]
    one = subprocess.run(
        [*cli, "SELECT count(*) AS n FROM brinicle_rows('shop/products')"], cwd=REPO, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.split() == ["n", "---", "300", "(1", "row)"]
    script = "SELECT title\nFROM brinicle_search('shop/products', 'headlamp', k := 1);\nSELECT nope;\nSELECT 1 AS x;\n"
    prompt = subprocess.run(cli, cwd=REPO, input=script, capture_output=True, text=True)
    # a script from a pipe stops at its first error, with a non-zero status
    assert prompt.returncode == 1
    assert "Headlamp" in prompt.stdout
    assert prompt.stderr == (
        'error: Binder Error: Referenced column "nope" was not found because the FROM clause is missing\n'
    )
    assert "x\n-\n1" not in prompt.stdout
