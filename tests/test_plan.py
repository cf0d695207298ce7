"""The DuckDB planner: how each incoming row is classified under each mode and policy."""

from __future__ import annotations

import hashlib

import polars as pl
import pyarrow as pa
import pytest

from brinicle_etl.errors import ConfigError, ConflictError, InputError
from brinicle_etl.pipeline.plan import Hasher, Planner

EXISTING = pa.table(
    {
        "_row_id": pa.array([10, 11, 12, 13], pa.uint64()),
        "_key": ["a", "b", "c", "d"],
        "_hash": ["ha", "hb", "hc", "hd"],
        "_text_hash": ["ta", "tb", "tc", "td"],
    }
)
# a: unchanged; b: payload changed, same text; c: text changed; e: new. d is absent.
INCOMING = {"keys": ["a", "b", "c", "e"], "h": ["ha", "hb2", "hc2", "he"], "th": ["ta", "tb", "tc2", "te"]}


def planner(keys: list[str] | None = None, *, existing: pa.Table = EXISTING) -> Planner:
    p = Planner(existing, key_field="id", where=lambda pos: f"f.csv row {pos + 1}")
    data = INCOMING if keys is None else {"keys": keys, "h": [f"h{k}" for k in keys], "th": [f"t{k}" for k in keys]}
    p.add(0, pa.array(data["keys"]), pa.array(data["h"]), pa.array(data["th"]))
    return p


def test_upsert_update_classifies_every_row() -> None:
    plan = planner().finish(mode="upsert", on_conflict="update", on_duplicate="error", sync=True)
    assert plan.write.tolist() == [False, True, True, True]
    assert plan.reuse.tolist() == [-1, 11, -1, -1]  # b keeps its stored vector
    assert plan.embed.tolist() == [False, False, True, True]
    assert (plan.inserted, plan.updated, plan.skipped, plan.unchanged) == (1, 2, 0, 1)
    assert plan.conflicts == ["b", "c"]
    assert plan.deletes.to_pylist() == ["d"]


def test_skip_keeps_stored_rows() -> None:
    plan = planner().finish(mode="upsert", on_conflict="skip", on_duplicate="error", sync=False)
    assert plan.write.tolist() == [False, False, False, True]
    assert (plan.inserted, plan.updated, plan.skipped, plan.unchanged) == (1, 0, 2, 1)
    assert plan.deletes.to_pylist() == []


@pytest.mark.parametrize("mode", ["upsert", "insert"])
def test_error_policy_names_the_key_field_and_values(mode: str) -> None:
    with pytest.raises(ConflictError) as info:
        planner().finish(mode=mode, on_conflict="error", on_duplicate="error", sync=False)  # type: ignore[arg-type]
    assert str(info.value) == (
        "primary key 'id' already holds different content for 2 row(s): 'b', 'c'; nothing was written; "
        "pass on_conflict='update' to replace them or on_conflict='skip' to keep the stored rows"
    )
    assert (info.value.keys, info.value.field) == (["b", "c"], "id")


def test_identical_rows_are_never_conflicts() -> None:
    p = Planner(EXISTING, key_field="id", where=str)
    p.add(0, pa.array(["a"]), pa.array(["ha"]), pa.array(["ta"]))
    plan = p.finish(mode="insert", on_conflict="error", on_duplicate="error", sync=False)
    assert (plan.write.tolist(), plan.unchanged, plan.conflicts) == ([False], 1, [])


def test_build_rewrites_everything_and_carries_vectors_over() -> None:
    plan = planner().finish(mode="build", on_conflict="error", on_duplicate="error", sync=False)
    assert plan.write.tolist() == [True, True, True, True]
    assert plan.reuse.tolist() == [10, 11, -1, -1]
    assert plan.deletes.to_pylist() == ["d"]
    assert plan.conflicts == []


def test_insert_never_updates() -> None:
    with pytest.raises(ConfigError, match="mode 'insert' never replaces rows; use mode 'upsert' with on_conflict"):
        planner().finish(mode="insert", on_conflict="update", on_duplicate="error", sync=False)


def test_duplicates_are_reported_with_where_they_are() -> None:
    p = planner(["x", "y", "x", "z", "y", "x"])
    with pytest.raises(InputError) as info:
        p.finish(mode="upsert", on_conflict="update", on_duplicate="error", sync=False)
    assert str(info.value) == (
        "duplicate primary key 'id' in the source: 2 value(s) occur more than once, e.g. "
        "'x' (f.csv row 1, f.csv row 3, f.csv row 6), 'y' (f.csv row 2, f.csv row 5); nothing was written; "
        "fix the source or pass on_duplicate='keep_last' to keep the last occurrence"
    )


def test_keep_last_keeps_the_last_occurrence() -> None:
    plan = planner(["x", "y", "x", "z", "y", "x"]).finish(
        mode="upsert", on_conflict="update", on_duplicate="keep_last", sync=False
    )
    assert plan.write.tolist() == [False, False, False, True, True, True]
    assert (plan.inserted, plan.duplicates_dropped) == (3, 3)


def test_batches_accumulate_by_position() -> None:
    p = Planner(EXISTING, key_field="id", where=str)
    p.add(0, pa.array(["a", "n1"]), pa.array(["ha", "h1"]), None)
    p.add(2, pa.array(["n2"]), pa.array(["h2"]), None)
    plan = p.finish(mode="upsert", on_conflict="error", on_duplicate="error", sync=False)
    assert plan.keys.to_pylist() == ["a", "n1", "n2"]
    assert plan.write.tolist() == [False, True, True]


def test_hashes_are_stable_and_cover_every_column() -> None:
    h = Hasher()
    frame = pl.DataFrame({"id": [1, 2, 2], "price": [1.5, None, None], "title": ["a", "b", "b"]})
    rows, texts = h(frame, ["id", "price", "title"], pl.Series(["t1", "t2", "t2"]))
    assert rows.to_pylist()[1] == rows.to_pylist()[2] != rows.to_pylist()[0]
    # MD5 of the values joined by \x1f (nulls as \x1e): the same on every machine and version
    assert rows.to_pylist()[0] == hashlib.md5(b"1\x1f1.5\x1fa").hexdigest()
    assert rows.to_pylist()[1] == hashlib.md5(b"2\x1f\x1e\x1fb").hexdigest()
    assert texts is not None
    assert texts.to_pylist()[0] == hashlib.md5(b"t1").hexdigest()
    changed, _ = h(frame.with_columns(price=pl.Series([1.5, 2.0, None])), ["id", "price", "title"], None)
    assert changed.to_pylist()[1] != rows.to_pylist()[1]
    assert changed.to_pylist()[0] == rows.to_pylist()[0]
