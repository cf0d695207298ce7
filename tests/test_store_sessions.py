"""Streamed binary batches into a session: all rows or none, checked row by row, crash safe."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from brinicle_etl import Collection, CorruptCollectionError, InputError, StateError, Store
from tests.conftest import clustered

DIM = 8


def rows(ids: list[str], vectors: np.ndarray, width: int = 32) -> bytes:
    return b"".join(
        i.encode().ljust(width, b"\0") + v.astype("<f4").tobytes() for i, v in zip(ids, vectors, strict=True)
    )


def stream(col: Collection, payload: bytes) -> int:
    with col.ingest_binary() as batch:
        batch.feed(payload)
        return batch.finish()


@pytest.fixture
def col(store: Store) -> Collection:
    c = store.create("bin", dim=DIM, dtype="f32")
    c.init("build")
    return c


def test_stream_in_odd_pieces(col: Collection) -> None:
    x = clustered(50, DIM)
    payload = rows([f"id{i}" for i in range(50)], x)
    with col.ingest_binary() as batch:
        for start in range(0, len(payload), 77):  # pieces that split rows anywhere
            batch.feed(payload[start : start + 77])
        assert batch.finish() == 50
    assert col.status().staged_count == 50
    col.finalize()
    assert col.search(x[7], 1)[0].id == "id7"
    np.testing.assert_array_equal(col.vectors(["id3"])[0], x[3])


def test_mixed_with_json_ingests(col: Collection) -> None:
    x = clustered(6, DIM)
    col.ingest("first", x[0])
    with col.ingest_binary() as batch:
        batch.feed(rows(["b1", "b2"], x[1:3]))
        batch.finish()
    col.ingest_batch(["last", "ünïcødé", ""], x[3:6])
    col.finalize()
    keys = ["first", "b1", "b2", "last", "ünïcødé", ""]
    assert sorted(col.keys()) == sorted(keys)
    np.testing.assert_array_equal(col.vectors(keys), x)  # each record's vectors landed with its own keys


@pytest.mark.parametrize("last", ["streamed", "ingest_batch"])
def test_a_damaged_log_fails_finalize_and_applies_nothing(col: Collection, last: str) -> None:
    x = clustered(6, DIM)
    if last == "streamed":
        col.ingest_batch(["a", "b", "c"], x[:3])
        stream(col, rows(["d", "e", "f"], x[3:]))
    else:
        stream(col, rows(["d", "e", "f"], x[3:]))
        col.ingest_batch(["a", "b", "c"], x[:3])
    log = col.directory / "session.log"
    data = bytearray(log.read_bytes())
    where = len(data) - 9  # inside the last vector of the last record (a streamed one ends with a 4-byte CRC)
    data[where] ^= 0xFF
    log.write_bytes(bytes(data))
    with pytest.raises(CorruptCollectionError, match=r"^session log .*session\.log is damaged at byte \d+; abort\(\)"):
        col.finalize()
    assert col.status().live_count == 0 and col.status().generation == 0


@pytest.mark.parametrize(
    ("payload_fn", "message"),
    [
        (
            lambda x: rows(["a", "b"], x[:2]) + b"\0" * 10,
            "leftover 10 bytes, rows are 64 bytes (32-byte id + 8 float32)",
        ),
        (lambda x: rows(["a", ""], x[:2]), "ingest_batch: row 1 has an empty external id"),
        (lambda x: rows(["a", "b"], np.vstack([x[0], np.full(DIM, np.nan)])), "row 1 (id 'b') contains NaN/Inf"),
        (
            lambda x: rows(["a"], x[:1]) + b"\xff\xfe".ljust(32, b"\0") + x[1].astype("<f4").tobytes(),
            "ingest_batch: row 1 has an id that is not UTF-8 text",
        ),
    ],
)
def test_a_rejected_batch_stages_nothing(col: Collection, payload_fn: object, message: str) -> None:
    x = clustered(3, DIM)
    col.ingest("kept", x[2])
    log = col.directory / "session.log"
    size = os.path.getsize(log)
    payload = payload_fn(x)  # type: ignore[operator]
    with pytest.raises(InputError) as info:
        stream(col, payload)
    assert message in str(info.value)
    assert os.path.getsize(log) == size
    assert col.status().staged_count == 1
    col.finalize()
    assert col.keys() == ["kept"]


def test_an_unsealed_record_from_a_crash_is_ignored(col: Collection) -> None:
    x = clustered(3, DIM)
    col.ingest("kept", x[0])
    # What a writer killed while copying a batch into the log leaves: a BIN1 record whose
    # row count was never sealed, its rows cut short.
    unsealed = struct.pack("<4sIHH", b"BIN1", 0xFFFFFFFF, 32, 0) + rows(["lost1", "lost2"], x[1:3])[:100]
    with open(col.directory / "session.log", "ab") as fh:
        fh.write(unsealed)
    fresh = Collection(col.directory)
    assert fresh.status().staged_count == 1
    fresh.ingest("after", x[1])
    fresh.finalize()
    assert sorted(fresh.keys()) == ["after", "kept"]


def test_an_unfinished_batch_holds_no_lock_and_leaves_no_file(col: Collection) -> None:
    x = clustered(4, DIM)
    before = sorted(os.listdir(col.directory))
    batch = col.ingest_binary()
    batch.feed(rows(["slow1", "slow2"], x[:2]))
    # another writer is not held up by the upload in progress
    col.ingest_batch(["other"], x[2:3], wait=False)
    assert sorted(os.listdir(col.directory)) == before  # the spooled rows have no name
    assert batch.finish(wait=False) == 2
    col.finalize()
    assert sorted(col.keys()) == ["other", "slow1", "slow2"]


def test_a_batch_fed_before_another_writer_finalized_goes_to_the_next_session(col: Collection) -> None:
    x = clustered(3, DIM)
    batch = col.ingest_binary()
    batch.feed(rows(["late"], x[:1]))
    col.ingest("early", x[1])
    col.finalize()
    with pytest.raises(StateError, match="ingest_batch: no pending ingest session"):
        batch.finish()
    col.init("upsert")
    with pytest.raises(StateError, match="already finished or aborted"):
        batch.finish()
    assert col.status().staged_count == 0


def test_needs_a_session(store: Store) -> None:
    c = store.create("nosession", dim=DIM)
    with pytest.raises(StateError, match="ingest_batch: no pending ingest session"):
        c.ingest_binary()
    c.init("build")
    batch = c.ingest_binary()
    batch.finish()
    with pytest.raises(StateError, match="already finished or aborted"):
        batch.feed(b"")


def test_empty_records_and_an_empty_session(col: Collection) -> None:
    col.ingest_batch([], np.empty((0, DIM), np.float32))
    assert stream(col, b"") == 0
    col.ingest_batch(["a"], np.ones((1, DIM), np.float32))
    assert col.finalize().inserted == 1
    col.init("upsert")
    result = col.finalize()
    assert (result.inserted, result.updated, col.keys()) == (0, 0, ["a"])
