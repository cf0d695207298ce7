"""BrinicleClient against a real server: every method, and typed errors for error responses."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import polars as pl
import pytest

from brinicle_etl import InputError, NotFoundError, Store, ingest
from brinicle_etl.client import (
    BadRequestError,
    BrinicleClient,
    ConflictHTTPError,
    NotFoundHTTPError,
    UnauthorizedError,
    encode_batch,
)
from tests.conftest import clustered
from tests.server_process import running_server

DIM = 12


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrinicleClient]:
    store = tmp_path_factory.mktemp("client") / "store"
    frame = pl.DataFrame(
        {"sku": ["a", "b", "c"], "title": ["red boots", "blue jacket", "green tent"], "price": [10.0, 20.0, 30.0]}
    )
    ingest(frame, "shop/items", store=store, model="hash-16")
    with running_server(store) as (url, _proc), BrinicleClient(url) as c:
        yield c


def test_every_method(client: BrinicleClient) -> None:
    assert client.health_check()["success"] is True
    assert client.create_index("cli", DIM, params={"M": 8}, dtype="f32")["index_name"] == "cli"
    assert "cli" in client.list_indexes()
    x = clustered(100, DIM, seed=2)
    client.init("cli", "build")
    client.ingest("cli", "first", x[0])
    assert client.ingest_batch("cli", [f"v{i}" for i in range(1, 100)], x[1:]) == 99
    client.finalize("cli", params={"ef_construction": 64})
    status = client.get_index_status("cli")
    assert (status["live_count"], status["params"]["M"], status["params"]["ef_construction"]) == (100, 8, 64)
    assert client.search("cli", x[5], k=3)[0] == "v5"
    assert [hits[0] for hits in client.search_batch("cli", x[:3], k=2)] == ["first", "v1", "v2"]
    assert client.delete_items("cli", ["v5", "zz"], return_not_found=True) == {"deleted_count": 1, "not_found": ["zz"]}
    client.rebuild("cli", params={"ef_search": 40})
    client.optimize("cli")
    assert client.get_index_status("cli")["params"]["ef_search"] == 40
    client.delete_index("cli")
    assert "cli" not in client.list_indexes()
    client.load_index("cli")
    client.delete_index("cli", destroy=True)
    hits = client.search_rows("shop/items", "boots", k=2, filter={"price": {"lt": 25}})
    assert hits[0]["row"] == {"sku": "a", "title": "red boots", "price": 10.0}
    assert {h["key"] for h in hits} == {"a", "b"}


def test_errors_are_typed(client: BrinicleClient) -> None:
    with pytest.raises(NotFoundHTTPError) as info:
        client.get_index_status("missing")
    assert (info.value.status, info.value.detail) == (404, "Index 'missing' not found")
    assert isinstance(info.value, NotFoundError)
    client.create_index("twice", 4)
    with pytest.raises(ConflictHTTPError, match="HTTP 409: Index 'twice' already exists"):
        client.create_index("twice", 4)
    with pytest.raises(BadRequestError) as bad:
        client.create_index("bad name", 4)
    assert bad.value.status == 422
    assert isinstance(bad.value, InputError)
    with pytest.raises(BadRequestError, match="k must be an integer between 1 and 10000; got 0"):
        client.search("twice", np.ones(4), k=0)
    with pytest.raises(BadRequestError, match="no pending ingest session"):
        client.finalize("twice")


def test_batch_encoding_refuses_ids_it_cannot_carry() -> None:
    body = encode_batch(["a", "é"], np.ones((2, 3)))
    assert len(body) == 2 * (32 + 12)
    assert body[:32] == b"a".ljust(32, b"\0")
    assert body[44:76] == "é".encode().ljust(32, b"\0")
    with pytest.raises(InputError, match=r"id 'x{33}' must be 1-32 bytes"):
        encode_batch(["x" * 33], np.ones((1, 3)))
    with pytest.raises(InputError, match="2 ids need a"):
        encode_batch(["a", "b"], np.ones((3, 3)))


def test_api_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    store = tmp_path_factory.mktemp("keyed") / "store"
    Store(store).create("k", dim=4)
    with running_server(store, "--api-key", "t0ken", env={"TEST_KEY": "t0ken"}) as (url, _proc):
        with BrinicleClient(url, api_key="t0ken") as ok:
            assert ok.list_indexes() == ["k"]
        with BrinicleClient(url) as anonymous, pytest.raises(UnauthorizedError):
            anonymous.list_indexes()
