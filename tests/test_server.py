"""The HTTP server, as a real uvicorn process on 127.0.0.1: every endpoint and error status."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from brinicle_etl import Collection, Store, ingest
from brinicle_etl.client import encode_batch
from brinicle_etl.store import shard_of
from tests.conftest import clustered, exact_knn
from tests.server_process import peak_rss, running_server

DIM = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = tmp_path_factory.mktemp("server") / "store"
    ingest(
        pl.DataFrame(
            {
                "sku": ["a", "b", "c", "d", "e"],
                "title": [
                    "trail running shoes",
                    "waterproof hiking boots",
                    "water bottle",
                    "rain jacket",
                    "leather boots",
                ],
                "category": ["footwear", "footwear", "kitchen", "apparel", "footwear"],
                "price": [89.0, 149.0, 24.5, 119.0, 99.0],
            }
        ),
        "shop/products",
        store=store,
        model="hash-32",
    )
    Store(store).create("preexisting", dim=DIM)
    with running_server(store) as (url, _proc):
        yield url, store


@pytest.fixture
def http(server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60) as client:
        yield client


def rows_body(ids: list[str], vectors: np.ndarray) -> bytes:
    return b"".join(
        i.encode().ljust(32, b"\0") + struct.pack(f"<{DIM}f", *v) for i, v in zip(ids, vectors, strict=True)
    )


def create(http: httpx.Client, name: str, dim: int = DIM, **extra: object) -> None:
    r = http.post("/indexes", json={"index_name": name, "dim": dim, **extra})
    assert r.status_code == 200, r.text


def test_health_and_listing(http: httpx.Client) -> None:
    r = http.get("/")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"success", "message", "index_name"}
    assert body["success"] is True
    listed = http.get("/indexes").json()
    assert {"preexisting", "shop/products"} <= set(listed["indexes"])
    assert listed["count"] == len(listed["indexes"])


def test_create_index_and_its_errors(http: httpx.Client) -> None:
    r = http.post(
        "/indexes",
        json={
            "index_name": "fresh",
            "dim": DIM,
            "delta_ratio": 0.2,
            "params": {"M": 12, "ef_construction": 100, "ef_search": 32, "rng_seed": 3},
        },
    )
    assert r.json() == {"success": True, "message": "Index 'fresh' created successfully", "index_name": "fresh"}
    status = http.get("/indexes/fresh/status").json()
    assert (status["dim"], status["has_index"], status["needs_rebuild"], status["metric"]) == (
        DIM,
        False,
        False,
        "l2sq",
    )
    assert status["params"]["M"] == 12
    assert status["delta_ratio"] == 0.2
    assert http.post("/indexes", json={"index_name": "fresh", "dim": DIM}).status_code == 409
    assert http.post("/indexes", json={"index_name": "fresh", "dim": DIM}).json() == {
        "detail": "Index 'fresh' already exists"
    }
    for body in (
        {"index_name": "bad name", "dim": DIM},
        {"index_name": "../escape", "dim": DIM},
        {"index_name": "x" * 65, "dim": DIM},
        {"index_name": "ok", "dim": 0},
        {"index_name": "ok", "dim": DIM, "delta_ratio": 0.7},
        {"dim": DIM},
    ):
        r = http.post("/indexes", json=body)
        assert r.status_code == 422, body
        assert isinstance(r.json()["detail"], list)


def test_close_load_and_destroy(http: httpx.Client, server: tuple[str, Path]) -> None:
    create(http, "closable")
    r = http.delete("/indexes/closable", params={"destroy": "false"})
    assert r.json()["message"] == "Index 'closable' closed and removed"
    assert "closable" not in http.get("/indexes").json()["indexes"]
    assert http.get("/indexes/closable/status").status_code == 404
    assert (server[1] / "closable" / "default" / "manifest.json").exists()
    assert http.post("/indexes/load", json={"index_name": "closable"}).json()["success"] is True
    assert http.get("/indexes/closable/status").status_code == 200
    r = http.delete("/indexes/closable", params={"destroy": "true"})
    assert r.json()["message"] == "Index 'closable' destroyed"
    assert not (server[1] / "closable" / "default").exists()
    assert http.post("/indexes/load", json={"index_name": "closable"}).status_code == 404
    assert http.delete("/indexes/nope").status_code == 404
    assert http.delete("/indexes/..%2F..%2Fetc").status_code == 400


def test_full_session_with_json_and_binary_ingest(http: httpx.Client, server: tuple[str, Path]) -> None:
    create(http, "flow")
    x = clustered(300, DIM, seed=4, normalize=False)
    assert http.post("/init", json={"index_name": "flow", "mode": "build"}).json() == {
        "success": True,
        "message": "Index 'flow' initialized in 'build' mode",
        "index_name": "flow",
    }
    r = http.post("/ingest", json={"index_name": "flow", "external_id": "json-0", "vector": x[0].tolist()})
    assert (r.status_code, r.content) == (200, b'{"success":true}')
    body = rows_body([f"bin-{i}" for i in range(1, 300)], x[1:])
    r = http.post(
        "/ingest/batch",
        params={"index_name": "flow"},
        content=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.json() == {"success": True, "count": 299}
    assert http.get("/indexes/flow/status").json()["staged_count"] == 300
    r = http.post("/finalize", json={"index_name": "flow", "optimize": True})
    assert r.json()["message"] == "Finalized ingest for index 'flow' (optimize=true)"
    status = http.get("/indexes/flow/status").json()
    assert (status["has_index"], status["live_count"]) == (True, 300)

    # search.bin: the same answer as the library, byte for byte on the wire
    q = x[17]
    r = http.post(
        "/search.bin",
        params={"index_name": "flow", "k": 5, "efs": 100},
        content=q.astype("<f4").tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    local = [h.id for h in Collection(server[1] / "flow" / "default").search(q, 5, ef=100)]
    assert r.json() == local
    assert local[0] == "bin-17"
    assert r.headers["content-type"] == "application/json"
    r = http.post("/search/batch.bin", params={"index_name": "flow", "k": 3}, content=x[:4].astype("<f4").tobytes())
    assert [hits[0] for hits in r.json()] == ["json-0", "bin-1", "bin-2", "bin-3"]
    truth = exact_knn(x, x[:4], 3, "l2sq")
    names = ["json-0"] + [f"bin-{i}" for i in range(1, 300)]
    assert [set(h) for h in r.json()] == [{names[j] for j in t} for t in truth]


def test_ingest_errors(http: httpx.Client) -> None:
    create(http, "errs")
    assert (
        http.post("/ingest", json={"index_name": "errs", "external_id": "a", "vector": [0.0] * DIM}).status_code == 400
    )
    http.post("/init", json={"index_name": "errs", "mode": "upsert"})
    cases = [
        ({"index_name": "errs", "vector": [0.0] * DIM}, 400, "Missing required fields"),
        ({"index_name": "errs", "external_id": "", "vector": [0.0] * DIM}, 400, "Missing required fields"),
        ({"index_name": "errs", "external_id": "a", "vector": [0.0] * 3}, 400, "ingest: dimension mismatch"),
        ({"index_name": "errs", "external_id": "a", "vector": ["x"] * DIM}, 400, "vector must be an array of numbers"),
        ({"index_name": "nope", "external_id": "a", "vector": [0.0] * DIM}, 404, "Index 'nope' not found"),
    ]
    for body, status, detail in cases:
        r = http.post("/ingest", json=body)
        assert (r.status_code, detail in r.json()["detail"]) == (status, True), (body, r.text)
    r = http.post("/ingest", content=b"[1e999]", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = http.post("/init", json={"index_name": "errs", "mode": "replace"})
    assert r.status_code == 400
    assert "mode must be 'build', 'insert' or 'upsert'" in r.json()["detail"]
    r = http.post("/init", json={"index_name": "errs", "mode": "build"})
    assert (r.status_code, "already pending" in r.json()["detail"]) == (400, True)
    assert http.post("/init", json={"index_name": "nope", "mode": "build"}).status_code == 404


def test_a_rejected_batch_leaves_nothing_staged(http: httpx.Client) -> None:
    create(http, "partial")
    http.post("/init", json={"index_name": "partial", "mode": "build"})
    x = clustered(10, DIM, seed=8)
    good = rows_body([f"g{i}" for i in range(10)], x)
    r = http.post("/ingest/batch", params={"index_name": "partial"}, content=good + b"\0" * 7)
    assert r.status_code == 400
    assert r.json()["detail"] == (
        "ingest_batch: payload not aligned to rows: leftover 7 bytes, rows are 64 bytes (32-byte id + 8 float32)"
    )
    nan = rows_body(["n0", "n1"], np.vstack([x[0], np.full(DIM, np.nan)]))
    r = http.post("/ingest/batch", params={"index_name": "partial"}, content=good + nan)
    assert (r.status_code, r.json()["detail"]) == (400, "ingest_batch: row 11 (id 'n1') contains NaN/Inf")
    assert http.get("/indexes/partial/status").json()["staged_count"] == 0
    assert http.post("/ingest/batch", content=good).status_code == 400  # no index_name
    assert http.post("/ingest/batch", params={"index_name": "nope"}, content=good).status_code == 404
    assert http.post("/ingest/batch", params={"index_name": "partial"}, content=good).json()["count"] == 10


def test_finalize_delete_rebuild_optimize(http: httpx.Client) -> None:
    create(http, "maint", delta_ratio=0.1)
    x = clustered(200, DIM, seed=5)
    http.post("/init", json={"index_name": "maint", "mode": "build"})
    http.post("/ingest/batch", params={"index_name": "maint"}, content=rows_body([f"m{i}" for i in range(200)], x))
    assert (
        http.post("/finalize", json={"index_name": "maint", "build_params": {"M": 24}, "extra": 1}).status_code == 200
    )
    assert http.get("/indexes/maint/status").json()["params"]["M"] == 24
    assert http.post("/finalize", json={"index_name": "maint"}).status_code == 400
    r = http.post(
        "/delete",
        json={"index_name": "maint", "external_ids": [f"m{i}" for i in range(30)] + ["zz"], "return_not_found": True},
    )
    assert r.json() == {"deleted_count": 30, "not_found": ["zz"]}
    assert http.post("/delete", json={"index_name": "maint", "external_ids": ["m0"]}).json() == {
        "deleted_count": 0,
        "not_found": None,
    }
    assert http.post("/delete", json={"index_name": "maint", "external_ids": []}).status_code == 400
    assert http.post("/delete", json={"index_name": "nope", "external_ids": ["a"]}).status_code == 404
    assert http.get("/indexes/maint/status").json()["needs_rebuild"] is True
    r = http.post("/optimize", content=b'"maint"', headers={"Content-Type": "application/json"})
    assert r.json()["message"] == "Graph optimized for index 'maint'"
    status = http.get("/indexes/maint/status").json()
    assert (status["needs_rebuild"], status["deleted_count"], status["live_count"]) == (False, 0, 170)
    r = http.post("/optimize", json={"index_name": "maint"})
    assert r.json()["message"] == "Graph optimized for index 'maint' (nothing to merge)"
    r = http.post("/rebuild", json={"index_name": "maint", "params": {"ef_search": 99}})
    assert r.json()["message"] == "Index 'maint' rebuilt and compacted"
    assert http.get("/indexes/maint/status").json()["params"] == {
        "M": 24,
        "ef_construction": 200,
        "ef_search": 99,
        "rng_seed": 0,
        "build_n_threads": 0,
    }
    assert http.post("/rebuild", json={"index_name": "nope"}).status_code == 404
    assert http.post("/optimize", json={"index_name": "nope"}).status_code == 404


def test_search_errors(http: httpx.Client) -> None:
    vec = np.ones(DIM, "<f4").tobytes()
    assert http.post("/search.bin", params={"index_name": "preexisting"}, content=vec).json() == []
    cases = [
        ({"index_name": "preexisting", "k": 0}, vec, 400, "k must be an integer between 1 and 10000; got 0"),
        ({"index_name": "preexisting", "k": 10_001}, vec, 400, "k must be an integer between 1 and 10000; got 10001"),
        ({"index_name": "preexisting", "efs": 0}, vec, 400, "efs must be an integer between 1 and 16384; got 0"),
        ({"index_name": "preexisting", "efs": 2**63}, vec, 400, "efs must be an integer between 1 and 16384; got 9223"),
        ({"index_name": "preexisting", "efs": 2**64}, vec, 400, "efs must be an integer between 1 and 16384; got 1844"),
        ({"index_name": "preexisting"}, vec[:-4], 400, "Expected one float32 vector with dim=8"),
        ({"index_name": "nope"}, vec, 404, "Index 'nope' not found"),
        ({"index_name": "../x"}, vec, 400, "index_name can contain"),
    ]
    for params, body, status, detail in cases:
        r = http.post("/search.bin", params=params, content=body)
        assert (r.status_code, detail in r.json()["detail"]) == (status, True), (params, r.text)
    r = http.post("/search/batch.bin", params={"index_name": "preexisting"}, content=vec * 3 + b"\0")
    assert r.status_code == 400
    r = http.post("/search/batch.bin", params={"index_name": "preexisting"}, content=vec * 8193)
    assert (r.status_code, r.json()["detail"]) == (400, "Batch too large: at most 8192 queries, got 8193")
    assert http.post("/search/batch.bin", params={"index_name": "preexisting"}, content=vec * 2).json() == [[], []]


def test_search_with_rows_text_and_filters(http: httpx.Client) -> None:
    r = http.post("/search", json={"index_name": "shop/products", "query": "hiking boots", "k": 2})
    body = r.json()
    assert body["index_name"] == "shop/products"
    assert body["results"][0]["row"]["title"] == "waterproof hiking boots"
    assert len(body["results"]) == 2
    assert set(body["results"][0]) == {"key", "distance", "row"}
    assert body["results"][0]["row"]["sku"] == body["results"][0]["key"]
    r = http.post(
        "/search",
        json={
            "index_name": "shop/products",
            "query": "hiking boots",
            "k": 3,
            "filter": {"category": {"ne": "footwear"}},
        },
    )
    assert [h["row"]["category"] for h in r.json()["results"]] == ["kitchen", "apparel"] or len(
        r.json()["results"]
    ) == 2
    assert all(h["row"]["category"] != "footwear" for h in r.json()["results"])
    r = http.post(
        "/search",
        json={
            "index_name": "shop/products",
            "query": "boots",
            "k": 5,
            "filter": {"price": {"gte": 90, "lt": 150}, "sku": ["b", "d", "e"]},
        },
    )
    assert sorted(h["key"] for h in r.json()["results"]) == ["b", "d", "e"]
    vector = [0.0] * 31 + [1.0]
    assert (
        len(http.post("/search", json={"index_name": "shop/products", "query": vector, "k": 5}).json()["results"]) == 5
    )
    errors = [
        ({"index_name": "shop/products", "query": "x", "filter": {"colour": "red"}}, 400, "filter: unknown column"),
        ({"index_name": "shop/products", "query": "x", "filter": {"price": {"like": 3}}}, 400, "unknown operator"),
        ({"index_name": "shop/products", "query": "x", "filter": {"price": {"lt": {"a": 1}}}}, 400, "takes a number"),
        ({"index_name": "shop/products", "query": [1.0, 2.0]}, 400, "dimension mismatch"),
        ({"index_name": "preexisting", "query": "text"}, 400, "has no embedding model"),
        ({"index_name": "shop/products", "query": "x", "k": 0}, 400, "k must be an integer between 1 and 10000; got 0"),
        ({"index_name": "shop/products", "query": "x", "sql": "1=1"}, 422, ""),
    ]
    for body, status, detail in errors:
        r = http.post("/search", json=body)
        assert r.status_code == status, (body, r.text)
        if detail:
            assert detail in r.json()["detail"], r.text


def test_openapi_page(http: httpx.Client) -> None:
    assert http.get("/docs").status_code == 200
    paths = set(http.get("/openapi.json").json()["paths"])
    assert {
        "/",
        "/indexes",
        "/init",
        "/ingest",
        "/ingest/batch",
        "/finalize",
        "/delete",
        "/rebuild",
        "/search.bin",
        "/search/batch.bin",
        "/optimize",
        "/indexes/load",
        "/search",
    } <= paths


def test_searches_keep_answering_during_finalize_and_rebuild(http: httpx.Client) -> None:
    # one build thread and a wide beam: the top hit is the exact one whatever the machine's load
    create(http, "busy", dim=32, params={"build_n_threads": 1})
    x = clustered(20_000, 32, seed=9)
    names = [f"v{i}" for i in range(len(x))]
    http.post("/init", json={"index_name": "busy", "mode": "build"})
    http.post("/ingest/batch", params={"index_name": "busy"}, content=encode_batch(names, x))
    http.post("/finalize", json={"index_name": "busy"})
    http.post("/init", json={"index_name": "busy", "mode": "upsert"})
    http.post("/ingest/batch", params={"index_name": "busy"}, content=encode_batch(names[:5000], x[5000:10000]))
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def searcher() -> None:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as c:
            while not stop.is_set():
                r = c.post(
                    "/search.bin",
                    params={"index_name": "busy", "k": 1, "efs": 256},
                    content=x[7000].astype("<f4").tobytes(),
                )
                if r.status_code != 200:
                    failures.append(f"{r.status_code}: {r.text}")
                    continue
                answers.append(r.json()[0])

    thread = threading.Thread(target=searcher)
    thread.start()
    started = time.monotonic()
    http.post("/finalize", json={"index_name": "busy"})
    http.post("/rebuild", json={"index_name": "busy"})
    took = time.monotonic() - started
    stop.set()
    thread.join()
    assert failures == []
    # before the upsert, and after it (v2000 took v7000's vector)
    assert set(answers) <= {"v7000", "v2000"}
    assert len(answers) > 20, f"only {len(answers)} searches answered in {took:.1f}s of finalize and rebuild"


def test_a_large_batch_streams_without_copies_of_the_payload(tmp_path: Path) -> None:
    n, dim = 100_000, 384
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    payload = encode_batch([f"doc-{i}" for i in range(n)], x)
    with running_server(tmp_path / "big") as (url, proc), httpx.Client(base_url=url, timeout=300) as http:
        create(http, "big", dim=dim)
        http.post("/init", json={"index_name": "big", "mode": "build"})
        http.post("/search.bin", params={"index_name": "big"}, content=x[0].tobytes())  # warm the request path
        before = peak_rss(proc.pid)
        r = http.post("/ingest/batch", params={"index_name": "big"}, content=payload)
        grew = peak_rss(proc.pid) - before
        assert r.json() == {"success": True, "count": n}
        assert grew < 0.5 * len(payload), (
            f"server peak RSS grew {grew / 2**20:.0f} MB for a {len(payload) / 2**20:.0f} MB batch"
        )
        assert http.get("/indexes/big/status").json()["staged_count"] == n


def test_server_settings_survive_the_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve() hands its settings to uvicorn's worker processes through the environment."""
    from brinicle_etl.server import ServerSettings

    settings = ServerSettings(
        store="/srv/vectors",
        api_keys=("k1", "k2"),
        quotas={"k1": 3 * 2**20, "k2": 1536},
        max_upload_bytes=5 * 2**20,
        task_batch_size=9,
        writer_timeout=2.5,
        max_waiting_writers=7,
        upload_idle_seconds=1.5,
    )
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert ServerSettings.from_env() == settings


def test_a_sharded_index_over_http(http: httpx.Client, server: tuple[str, Path]) -> None:
    create(http, "split", metric="l2sq", dtype="f32", shards=3)
    x = clustered(300, DIM, seed=9, normalize=False)
    ids = [f"s-{i}" for i in range(300)]
    assert http.post("/init", json={"index_name": "split", "mode": "build"}).json()["success"] is True
    r = http.post("/ingest", json={"index_name": "split", "external_id": ids[0], "vector": x[0].tolist()})
    assert r.json() == {"success": True}
    r = http.post(
        "/ingest/batch",
        params={"index_name": "split"},
        content=rows_body(ids[1:], x[1:]),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.json() == {"success": True, "count": 299}
    status = http.get("/indexes/split/status").json()
    assert (status["staged_count"], len(status["shards"])) == (300, 3)
    assert http.post("/finalize", json={"index_name": "split"}).json()["success"] is True
    status = http.get("/indexes/split/status").json()
    owner = shard_of(ids, 3)
    assert status["live_count"] == 300
    assert [s["live_count"] for s in status["shards"]] == np.bincount(owner, minlength=3).tolist()
    truth = exact_knn(x, x[:4], 3, "l2sq")
    r = http.post("/search/batch.bin", params={"index_name": "split", "k": 3, "efs": 200}, content=x[:4].tobytes())
    assert r.json() == [[ids[j] for j in row] for row in truth]
    r = http.post("/delete", json={"index_name": "split", "external_ids": [ids[1], "nope"], "return_not_found": True})
    assert r.json() == {"deleted_count": 1, "not_found": ["nope"]}
    assert http.get("/indexes/split/status").json()["live_count"] == 299
    # A bad row anywhere stages nothing in any shard.
    assert http.post("/init", json={"index_name": "split", "mode": "upsert"}).json()["success"] is True
    bad = rows_body(["ok-1", "ok-2", ""], x[:3])
    r = http.post("/ingest/batch", params={"index_name": "split"}, content=bad)
    assert r.status_code == 400 and r.json()["detail"] == "ingest_batch: row 2 has an empty external id"
    assert http.get("/indexes/split/status").json()["staged_count"] == 0
    assert http.delete("/indexes/split", params={"destroy": "true"}).json()["message"] == "Index 'split' destroyed"
    assert not (server[1] / "split" / "default").exists()
    assert http.get("/indexes/split/status").status_code == 404
