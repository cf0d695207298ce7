"""HTTP ingest of tables: /build_ingest_data/ and the upsertion-task API, on real server processes."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from brinicle_etl import Store
from brinicle_etl.client import BrinicleClient, ConflictHTTPError, NotFoundHTTPError
from brinicle_etl.embed import ModelSpec
from brinicle_etl.pipeline import model_registry
from tests.server_process import running_server

FORM = {"dim": "128", "seed": "1", "depth": "2"}


def prepared_store(path: Path) -> Path:
    model_registry(Store(path)).register(ModelSpec(id="hash128", dim=128, kind="hash"))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    store = prepared_store(tmp_path_factory.mktemp("ingest") / "store")
    with running_server(store, "--max-upload-mb", "1", env={"BRINICLE_TASK_BATCH": "10"}) as (url, _proc):
        yield url, store


@pytest.fixture
def http(server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=120) as client:
        yield client


def upload(http: httpx.Client, body: str, **fields: str) -> httpx.Response:
    return http.post(
        "/build_ingest_data/", data={**FORM, **fields}, files={"file": ("rows.csv", body.encode(), "text/csv")}
    )


def test_create_then_append(http: httpx.Client) -> None:
    r = upload(http, "id,title\n1,red boots\n2,blue tent\n", db_name="shop!", namespace="main")
    assert r.status_code == 200, r.text
    body = r.json()
    expected = {
        "status": "success",
        "mode": "Create",
        "rows_added": 2,
        "rows_inserted": 2,
        "rows_updated": 0,
        "rows_skipped": 0,
        "conflicts": [],
        "on_conflict": "error",
        "vector_source": "generated",
        "namespace": "main",
    }
    assert {k: body[k] for k in expected} == expected
    assert body["db_name"] == "shop_"
    r = upload(http, "id,title\n2,blue tent XL\n3,green stove\n", db_name="shop!", namespace="main", on_conflict="skip")
    body = r.json()
    assert (body["mode"], body["rows_inserted"], body["rows_skipped"], body["conflicts"]) == ("Append", 1, 1, [2])
    assert "shop_/main" in http.get("/indexes").json()["indexes"], "served at once"
    hits = http.post("/search", json={"index_name": "shop_/main", "query": "green stove", "k": 1}).json()["results"]
    assert hits[0]["row"]["title"] == "green stove"


@pytest.mark.parametrize("policy", ["error", "skip", "update"])
def test_any_key_collision_is_a_conflict_as_the_spec_says(http: httpx.Client, policy: str) -> None:
    """spec 001: each incoming row is checked against the namespace's rows; any key collision
    is a conflict. Identical rows collide too, and are still never re-embedded."""
    db = f"collide_{policy}"
    first = upload(http, "id,title\n1,red boots\n2,blue tent\n", db_name=db)
    assert first.status_code == 200
    again = upload(http, "id,title\n1,red boots\n2,green tent\n3,stove\n", db_name=db, on_conflict=policy)
    if policy == "error":
        assert again.status_code == 409
        assert again.json()["detail"].startswith("primary key 'id' already holds 2 of the incoming key(s): 1, 2;")
        return
    body = again.json()
    counted = "rows_skipped" if policy == "skip" else "rows_updated"
    assert (again.status_code, body[counted], body["conflicts"], body["rows_inserted"]) == (200, 2, [1, 2], 1)
    assert body["rows_unchanged"] == 0
    # the identical row 1 is not embedded again; on update the changed row 2 is
    assert body["rows_embedded"] == (1 if policy == "skip" else 2)


def test_seed_and_depth_are_needed_to_create_not_to_append(http: httpx.Client) -> None:
    rows = {"file": ("rows.csv", b"id,title\n1,red boots\n", "text/csv")}
    r = http.post("/build_ingest_data/", data={"dim": "128", "db_name": "sd"}, files=rows)
    assert (r.status_code, [p["loc"][-1] for p in r.json()["detail"]]) == (422, ["seed", "depth"])
    assert upload(http, "id,title\n1,red boots\n", db_name="sd").status_code == 200
    more = {"file": ("more.csv", b"id,title\n2,blue tent\n", "text/csv")}
    r = http.post("/build_ingest_data/", data={"dim": "128", "db_name": "sd"}, files=more)
    assert (r.status_code, r.json()["rows_inserted"]) == (200, 1)


def test_errors_name_the_uploaded_file_not_the_servers_copy(http: httpx.Client, server: tuple[str, Path]) -> None:
    r = http.post("/build_ingest_data/", data=FORM, files={"file": ("my export.csv", b"", "text/csv")})
    assert (r.status_code, r.json()["detail"]) == (400, "my export.csv is empty: no header row and no data")
    r = upload(http, "id,title\n1,a,b\n", db_name="ragged")
    assert r.json()["detail"] == "rows.csv: line 2: expected 2 fields like the header, found 3"
    assert str(server[1]) not in r.text


def test_error_statuses(http: httpx.Client) -> None:
    assert upload(http, "id,title\n1,a\n", db_name="errs").status_code == 200
    r = upload(http, "id,title\n1,changed\n", db_name="errs")
    assert r.status_code == 409
    assert r.json()["detail"].startswith("primary key 'id' already holds 1 of the incoming key(s): 1;")
    cases = [
        ({"db_name": "errs", "dim": "256"}, "dimension mismatch: 'errs/default' holds 128-d vectors"),
        ({"db_name": "small", "dim": "64"}, "dim must be between 128 and 8192 for a new database; got 64"),
        ({"db_name": "huge", "dim": "9000"}, "dim must be between 128 and 8192 for a new database; got 9000"),
        ({"db_name": "errs", "on_conflict": "merge"}, "on_conflict must be one of 'error', 'update', 'skip'"),
        ({"db_name": "errs", "dtype_config": "f64"}, "dtype_config must be one of"),
        ({"db_name": "errs", "depth": "12"}, "depth must be between 1 and 8"),
    ]
    for fields, detail in cases:
        r = upload(http, "id,title\n9,x\n", **fields)
        assert (r.status_code, detail in r.json()["detail"]) == (400, True), (fields, r.text)
    r = upload(http, 'id,vec\n1,"[1, 2, nope]"\n', db_name="vecs", vector_col="vec")
    assert r.status_code == 400
    assert "row 1, column 'vec': not a JSON array" in r.json()["detail"]
    r = http.post("/build_ingest_data/", data={"seed": "1"}, files={"file": ("a.csv", b"id\n1\n")})
    assert r.status_code == 422
    assert [p["loc"][-1] for p in r.json()["detail"]] == ["dim", "depth"]
    r = http.post("/build_ingest_data/", data={**FORM, "dim": "many"}, files={"file": ("a.csv", b"id\n1\n")})
    assert (r.status_code, r.json()["detail"][0]["loc"]) == (422, ["body", "dim"])


def test_an_upload_over_the_limit_is_refused_while_streaming(http: httpx.Client, server: tuple[str, Path]) -> None:
    server_store = server[1]
    big = b"id,title\n" + b"".join(b"%d,some product title number %d\n" % (i, i) for i in range(600_000))
    assert len(big) > 20 * 2**20
    r = http.post("/build_ingest_data/", data=FORM, files={"file": ("big.csv", big, "text/csv")})
    assert r.status_code == 413
    assert r.json()["detail"] == "upload too large: the limit is 1048576 bytes, 0 bytes arrived before it stopped"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server has to count
        boundary = b"--b0undary"
        head = b'\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
        yield boundary + head
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]
        yield b"\r\n" + boundary + b"--\r\n"

    r = http.post(
        "/build_ingest_data/", content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    assert r.status_code == 413
    received = int(r.json()["detail"].split(", ")[1].split()[0])
    assert 2**20 < received < 2 * 2**20, "the server stopped reading a little past the limit"
    assert r.headers["connection"] == "close"
    assert http.get("/").status_code == 200
    assert not any((server_store / ".brinicle" / "uploads").glob("*")), "nothing spooled stays behind"


def test_api_keys_and_quotas(tmp_path: Path) -> None:
    store = prepared_store(tmp_path / "store")
    rows = "id,title\n" + "".join(f"{i},product number {i} with a longer title\n" for i in range(2000))
    with (
        running_server(
            store, "--api-key", "alice", "--api-key", "bob", "--quota", "bob=0.01", env={"TEST_KEY": "alice"}
        ) as (url, _proc),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        files = {"file": ("rows.csv", rows.encode(), "text/csv")}
        assert http.post("/build_ingest_data/", data=FORM, files=files).status_code == 401
        ok = http.post("/build_ingest_data/", data=FORM, files=files, headers={"X-API-Key": "alice"})
        assert ok.status_code == 200, ok.text
        refused = http.post(
            "/build_ingest_data/", data={**FORM, "db_name": "bobs"}, files=files, headers={"X-API-Key": "bob"}
        )
        assert refused.status_code == 403
        assert refused.json()["detail"].startswith("storage quota exceeded: this API key's collections use 0.0 MB")
    ledger = json.loads((store / ".brinicle" / "usage.json").read_text())
    assert list(ledger["collections"]) == ["fractal_db/default"]
    assert ledger["collections"]["fractal_db/default"]["rows"] == 2000


# ---- upsertion tasks ------------------------------------------------------------------


def items(n: int, offset: int = 0) -> list[dict]:
    return [
        {"object_id": f"o{i}", "payload": {"text": f"object {i} about tents"}, "item_info": {"n": i}}
        for i in range(offset, offset + n)
    ]


def test_task_lifecycle(server: tuple[str, Path]) -> None:
    with BrinicleClient(server[0]) as c:
        task = c.run_upsertion_task("hash128", items(25), task_id="life", index_name="tasks")
        assert set(task) >= {"id", "embedding_model_id", "status", "created_at", "updated_at", "failed_items"}
        assert (task["id"], task["status"], task["failed_items"]) == ("life", "pending", [])
        assert c.run_upsertion_task("hash128", items(25), task_id="life", index_name="tasks")["id"] == "life"
        with pytest.raises(ConflictHTTPError, match="exists with a different body"):
            c.run_upsertion_task("hash128", items(26), task_id="life", index_name="tasks")
        done = c.wait_for_task("life")
        assert (done["status"], done["processed_count"], done["batches_done"]) == ("succeeded", 25, 3)
        assert c.get_index_status("tasks")["live_count"] == 25
        bad = [*items(3), {"object_id": "x", "payload": "text"}, {"payload": {"text": "no id"}}]
        partial = c.wait_for_task(c.run_upsertion_task("hash128", bad, index_name="tasks")["id"])
        assert partial["status"] == "partially_failed"
        assert [f["position"] for f in partial["failed_items"]] == [3, 4]
        listed = c.list_upsertion_tasks(status="succeeded")
        assert [t["id"] for t in listed["tasks"]] == ["life"]
        assert c.list_upsertion_tasks(offset=1, limit=1)["total"] >= 2
        with pytest.raises(NotFoundHTTPError):
            c.get_upsertion_task("nope")
        with pytest.raises(ConflictHTTPError, match="only failed or cancelled tasks can be restarted"):
            c.restart_upsertion_task("life")
        with pytest.raises(ConflictHTTPError, match="only pending or running tasks can be cancelled"):
            c.cancel_upsertion_task("life")
    with httpx.Client(base_url=server[0]) as http:
        r = http.post("/internal/upsertion-tasks/run", json={"embedding_model_id": "nope", "items": []})
        assert (r.status_code, "unknown embedding model 'nope'" in r.json()["detail"]) == (400, True)
        r = http.post(
            "/internal/upsertion-tasks/run", json={"embedding_model_id": "hash128", "items": [], "index_name": "../etc"}
        )
        assert r.status_code == 400
        assert http.get("/internal/upsertion-tasks/list", params={"status": "done"}).status_code == 400
        assert http.get("/internal/upsertion-tasks/info").status_code == 422
        assert http.put("/internal/upsertion-tasks/cancel", params={"task_id": "nope"}).status_code == 404


def test_cancel_mid_run_then_restart(server: tuple[str, Path]) -> None:
    with BrinicleClient(server[0]) as c:
        c.run_upsertion_task("all-MiniLM-L6-v2", items(400), task_id="slow", index_name="slow")
        deadline = time.monotonic() + 60
        while c.get_upsertion_task("slow")["batches_done"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.cancel_upsertion_task("slow")
        stopped = c.wait_for_task("slow")
        assert stopped["status"] == "cancelled"
        assert 1 <= stopped["batches_done"] < 40
        assert c.get_index_status("slow")["live_count"] == stopped["batches_done"] * 10
        assert c.restart_upsertion_task("slow")["status"] == "pending"
        finished = c.wait_for_task("slow")
        assert (finished["status"], finished["batches_done"]) == ("succeeded", 40)
        assert c.get_index_status("slow")["live_count"] == 400


def test_sigkill_mid_task_then_restart_completes_exactly_once(tmp_path: Path) -> None:
    store = prepared_store(tmp_path / "store")
    env = {"BRINICLE_TASK_BATCH": "50"}
    with running_server(store, env=env) as (url, proc), BrinicleClient(url) as c:
        c.run_upsertion_task("all-MiniLM-L6-v2", items(1000), task_id="killme", index_name="k")
        deadline = time.monotonic() + 120
        while c.get_upsertion_task("killme")["batches_done"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    mid = json.loads((store / ".brinicle" / "tasks" / "killme" / "task.json").read_text())
    assert mid["status"] == "running"
    assert mid["batches_done"] < 20
    with running_server(store, env=env) as (url, _proc), BrinicleClient(url) as c:
        done = c.wait_for_task("killme", timeout=300)
        assert (done["status"], done["batches_done"], done["processed_count"]) == ("succeeded", 20, 1000)
        assert c.get_index_status("k")["live_count"] == 1000
    col = Store(store).open("k")
    assert col.generation == 20, "one generation per batch: none was applied twice"
    assert sorted(col.keys(), key=lambda k: int(k[1:])) == [f"o{i}" for i in range(1000)]
    assert len(np.unique(col.rows(["_row_id"]).column("_row_id").to_numpy())) == 1000
