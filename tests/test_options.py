"""The ingest contract: keyword options checked once, with the valid names and values."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from brinicle_etl import ConfigError, ingest
from brinicle_etl.pipeline.options import IngestOptions, NewCollection, SchemaSpec
from brinicle_etl.types import HnswParams


def test_keyword_options_land_in_their_groups() -> None:
    options = IngestOptions.of(
        mode="insert", primary_key="id", semantic_fields=["title"], dim=8, dtype="f32", batch_rows=10, wait=5
    )
    assert options.mode == "insert"
    assert options.schema == SchemaSpec(primary_key="id", semantic_fields=("title",))
    assert options.new == NewCollection(dim=8, dtype="f32")
    assert (options.batch_rows, options.wait) == (10, 5)
    assert options.new.config(8).params == HnswParams()


def test_an_unknown_option_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": [1], "v": [[0.1, 0.2]]})
    valid = r"valid: backend, batch_rows, conflict_on,"
    with pytest.raises(ConfigError, match=rf"^unknown ingest option\(s\) 'primry_key'; {valid}"):
        ingest(frame, "db/ns", store=tmp_path, primry_key="id")  # type: ignore[call-arg]
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("mode", "replace", "mode must be one of 'build', 'insert', 'upsert'; got 'replace'"),
        ("on_conflict", "merge", "on_conflict must be one of 'error', 'update', 'skip'; got 'merge'"),
        ("on_duplicate", "first", "on_duplicate must be one of 'error', 'keep_last'; got 'first'"),
        ("conflict_on", "row", "conflict_on must be one of 'change', 'key'; got 'row'"),
    ],
)
def test_a_policy_outside_its_choices_is_refused_before_anything_is_read(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        IngestOptions.of(**{name: value})  # type: ignore[misc]
    assert str(info.value) == message


def test_a_template_name_that_cannot_be_a_file_name_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match=r"^invalid template_name '\.\./x'"):
        IngestOptions.of(template_name="../x")
