"""The one API-key check: ASGI middleware outside everything else (the /search.bin fast path
included), so no request reaches a route or a collection without a valid ``X-API-Key``."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse

__all__ = ["ApiKeyGuard"]


class ApiKeyGuard:
    """Answers 401 unless the request's ``X-API-Key`` is one of ``keys``."""

    def __init__(self, app: Any, *, keys: tuple[str, ...]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = JSONResponse(status_code=401, content={"detail": "missing or invalid API key"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Any) -> bool:
        given = next((v for n, v in scope["headers"] if n == b"x-api-key"), b"")
        ok = False
        for key in self.keys:  # every key, whatever matches: the time taken tells nothing
            ok |= hmac.compare_digest(given, key)
        return ok
