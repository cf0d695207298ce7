"""A careless or hostile client against a real server: stalled and queued writers, names that try
to leave the store, numbers out of range, malformed uploads. Nothing wedges, nothing is a 500."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from brinicle_etl import Store
from brinicle_etl.embed import ModelSpec
from brinicle_etl.pipeline import model_registry
from brinicle_etl.store.lock import writer_lock
from tests.conftest import clustered
from tests.server_process import running_server, server_log

DIM = 4
ROW = 32 + 4 * DIM
WRITER_TIMEOUT = 6.0


def rows_body(ids: list[str], vectors: np.ndarray) -> bytes:
    return b"".join(i.encode().ljust(32, b"\0") + v.astype("<f4").tobytes() for i, v in zip(ids, vectors, strict=True))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("robust")
    store = root / "store"
    model_registry(Store(store)).register(ModelSpec(id="hash128", dim=128, kind="hash"))
    args = ("--upload-idle-seconds", "2", "--writer-timeout", str(WRITER_TIMEOUT), "--max-upload-mb", "2")
    with running_server(store, *args) as (url, proc):
        yield url, store
        assert "Traceback" not in server_log(proc), server_log(proc)


@pytest.fixture
def http(server: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0], timeout=60) as client:
        yield client


def create(http: httpx.Client, name: str, dim: int = DIM) -> None:
    r = http.post("/indexes", json={"index_name": name, "dim": dim})
    assert r.status_code == 200, r.text


def built(http: httpx.Client, name: str, n: int = 50) -> np.ndarray:
    create(http, name)
    x = clustered(n, DIM, seed=3)
    http.post("/init", json={"index_name": name, "mode": "build"})
    body = rows_body([f"v{i}" for i in range(n)], x)
    assert http.post("/ingest/batch", params={"index_name": name}, content=body).status_code == 200
    assert http.post("/finalize", json={"index_name": name}).status_code == 200
    return x


class Probe:
    """GET / and POST /search.bin in a loop on their own thread; records the slowest answer."""

    def __init__(self, url: str, index: str, query: np.ndarray):
        self.url, self.index, self.query = url, index, query.astype("<f4").tobytes()
        self.slowest = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as c:
            while not self._stop.is_set():
                for method, path, kwargs in (
                    ("GET", "/", {}),
                    ("POST", "/search.bin", {"params": {"index_name": self.index, "k": 3}, "content": self.query}),
                ):
                    t = time.monotonic()
                    try:
                        r = c.request(method, path, **kwargs)
                        if r.status_code != 200:
                            self.failures.append(f"{path}: {r.status_code}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {exc!r}")
                    self.slowest = max(self.slowest, time.monotonic() - t)
                    self.answers += 1
                self._stop.wait(0.05)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def stalled_upload(url: str, index: str, declared: int, sent: bytes) -> socket.socket:
    """A client that announces ``declared`` bytes, sends ``sent`` and then nothing."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"POST /ingest/batch?index_name={index} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + sent)
    return sock


def answer_of(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection (its answer may come in pieces)."""
    sock.settimeout(10)
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts).decode(errors="replace")


async def many(url: str, requests: list[tuple[str, str, dict]]) -> list[tuple[int, float, dict[str, str], str]]:
    """Send every request at once; (status, seconds, headers, body) for each."""
    limits = httpx.Limits(max_connections=len(requests) + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def one(method: str, path: str, kwargs: dict) -> tuple[int, float, dict[str, str], str]:
            t = time.monotonic()
            r = await c.request(method, path, **kwargs)
            return r.status_code, time.monotonic() - t, dict(r.headers), r.text

        return await asyncio.gather(*(one(m, p, k) for m, p, k in requests))


def test_stalled_and_queued_writers_never_wedge_the_server(http: httpx.Client, server: tuple[str, Path]) -> None:
    url, _store = server
    x = built(http, "probe_idx")
    create(http, "wedge")
    assert http.post("/init", json={"index_name": "wedge", "mode": "build"}).status_code == 200
    # The reproduction: one upload announces 10 rows and sends 1; 100 writers queue behind it.
    stalled = stalled_upload(url, "wedge", 10 * ROW, rows_body(["stall"], x[:1]))
    y = clustered(100, DIM, seed=7)
    writers = [
        ("POST", "/ingest/batch", {"params": {"index_name": "wedge"}, "content": rows_body([f"q{i}"], y[i : i + 1])})
        for i in range(100)
    ]
    with Probe(url, "probe_idx", x[0]) as probe:
        answers = asyncio.run(many(url, writers))
        stalled.close()
        time.sleep(0.5)
        finalize = [("POST", "/finalize", {"json": {"index_name": "wedge"}}) for _ in range(41)]
        finalized = asyncio.run(many(url, finalize))
    assert probe.failures == [] and probe.answers > 0
    assert probe.slowest < 1.0, probe.slowest
    assert [status for status, *_ in answers] == [200] * 100
    assert max(seconds for _, seconds, *_ in answers) < WRITER_TIMEOUT
    # one finalize applies the session; the others find none (a clear 400), none waits forever
    assert sorted(status for status, *_ in finalized) == [200] + [400] * 40
    assert all("no pending ingest session" in body for status, _, _, body in finalized if status == 400)
    status = http.get("/indexes/wedge/status").json()
    assert status["live_count"] == 100  # every acknowledged row, and nothing of the stalled upload


def test_a_stalled_upload_is_dropped_with_408(server: tuple[str, Path]) -> None:
    url, _store = server
    with httpx.Client(base_url=url, timeout=30) as c:
        create(c, "stall408")
        c.post("/init", json={"index_name": "stall408", "mode": "build"})
    sock = stalled_upload(url, "stall408", 10 * ROW, b"\0" * ROW)
    t = time.monotonic()
    answer = answer_of(sock)
    sock.close()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "upload stalled: no bytes for 2 s; nothing was written" in answer
    assert time.monotonic() - t < 5


def test_writers_queued_behind_another_process_are_bounded(http: httpx.Client, server: tuple[str, Path]) -> None:
    url, store = server
    x = built(http, "held")
    http.post("/init", json={"index_name": "held", "mode": "upsert"})
    y = clustered(300, DIM, seed=8)
    writers = [
        ("POST", "/ingest/batch", {"params": {"index_name": "held"}, "content": rows_body([f"h{i}"], y[i : i + 1])})
        for i in range(300)
    ]
    released = threading.Event()

    def hold_then_release(seconds: float) -> None:
        with writer_lock(store / "held" / "default", wait=True):  # another process's writer, as the server sees it
            released.wait(seconds)

    holder = threading.Thread(target=hold_then_release, args=(3.0,))
    holder.start()
    time.sleep(0.2)
    with Probe(url, "held", x[0]) as probe:
        answers = asyncio.run(many(url, writers))
    holder.join()
    assert probe.failures == [] and probe.slowest < 1.0, (probe.failures, probe.slowest)
    statuses = sorted(status for status, *_ in answers)
    # one writer has its turn (polling the other process's lock) and 256 may wait behind it;
    # they all go through once the lock is free, and the rest are told at once to retry
    assert statuses == [200] * 257 + [503] * 43, statuses
    for status, seconds, headers, body in answers:
        assert seconds < WRITER_TIMEOUT + 1
        if status == 503:
            assert headers["retry-after"] == "1"
            assert body == '{"detail":"collection \'held/default\' has 256 writers waiting already; retry in a second"}'

    # held past the writer timeout: every waiting writer hears so, with retry advice, in time
    holder = threading.Thread(target=hold_then_release, args=(WRITER_TIMEOUT + 3,))
    holder.start()
    time.sleep(0.2)
    answers = asyncio.run(many(url, writers[:10]))
    released.set()
    holder.join()
    for status, seconds, headers, body in answers:
        assert (status, headers["retry-after"]) == (503, "1")
        assert "stayed busy with another writer for 6 s; retry later" in body
        assert WRITER_TIMEOUT - 0.5 < seconds < WRITER_TIMEOUT + 2


def test_sixty_concurrent_megabyte_uploads_on_one_index(http: httpx.Client, server: tuple[str, Path]) -> None:
    url, _store = server
    create(http, "big", dim=64)
    http.post("/init", json={"index_name": "big", "mode": "build"})
    n = 3600  # 3,600 rows of a 32-byte id and 64 float32: about 1 MB
    vectors = clustered(n, 64, seed=5)
    uploads = [
        (
            "POST",
            "/ingest/batch",
            {
                "params": {"index_name": "big"},
                "content": b"".join(
                    f"u{u}-{i}".encode().ljust(32, b"\0") + vectors[i].astype("<f4").tobytes() for i in range(n)
                ),
            },
        )
        for u in range(60)
    ]
    with Probe(url, "probe_idx", np.ones(DIM)) as probe:
        answers = asyncio.run(many(url, uploads))
    assert [status for status, *_ in answers] == [200] * 60
    assert probe.failures == [] and probe.slowest < 1.0, (probe.failures, probe.slowest)
    assert http.get("/indexes/big/status").json()["staged_count"] == 60 * n


def test_sigterm_stops_the_server_despite_a_stalled_client(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_server(store, "--upload-idle-seconds", "60") as (url, proc):
        with httpx.Client(base_url=url) as c:
            create(c, "t")
            c.post("/init", json={"index_name": "t", "mode": "build"})
        sock = stalled_upload(url, "t", 100 * ROW, b"\0" * ROW)
        time.sleep(0.3)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        sock.close()
        assert time.monotonic() - t < 15


def test_bodies_over_the_limits_are_413_before_they_are_read(http: httpx.Client) -> None:
    create(http, "limits")
    http.post("/init", json={"index_name": "limits", "mode": "build"})

    def endless(pieces: int) -> Iterator[bytes]:  # no Content-Length: the server has to count
        for _ in range(pieces):
            yield b" " * (1 << 20)

    # held in memory: 64 MB at most, announced or not
    parts = urlsplit(str(http.base_url))
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /delete HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: %d\r\n\r\n{" % 2**30)
        answer = answer_of(sock)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert answer.endswith(
        '{"detail":"request body too large: the limit is 67108864 bytes, 0 bytes arrived before it stopped"}'
    )
    r = http.post("/ingest", content=endless(100), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["detail"].startswith("request body too large: the limit is 67108864 bytes, ")
    # spooled to disk: --max-upload-mb (2 here)
    r = http.post("/ingest/batch", params={"index_name": "limits"}, content=endless(5))
    assert r.status_code == 413 and r.json()["detail"].startswith("upload too large: the limit is 2097152 bytes, ")
    assert http.get("/indexes/limits/status").json()["staged_count"] == 0
    assert http.get("/").status_code == 200


# ---- names that become paths ---------------------------------------------------------------


def tree(root: Path, skip: Path) -> dict[str, int]:
    """Every file under ``root`` except those under ``skip``, with its size."""
    found = {}
    for directory, _dirs, files in os.walk(root):
        if Path(directory).is_relative_to(skip):
            continue
        for f in files:
            path = Path(directory) / f
            found[str(path)] = path.stat().st_size
    return found


@pytest.mark.parametrize(
    "task_id", ["..", ".", "../../outside", "/etc", "a/b", "x" * 300, "bad\0id", "-x", "%2e%2e", "..%2F..%2Foutside"]
)
def test_task_ids_never_reach_the_file_system(http: httpx.Client, server: tuple[str, Path], task_id: str) -> None:
    _url, store = server
    outside = store.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "task.json").write_text('{"id": "planted", "status": "succeeded"}')
    before = tree(store.parent, store)
    for method, path in (("GET", "/info"), ("PUT", "/cancel"), ("PUT", "/restart")):
        r = http.request(method, f"/internal/upsertion-tasks{path}", params={"task_id": task_id})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["detail"].startswith("invalid task_id "), r.text
        assert "planted" not in r.text
    item = {"object_id": "a", "payload": {"text": "x"}}
    r = http.post(
        "/internal/upsertion-tasks/run", json={"embedding_model_id": "hash128", "task_id": task_id, "items": [item]}
    )
    assert r.status_code == 400, r.text
    assert tree(store.parent, store) == before
    assert not (store / ".brinicle" / "task.json").exists() and not (store / ".brinicle" / "items.json").exists()


def test_template_names_and_index_names_never_leave_the_store(http: httpx.Client, server: tuple[str, Path]) -> None:
    _url, store = server
    before = tree(store.parent, store)
    r = http.post(
        "/build_ingest_data/",
        data={"dim": "128", "seed": "1", "depth": "2", "db_name": "tpl", "template_name": "../x"},
        files={"file": ("rows.csv", b"id,title\n1,boots\n", "text/csv")},
    )
    assert (r.status_code, r.json()["detail"]) == (400, "invalid template_name '../x': use " + NAME_RULE_TEXT)
    assert not (store / "tpl").exists()  # refused before anything was written
    for name in ("..%2F..%2Foutside", "%2Fetc", "a/b/c"):
        assert http.get(f"/indexes/{name}/status").status_code == 400
        assert http.delete(f"/indexes/{name}", params={"destroy": "true"}).status_code == 400
    assert tree(store.parent, store) == before


NAME_RULE_TEXT = "1-64 letters, digits, '_' or '-' (not starting with '-')"


# ---- numbers out of range -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"dim": 2**31},
        {"dim": 2**64},
        {"dim": 65_537},
        {"dim": DIM, "params": {"M": 2**63}},
        {"dim": DIM, "params": {"ef_construction": 2**63}},
        {"dim": DIM, "params": {"ef_search": 2**64}},
        {"dim": DIM, "params": {"build_n_threads": 2**63}},
        {"dim": DIM, "params": {"rng_seed": 2**63}},
        {"dim": DIM, "delta_ratio": 5e-324},
    ],
)
def test_create_refuses_numbers_out_of_range(http: httpx.Client, body: dict) -> None:
    r = http.post("/indexes", json={"index_name": "ranges", **body})
    assert r.status_code == 422, r.text
    assert http.get("/indexes/ranges/status").status_code == 404


def test_maintenance_and_search_refuse_numbers_out_of_range(http: httpx.Client) -> None:
    x = built(http, "after_ranges")
    for path in ("/rebuild", "/finalize"):
        for params in ({"M": 2**63}, {"ef_construction": 2**63}, {"rng_seed": 2**64}, {"build_n_threads": 2**63}):
            r = http.post(path, json={"index_name": "after_ranges", "params": params})
            assert r.status_code == 422, (path, params, r.text)
    q = x[0].astype("<f4").tobytes()
    for params in ({"k": 2**63}, {"efs": 2**63}, {"k": -1}):
        for path in ("/search.bin", "/search/batch.bin"):
            r = http.post(path, params={"index_name": "after_ranges", **params}, content=q)
            assert r.status_code == 400, (path, params, r.text)
    for extra, detail in (
        ({"ef": 2**63}, "ef must be an integer between 1 and 16384; got 9223372036854775808"),
        ({"k": 2**63}, "k must be an integer between 1 and 10000; got 9223372036854775808"),
        ({"k": 10_001}, "k must be an integer between 1 and 10000; got 10001"),
        ({"k": 0}, "k must be an integer between 1 and 10000; got 0"),
        ({"ef": 0}, "ef must be an integer between 1 and 16384; got 0"),
    ):
        r = http.post("/search", json={"index_name": "after_ranges", "query": x[0].tolist(), **extra})
        assert (r.status_code, r.json()["detail"]) == (400, detail), (extra, r.text)
        # the same rule and message as /search.bin
        params = {"index_name": "after_ranges", "k": extra.get("k", 10), "efs": extra.get("ef", 64)}
        r = http.post("/search.bin", params=params, content=q)
        assert (r.status_code, r.json()["detail"]) == (400, detail.replace("ef must", "efs must")), r.text
    # nothing above broke the index
    status = http.get("/indexes/after_ranges/status")
    assert (status.status_code, status.json()["live_count"]) == (200, 50)
    http.post("/init", json={"index_name": "after_ranges", "mode": "upsert"})
    assert http.post("/finalize", json={"index_name": "after_ranges"}).status_code == 200
    r = http.post("/search.bin", params={"index_name": "after_ranges", "k": 1}, content=q)
    assert r.json() == ["v0"]


# ---- /build_ingest_data/ --------------------------------------------------------------------


FORM = {"dim": "128", "seed": "1", "depth": "2"}


def upload(http: httpx.Client, body: bytes = b"id,title\n1,red boots\n", **fields: str) -> httpx.Response:
    return http.post("/build_ingest_data/", data={**FORM, **fields}, files={"file": ("rows.csv", body, "text/csv")})


@pytest.mark.parametrize(
    ("fields", "status", "detail"),
    [
        ({"seed": str(2**63)}, 400, "seed must be an integer between 0 and 4294967295; got 9223372036854775808"),
        ({"depth": "9"}, 400, "depth must be between 1 and 8 (the graph's connectivity is 8 x depth); got 9"),
        (
            {"template_schema": '{"primary_key": "id", "semantic_fields": ["title"], "model": "hash-1"}'},
            400,
            "model 'hash-1': a hashing model needs dim >= 2; got 1",
        ),
        (
            {"template_schema": '{"primary_key": "id", "semantic_fields": ["title"], "model": "nope"}'},
            400,
            "unknown embedding model 'nope'",
        ),
    ],
)
def test_upload_fields_are_checked_before_anything_is_written(
    http: httpx.Client, server: tuple[str, Path], fields: dict[str, str], status: int, detail: str
) -> None:
    r = upload(http, db_name="checked", **fields)
    assert (r.status_code, detail in r.json()["detail"]) == (status, True), r.text
    assert not (server[1] / "checked").exists()


def test_an_unknown_model_is_400_on_both_ingest_endpoints(http: httpx.Client) -> None:
    item = {"object_id": "a", "payload": {"text": "x"}}
    for model in ("nope", "hash-1", "hash-999999"):
        r = http.post("/internal/upsertion-tasks/run", json={"embedding_model_id": model, "items": [item]})
        assert r.status_code == 400, (model, r.text)


@pytest.mark.parametrize(
    "body",
    [
        b"--BOUNDARY\r\n" + os.urandom(64) + b"\r\n--BOUNDARY--\r\n",
        b'--BOUNDARY\r\nContent-Disposition form-data; name="dim"\r\n\r\n128\r\n--BOUNDARY--\r\n',
        b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="' + b"x" * 20_000 + b'"\r\n\r\n'
        b"id,title\n1,a\n\r\n--BOUNDARY--\r\n",
        b"\r\n\r\n--BOUNDARY\r\n\r\n\r\n",
    ],
    ids=["random-bytes", "header-without-colon", "20kb-filename", "no-headers"],
)
def test_malformed_multipart_is_400(http: httpx.Client, body: bytes) -> None:
    r = http.post(
        "/build_ingest_data/", content=body, headers={"Content-Type": "multipart/form-data; boundary=BOUNDARY"}
    )
    assert r.status_code in (400, 422), r.text


# ---- ids ------------------------------------------------------------------------------------


def test_ids_with_a_trailing_nul_round_trip_over_json(http: httpx.Client) -> None:
    create(http, "nul_ids")
    http.post("/init", json={"index_name": "nul_ids", "mode": "build"})
    x = clustered(2, DIM, seed=9)
    for key, v in zip(["tail\0", "plain"], x, strict=True):
        r = http.post("/ingest", json={"index_name": "nul_ids", "external_id": key, "vector": v.tolist()})
        assert r.status_code == 200
    http.post("/finalize", json={"index_name": "nul_ids"})
    r = http.post("/search.bin", params={"index_name": "nul_ids", "k": 2}, content=x[0].astype("<f4").tobytes())
    assert r.json()[0] == "tail\0"
    r = http.post("/delete", json={"index_name": "nul_ids", "external_ids": ["tail\0"]})
    assert r.json()["deleted_count"] == 1


def test_a_client_that_leaves_mid_upload_costs_nothing(http: httpx.Client, server: tuple[str, Path]) -> None:
    url, _store = server
    create(http, "leaver")
    http.post("/init", json={"index_name": "leaver", "mode": "build"})
    for _ in range(5):
        stalled_upload(url, "leaver", 10 * ROW, b"\0" * 20).close()
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"POST /build_ingest_data/ HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        b"Content-Length: 100000\r\n\r\n"
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nid\n'
    )
    sock.close()
    time.sleep(0.5)
    assert http.get("/indexes/leaver/status").json()["staged_count"] == 0
    assert not list((server[1] / ".brinicle" / "uploads").glob("*"))


def test_the_client_waits_out_a_busy_index_and_says_so_when_it_stays_busy(tmp_path: Path) -> None:
    from brinicle_etl.client import BrinicleClient, BusyHTTPError

    store = tmp_path / "store"
    with running_server(store, "--writer-timeout", "1") as (url, _proc), BrinicleClient(url) as client:
        client.create_index("busy", dim=DIM)
        client.init("busy", "build")
        x = clustered(2, DIM, seed=11)

        def hold(seconds: float) -> threading.Thread:
            def run() -> None:
                with writer_lock(store / "busy" / "default", wait=True):
                    time.sleep(seconds)

            thread = threading.Thread(target=run)
            thread.start()
            time.sleep(0.2)
            return thread

        holder = hold(2.5)  # longer than the server waits (1 s), shorter than the client's retries
        assert client.ingest_batch("busy", ["a"], x[:1]) == 1
        holder.join()
        client.busy_retries = 0
        holder = hold(2.0)
        with pytest.raises(BusyHTTPError) as info:
            client.ingest_batch("busy", ["b"], x[1:])
        holder.join()
        assert (info.value.status, info.value.retry_after) == (503, 1.0)
        assert "stayed busy with another writer for 1 s; retry later" in str(info.value)
        assert client.get_index_status("busy")["staged_count"] == 1
