"""The /search.bin fast path: answers good requests itself, hands the rest inward with the body intact.

Driven at the ASGI interface against a real collection; tests/test_server.py covers the same
endpoint through a running server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from brinicle_etl import Collection, Store
from brinicle_etl.server.auth import ApiKeyGuard
from brinicle_etl.server.fastpath import SearchFastPath
from tests.conftest import clustered


class Inner:
    """The app behind the fast path: records what reaches it, answers 418."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        self.calls.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def col(tmp_path: Path) -> Collection:
    c = Store(tmp_path).create("items", dim=8, dtype="f32")
    c.write([f"v{i}" for i in range(200)], clustered(200, 8, seed=1), mode="build", wait=True)
    return c


def call(
    app: SearchFastPath,
    query: str,
    body: bytes,
    *,
    path: str = "/search.bin",
    key: bytes | None = None,
    length: bool = True,
) -> tuple[int, bytes]:
    headers = [(b"x-api-key", key)] if key is not None else []
    if length:  # what every client sends with a body of known size
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "query_string": query.encode(), "headers": headers}
    chunks = [body[:5], body[5:]]  # the body arrives in two messages
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_answers_good_requests_like_the_library(col: Collection) -> None:
    inner = Inner()
    app = SearchFastPath(inner, lookup=lambda name: col if name == "items" else None)
    q = clustered(200, 8, seed=1)[17]
    status, body = call(app, "index_name=items&k=3&efs=50", q.astype("<f4").tobytes())
    assert status == 200
    assert orjson.loads(body) == [h.id for h in col.search(q, 3, ef=50)]
    assert inner.calls == []


@pytest.mark.parametrize(
    ("query", "body_len"),
    [
        ("index_name=items&k=0", 32),  # invalid k
        ("index_name=items&efs=-1", 32),
        ("index_name=items&k=ten", 32),  # not an integer: FastAPI's 422
        ("k=3", 32),  # no index
        ("index_name=items&index_name=items", 32),  # repeated: FastAPI's rules decide
        ("index_name=nope", 32),  # unknown index
        ("index_name=items", 28),  # wrong length
    ],
)
def test_everything_else_reaches_the_app_with_its_body(col: Collection, query: str, body_len: int) -> None:
    inner = Inner()
    app = SearchFastPath(inner, lookup=lambda name: col if name == "items" else None)
    body = np.arange(body_len // 4, dtype="<f4").tobytes()
    assert call(app, query, body)[0] == 418
    assert inner.calls == [("/search.bin", body)]


def test_a_query_the_library_refuses_reaches_the_app(col: Collection) -> None:
    inner = Inner()
    app = SearchFastPath(inner, lookup=lambda name: col)
    body = np.full(8, np.nan, dtype="<f4").tobytes()
    assert call(app, "index_name=items", body)[0] == 418
    assert inner.calls == [("/search.bin", body)]


def test_api_keys_are_checked_before_the_fast_path_and_other_paths_pass(col: Collection) -> None:
    inner = Inner()
    app = ApiKeyGuard(SearchFastPath(inner, lookup=lambda name: col), keys=("s3cret", "other"))
    body = np.ones(8, dtype="<f4").tobytes()
    assert call(app, "index_name=items", body, key=b"s3cret")[0] == 200
    assert call(app, "index_name=items", body, key=b"wrong") == (401, b'{"detail":"missing or invalid API key"}')
    assert call(app, "index_name=items", body)[0] == 401
    assert call(app, "index_name=items", body, path="/search/batch.bin", key=b"other")[0] == 418
    assert [path for path, _ in inner.calls] == ["/search/batch.bin"]


def test_a_body_of_unannounced_size_is_left_to_the_app(col: Collection) -> None:
    inner = Inner()
    app = SearchFastPath(inner, lookup=lambda name: col if name == "items" else None)
    q = clustered(1, 8, seed=2)[0].astype("<f4").tobytes()
    assert call(app, "index_name=items&k=3", q, length=False) == (418, b"")
    assert inner.calls == [("/search.bin", q)]
