"""Reading sources: files, globs, directories, frames, and the CSV quirks real files have."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from brinicle_etl.errors import InputError
from brinicle_etl.pipeline.read import open_source


def rows(source: object, **kwargs: object) -> pl.DataFrame:
    src = open_source(source)
    frames = [b.frame for b in src.batches(**kwargs)]  # type: ignore[arg-type]
    return pl.concat(frames) if frames else pl.DataFrame()


def test_quoted_commas_newlines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes('\ufeffid,title\n1,"hello, world\nsecond line"\n2,"say ""hi"""\n'.encode())
    df = rows(path)
    assert df.columns == ["id", "title"]
    assert df["title"].to_list() == ["hello, world\nsecond line", 'say "hi"']


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("id,title\n1,a\n2,b,c\n3,d\n", "line 3: expected 2 fields like the header, found 3"),
        ("id,title,x\n1,a,1\n2,b\n", "line 3: expected 3 fields like the header, found 2"),
        ('id,title\n1,"multi\nline"\n2,x,y\n', "line 4: expected 2 fields like the header, found 3"),
    ],
)
def test_ragged_rows_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "r.csv"
    path.write_text(body)
    with pytest.raises(InputError) as info:
        rows(path)
    assert str(info.value) == f"{path}: {message}"


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,title\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8 near byte 14; save the file as UTF-8"):
        rows(path)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty.csv is empty: no header row and no data$"):
        open_source(empty)
    header = tmp_path / "header.csv"
    header.write_text("id,title\n")
    src = open_source(header)
    assert src.columns == ("id", "title")
    assert sum(len(b.frame) for b in src.batches()) == 0


def test_glob_and_directory_read_files_in_order_and_skip_empty_ones(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("id,v\n3,c\n")
    (tmp_path / "a.csv").write_text("id,v\n1,a\n2,b\n")
    (tmp_path / "c.csv").write_text("")
    (tmp_path / "notes.md").write_text("not data")
    for source in (tmp_path, str(tmp_path / "*.csv")):
        df = rows(source)
        assert df["id"].to_list() == ["1", "2", "3"]
    batches = list(open_source(tmp_path).batches(batch_rows=1))
    assert [b.where(0) for b in batches] == [
        f"{tmp_path / 'a.csv'} row 1",
        f"{tmp_path / 'a.csv'} row 2",
        f"{tmp_path / 'b.csv'} row 1",
    ]
    assert [b.offset for b in batches] == [0, 1, 2]


def test_files_with_different_columns_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,a\n")
    (tmp_path / "b.csv").write_text("id,w\n2,b\n")
    with pytest.raises(InputError, match=r"columns \['id', 'w'\] differ from .*a.csv's \['id', 'v'\]"):
        open_source(tmp_path)


def test_missing_paths_and_formats(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no such file: .*nope\.csv"):
        open_source(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="no files match"):
        open_source(str(tmp_path / "*.parquet"))
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(InputError, match=r"cannot tell the format of .*data\.json"):
        open_source(tmp_path / "data.json")
    (tmp_path / "a.csv").write_text("id\n1\n")
    pl.DataFrame({"id": [2]}).write_parquet(tmp_path / "b.parquet")
    with pytest.raises(InputError, match="mixes CSV and Parquet"):
        open_source(tmp_path)


def test_parquet_keeps_types_and_reads_in_batches(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": list(range(25)), "x": [float(i) / 2 for i in range(25)]})
    frame.write_parquet(tmp_path / "f.parquet")
    src = open_source(tmp_path / "f.parquet")
    assert src.schema == {"id": pl.Int64, "x": pl.Float64}
    batches = list(src.batches(batch_rows=10))
    assert [len(b.frame) for b in batches] == [10, 10, 5]
    assert pl.concat([b.frame for b in batches]).equals(frame)


@pytest.mark.parametrize("kind", ["polars", "lazy", "arrow", "pandas"])
def test_in_memory_frames(kind: str) -> None:
    data = {"id": [1, 2, 3], "title": ["a", "b", "c"]}
    source = {
        "polars": pl.DataFrame(data),
        "lazy": pl.DataFrame(data).lazy(),
        "arrow": pa.table(data),
        "pandas": pd.DataFrame(data),
    }[kind]
    src = open_source(source)
    assert src.columns == ("id", "title")
    batches = list(src.batches(batch_rows=2))
    assert [len(b.frame) for b in batches] == [2, 1]
    assert batches[1].where(0) == f"{src.description} row 3"
    # a second pass yields the same rows
    assert pl.concat([b.frame for b in src.batches()]).equals(pl.concat([b.frame for b in batches]))
