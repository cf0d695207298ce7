"""Request bodies as they stream in: size limits enforced on the bytes received (before the
whole body is read), stalled uploads timed out, and multipart/form-data parsed on the fly (the
file part goes to disk, small fields stay in memory)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from brinicle_etl._fs import disk_full_is_an_error
from brinicle_etl.errors import InputError

__all__ = ["BodyLimit", "StreamingForm", "chunks", "too_large"]

MAX_FIELD_BYTES = 1 << 20
MAX_HEADER_BYTES = 8 << 10


def too_large(limit: int, received: int, what: str = "request body") -> HTTPException:
    # no keep-alive: the rest of the body is not wanted, so the server need not read it
    return HTTPException(
        status_code=413,
        detail=f"{what} too large: the limit is {limit} bytes, {received} bytes arrived before it stopped",
        headers={"Connection": "close"},
    )


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is 413, announced or not, before it is all
    read, so no request can make the server hold more than that in memory. ``streamed`` paths
    (spooled to disk, with limits of their own) pass untouched."""

    def __init__(self, app: Any, *, limit: int, streamed: frozenset[str]):
        self.app, self.limit, self.streamed = app, limit, streamed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = next((v for n, v in scope["headers"] if n == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.limit:
            error = too_large(self.limit, 0)
            await JSONResponse({"detail": error.detail}, 413, headers=error.headers)(scope, receive, send)
            return
        received = 0

        async def counted() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise too_large(self.limit, received)
            return message

        await self.app(scope, counted, send)


async def chunks(request: Request, idle_seconds: float, limit: int | None = None) -> AsyncIterator[bytes]:
    """The request body as it arrives; an upload that sends nothing for ``idle_seconds`` is 408,
    so a client that stops half way holds nothing for long, and one past ``limit`` bytes is 413."""
    declared = request.headers.get("content-length", "")
    if limit is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, 0, "upload")
    received = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_seconds):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HTTPException(
                status_code=408,
                detail=f"upload stalled: no bytes for {idle_seconds:g} s; nothing was written",
                headers={"Connection": "close"},
            ) from None
        received += len(chunk)
        if limit is not None and received > limit:
            raise too_large(limit, received, "upload")
        yield chunk


class StreamingForm:
    """Feed the request body; ``file_field`` is written to ``spool_dir``, other fields kept as text."""

    def __init__(self, content_type: str, *, spool_dir: Path, file_field: str = "file"):
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InputError("expected a multipart/form-data body with a boundary")
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None
        self.file_path: Path | None = None
        self._file_field = file_field
        self._spool_dir = spool_dir
        self._fd: int | None = None
        self._name: str | None = None
        self._value = bytearray()
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def _part_begin(self) -> None:
        self._headers, self._header_field, self._name = {}, b"", None
        self._value = bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field = data[start:end].lower()

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        value = self._headers.get(self._header_field, b"") + data[start:end]
        if len(value) > MAX_HEADER_BYTES:
            raise InputError(f"a part header of the form is over {MAX_HEADER_BYTES} bytes")
        self._headers[self._header_field] = value

    def _headers_done(self) -> None:
        _disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if self._name == self._file_field:
            if self.file_path is not None:
                raise InputError(f"the form has more than one {self._file_field!r} part; send one file")
            self.file_name = options.get(b"filename", b"upload.csv").decode("utf-8", errors="replace")
            with disk_full_is_an_error(self._spool_dir):
                self._spool_dir.mkdir(parents=True, exist_ok=True)
                self.file_path = self._spool_dir / f"upload-{secrets.token_hex(8)}.csv"
                self._fd = os.open(self.file_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._fd is not None:
            with disk_full_is_an_error(self._spool_dir, cleanup=self.discard):
                view = memoryview(data)[start:end]
                while view:
                    view = view[os.write(self._fd, view) :]
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise InputError(f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif self._name:
            self.fields[self._name] = self._value.decode("utf-8", errors="replace")

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise InputError(f"malformed multipart/form-data body: {exc}") from None

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise InputError(f"malformed multipart/form-data body: {exc}") from None

    def discard(self) -> None:
        """Remove the spooled file (always call once the upload has been used or refused)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)

    def __enter__(self) -> StreamingForm:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()
