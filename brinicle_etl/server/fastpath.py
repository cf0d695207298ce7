"""``POST /search.bin`` served beneath the framework.

brinicle clients send one small request per query. At a few thousand queries a second,
routing, dependency resolution and the request objects cost as much as the search, so this
ASGI layer answers well-formed ``/search.bin`` requests itself. Anything else, and every
request it cannot answer with a 200 (a bad parameter, an unknown index, a query of the wrong
length), goes on to the FastAPI app with its body replayed, so errors keep one implementation
and brinicle's shapes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import orjson

from brinicle_etl.errors import BrinicleError
from brinicle_etl.types import EF, K

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]


class SearchFastPath:
    """Wraps the app; ``lookup(index_name)`` returns the collection or None (unknown, invalid)."""

    def __init__(self, app: ASGIApp, *, lookup: Callable[[str], Any]):
        self.app = app
        self.lookup = lookup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/search.bin" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        args = self._arguments(scope)
        col = self.lookup(args[0]) if args is not None else None
        # Only a body announced at exactly one query's size is read here: anything else
        # (chunked, too long) is the app's to refuse, within its body limit.
        if col is None or _declared_length(scope) != col.dim * 4:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        answer = self._answer(col, body, args) if args is not None else None
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS, _length(answer)]})
        await send({"type": "http.response.body", "body": answer})

    def _arguments(self, scope: Scope) -> tuple[str, int, int] | None:
        """(index_name, k, efs) when the request's parameters are valid (keys were checked outside)."""
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        params = dict(pairs)
        if len(params) != len(pairs) or "index_name" not in params:
            return None
        try:
            k, efs = int(params.get("k", 10)), int(params.get("efs", 64))
        except ValueError:
            return None
        if k not in K or efs not in EF:
            return None
        return params["index_name"], k, efs

    @staticmethod
    def _answer(col: Any, body: bytes, args: tuple[str, int, int]) -> bytes | None:
        if len(body) != col.dim * 4:
            return None
        try:
            hits = col.search(np.frombuffer(body, dtype="<f4"), args[1], ef=args[2])
        except BrinicleError:
            return None
        return orjson.dumps([h.id for h in hits])


def _declared_length(scope: Scope) -> int | None:
    raw = next((v for n, v in scope["headers"] if n == b"content-length"), None)
    return int(raw) if raw is not None and raw.isdigit() else None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, then the connection's own messages (a disconnect, when it comes)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())
