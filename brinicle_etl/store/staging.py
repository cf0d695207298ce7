"""The ingest session's staging log: acknowledged vectors survive a crash before ``finalize``.

``session.log`` holds a header (session id, mode, dimension) and then one record per
``ingest``, ``ingest_batch`` or streamed binary batch, each synced to disk before the
call returns. A record cut short by a crash was never acknowledged; it is dropped (and
the file truncated) the next time the log is read or appended to.

Two record layouts, little-endian:

- ``REC1``: row count (u32), key block length (u64), CRC32 of both blocks (u32); then the
  key block (one u32 byte length per key, then the UTF-8 bytes) and the vectors
  (rows x dim float32).
- ``BIN1``: row count (u32, all ones until the record is sealed), id width (u16), zero
  (u16); then rows of ``id width`` NUL-padded id bytes and dim float32 (brinicle's
  binary batch format, copied from where the upload was spooled); then the CRC32 of the
  rows (u32).
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from brinicle_etl._fs import fsync_dir, pwrite_all
from brinicle_etl.errors import CorruptCollectionError, InputError
from brinicle_etl.types import WriteMode

__all__ = ["SessionHeader", "StagingLog", "encode_key", "encode_keys", "key_block"]

_MAGIC = b"BRSESS01"
_RECORD = struct.Struct("<4sIQI")
_BINARY = struct.Struct("<4sIHH")
_CRC = struct.Struct("<I")
_UNSEALED = 0xFFFFFFFF
_COPY_CHUNK = 4 << 20


@dataclass(frozen=True, slots=True)
class SessionHeader:
    id: str
    mode: WriteMode
    dim: int
    created_at: float


def encode_key(key: object, op: str, position: int = 0) -> bytes:
    """One key's UTF-8 bytes; rejects a key that is not text."""
    if not isinstance(key, str):
        raise InputError(f"{op}: id at position {position} must be a string, got {type(key).__name__}")
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{op}: id at position {position} is not valid Unicode text ({exc.reason})") from exc


def key_block(encoded: list[bytes]) -> bytes:
    """Length-prefixed block of encoded keys (see :func:`encode_key`)."""
    lengths = np.fromiter((len(b) for b in encoded), dtype="<u4", count=len(encoded))
    return lengths.tobytes() + b"".join(encoded)


def encode_keys(keys: list[str], op: str) -> bytes:
    """Length-prefixed UTF-8 block; rejects keys that are not text."""
    return key_block([encode_key(key, op, i) for i, key in enumerate(keys)])


def _decode_keys(block: bytes, n: int) -> pa.Array:
    """The keys of a length-prefixed block as Arrow strings, straight from its bytes."""
    lengths = np.frombuffer(block, dtype="<u4", count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    keys = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(block[4 * n :]))
    keys.validate(full=True)  # UTF-8; keys were encoded by us, so this fails only on damage
    return keys


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class StagingLog:
    def __init__(self, path: Path, header: SessionHeader, data_start: int):
        self.path = path
        self.header = header
        self._data_start = data_start
        self._end = -1  # offset just past the last complete record; -1 until scanned
        self._count = 0

    @classmethod
    def create(cls, path: Path, *, session_id: str, mode: WriteMode, dim: int) -> StagingLog:
        header = SessionHeader(id=session_id, mode=mode, dim=dim, created_at=time.time())
        body = json.dumps(_header_dict(header)).encode()
        blob = _MAGIC + struct.pack("<I", len(body)) + body
        tmp = path.with_name(f"{path.name}.tmp-{session_id[:8]}")
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        log = cls(path, header, len(blob))
        log._end, log._count = len(blob), 0
        return log

    @classmethod
    def open(cls, path: Path) -> StagingLog | None:
        """The pending session's log, or None if there is none."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(12)
                if len(head) < 12 or head[:8] != _MAGIC:
                    raise CorruptCollectionError(f"{path} is not a session log; delete it to discard the session")
                (size,) = struct.unpack("<I", head[8:])
                data = json.loads(fh.read(size))
        except FileNotFoundError:
            return None
        header = SessionHeader(id=data["id"], mode=data["mode"], dim=data["dim"], created_at=data["created_at"])
        return cls(path, header, 12 + size)

    def _record_end(self, f: BinaryIO, offset: int, size: int) -> tuple[int, int] | None:
        """(end offset, rows) of the complete record at ``offset``, or None."""
        f.seek(offset)
        head = f.read(_RECORD.size)
        if head[:4] == b"REC1" and len(head) == _RECORD.size:
            _magic, n, key_len, _crc = _RECORD.unpack(head)
            end = offset + _RECORD.size + key_len + n * self.header.dim * 4
        elif head[:4] == b"BIN1" and len(head) >= _BINARY.size:
            _magic, n, width, _zero = _BINARY.unpack(head[: _BINARY.size])
            if n == _UNSEALED:
                return None
            end = offset + _BINARY.size + n * (width + 4 * self.header.dim) + _CRC.size
        else:
            return None
        return (end, n) if end <= size else None

    def _scan(self) -> None:
        """Find the end of the last complete record, counting rows on the way."""
        size = os.path.getsize(self.path)
        offset, count = self._data_start, 0
        with open(self.path, "rb") as f:
            while (found := self._record_end(f, offset, size)) is not None:
                offset, count = found[0], count + found[1]
        self._end, self._count = offset, count

    def _sync_end(self) -> None:
        """Find the last complete record and cut off anything after it: a record cut short
        by a crash. Only a writer holding the lock may call this."""
        if self._end < 0 or os.path.getsize(self.path) != self._end:
            self._scan()
            if os.path.getsize(self.path) != self._end:
                os.truncate(self.path, self._end)

    @property
    def end(self) -> int:
        """The offset just past the last complete record. The caller holds the writer lock."""
        self._sync_end()
        return self._end

    def cut(self, end: int) -> None:
        """Drop everything after ``end``: a record the object store did not take, so never
        acknowledged. The caller holds the writer lock."""
        os.truncate(self.path, end)
        self._end = -1

    @property
    def count(self) -> int:
        """Staged rows. Safe without the lock: it only reads (a record being appended
        right now is not complete yet, and is not counted)."""
        if self._end < 0 or os.path.getsize(self.path) != self._end:
            self._scan()
        return self._count

    def append(self, key_block: bytes, vectors: np.ndarray) -> None:
        """Durably append one record. The caller holds the collection's writer lock."""
        self._sync_end()
        vec_bytes = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
        crc = zlib.crc32(vec_bytes, zlib.crc32(key_block))
        record = _RECORD.pack(b"REC1", len(vectors), len(key_block), crc) + key_block + vec_bytes
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            _write_all(fd, record)
            os.fdatasync(fd)
        except BaseException:
            os.ftruncate(fd, self._end)  # a full disk: no half record stays behind
            raise
        finally:
            os.close(fd)
        self._end += len(record)
        self._count += len(vectors)

    def append_spooled(self, spool: int, *, id_width: int, rows: int, crc: int) -> None:
        """Durably append ``rows`` rows spooled in file ``spool`` (already checked; ``crc`` is
        their CRC32) as one ``BIN1`` record. The caller holds the collection's writer lock.

        The record is sealed last: its row count is written only once the rows and their
        CRC are on disk, so a crash part way leaves an unsealed record that is ignored."""
        self._sync_end()
        start, size = self._end, rows * (id_width + 4 * self.header.dim)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, _BINARY.pack(b"BIN1", _UNSEALED, id_width, 0), start)
            offset = 0
            while offset < size:
                chunk = os.pread(spool, min(_COPY_CHUNK, size - offset), offset)
                if not chunk:
                    raise CorruptCollectionError(f"ingest_batch: the spooled rows ended after {offset} of {size} bytes")
                pwrite_all(fd, chunk, start + _BINARY.size + offset)
                offset += len(chunk)
            pwrite_all(fd, _CRC.pack(crc), start + _BINARY.size + size)
            os.fdatasync(fd)
            os.pwrite(fd, struct.pack("<I", rows), start + 4)
            os.fdatasync(fd)
        except BaseException:
            os.ftruncate(fd, start)
            raise
        finally:
            os.close(fd)
        self._end = start + _BINARY.size + size + _CRC.size
        self._count += rows

    def read(self) -> tuple[pa.Array, np.ndarray]:
        """Every staged (key, vector), in ingest order.

        The vectors are read straight into one matrix: a build of N vectors holds them
        once here, not once per record plus once concatenated.
        """
        self._sync_end()
        dim = self.header.dim
        vectors = np.empty((self._count, dim), dtype="<f4")
        keys: list[pa.Array] = []
        pos = 0
        with open(self.path, "rb") as f:
            offset = self._data_start
            while offset < self._end:
                f.seek(offset)
                head = f.read(_RECORD.size)
                if head[:4] == b"REC1":
                    _magic, n, key_len, crc = _RECORD.unpack(head)
                    key_block = f.read(key_len)
                    target = vectors.reshape(-1)[pos * dim : (pos + n) * dim].data.cast("B")
                    got = f.readinto(target)
                    ok = got == len(target) and zlib.crc32(target, zlib.crc32(key_block)) == crc
                    if ok:
                        keys.append(_decode_keys(key_block, n))
                    end = offset + _RECORD.size + key_len + n * dim * 4
                else:
                    _magic, n, width, _zero = _BINARY.unpack(head[: _BINARY.size])
                    f.seek(offset + _BINARY.size)
                    rows = f.read(n * (width + 4 * dim))
                    (crc,) = _CRC.unpack(f.read(_CRC.size))
                    ok = zlib.crc32(rows) == crc
                    if ok:
                        table = np.frombuffer(rows, dtype=np.dtype([("id", f"S{width}"), ("v", "<f4", (dim,))]))
                        vectors[pos : pos + n] = table["v"]
                        ids = [raw.decode("utf-8") for raw in table["id"].tolist()]
                        keys.append(pa.array(ids, pa.large_string()))
                    end = offset + _BINARY.size + len(rows) + _CRC.size
                if not ok:
                    raise CorruptCollectionError(
                        f"session log {self.path} is damaged at byte {offset}; abort() the session and ingest again"
                    )
                pos += n
                offset = end
        key_array = pa.chunked_array(keys, pa.large_string()).combine_chunks().cast(pa.string())
        return key_array, vectors

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        fsync_dir(self.path.parent)


def _header_dict(header: SessionHeader) -> dict[str, object]:
    return {"id": header.id, "mode": header.mode, "dim": header.dim, "created_at": header.created_at}
