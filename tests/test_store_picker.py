"""Values picked by position from Arrow columns agree with Arrow's own ``to_pylist``."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pyarrow as pa
import pytest

from brinicle_etl.store.picker import Picker, pick_rows

N = 200


def _columns(rng: np.random.Generator) -> dict[str, pa.Array]:
    nulls = rng.random(N) < 0.2
    ints = rng.integers(-(2**40), 2**40, N)
    words = [f"wörd-{i}" * int(rng.integers(0, 4)) for i in range(N)]
    return {
        "i64": pa.array(ints),
        "i64_nulls": pa.array(ints, mask=nulls),
        "u8": pa.array(rng.integers(0, 255, N).astype(np.uint8)),
        "f32": pa.array(rng.standard_normal(N).astype(np.float32)),
        "f64_nulls": pa.array(rng.standard_normal(N), mask=nulls),
        "f64_nan": pa.array(np.where(nulls, np.nan, 1.5)),
        "text": pa.array(words),
        "text_nulls": pa.array(words, mask=nulls),
        "large_text": pa.array(words, pa.large_string()),
        "large_text_nulls": pa.array(words, pa.large_string(), mask=nulls),
        "u64_big": pa.array(np.arange(N, dtype=np.uint64) + np.uint64(2**63)),
        "dict": pa.array(words).dictionary_encode(),
        "money": pa.array([decimal.Decimal(i) / 100 for i in range(N)], pa.decimal128(10, 2), mask=nulls),
        "day": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(N)]),
        "blob": pa.array([bytes([i % 256]) * (i % 3) for i in range(N)], pa.binary()),
        "pair": pa.array([{"a": i, "b": str(i)} for i in range(N)]),
        "blank": pa.array([""] * N),
        "flag": pa.array(rng.random(N) < 0.5, mask=nulls),
        "when": pa.array([dt.datetime(2026, 1, 1) + dt.timedelta(hours=i) for i in range(N)], pa.timestamp("us")),
        "tags": pa.array([[i, i + 1] if i % 3 else None for i in range(N)], pa.list_(pa.int32())),
        "half": pa.array(rng.standard_normal(N).astype(np.float16)),
        "all_null": pa.nulls(N, pa.int64()),
        "nothing": pa.nulls(N),
    }


@pytest.mark.parametrize("sliced", [False, True], ids=["whole", "sliced"])
def test_every_type_reads_as_arrow_gives_it(sliced: bool) -> None:
    rng = np.random.default_rng(11)
    table = pa.table(_columns(rng))
    if sliced:  # a column that starts inside its buffers (offset > 0), nulls and all
        table = table.slice(37, 120)
    positions = rng.integers(0, table.num_rows, 50)
    names = tuple(table.column_names)
    got = pick_rows([Picker(table)], np.zeros(len(positions), np.int64), positions, names)
    expected = table.take(pa.array(positions)).to_pylist()
    for row, want in zip(got, expected, strict=True):
        assert list(row) == list(names)
        for name in names:
            value, wanted = row[name], want[name]
            if isinstance(wanted, float) and np.isnan(wanted):
                assert isinstance(value, float) and np.isnan(value)
            else:
                assert value == wanted and type(value) is type(wanted), name


def test_a_column_of_several_chunks_reads_as_one() -> None:
    table = pa.concat_tables([pa.table({"n": [1, 2], "s": ["a", None]}), pa.table({"n": [3], "s": ["c"]})])
    assert table.column("n").num_chunks == 2
    rows = pick_rows([Picker(table)], np.zeros(3, np.int64), np.array([2, 0, 1]), ("n", "s"))
    assert rows == [{"n": 3, "s": "c"}, {"n": 1, "s": "a"}, {"n": 2, "s": None}]


def test_rows_come_from_each_file_in_the_order_asked_and_missing_columns_are_none() -> None:
    older = pa.table({"n": [0, 1, 2], "title": ["a", "b", "c"]})
    newer = pa.table({"n": [10, 11], "title": ["x", None], "price": [9.5, 7.25]})
    which = np.array([1, 0, 1, 0])
    offsets = np.array([1, 2, 0, 0])
    rows = pick_rows([Picker(older), Picker(newer)], which, offsets, ("n", "title", "price"))
    assert rows == [
        {"n": 11, "title": None, "price": 7.25},
        {"n": 2, "title": "c", "price": None},
        {"n": 10, "title": "x", "price": 9.5},
        {"n": 0, "title": "a", "price": None},
    ]


def test_nothing_asked_gives_nothing() -> None:
    assert pick_rows([Picker(pa.table({"n": [1]}))], np.zeros(0, np.int64), np.zeros(0, np.int64), ("n",)) == []
