"""Read: CSV / Parquet files, globs, directories and in-memory frames, as batches of polars frames.

CSV columns are read as text and typed later by the schema, so a bad value gets an
error naming its row and column instead of a parser's guess. CSV files are checked
for ragged rows with the csv module first, since polars fills short rows with nulls
silently and reports long ones without a line number.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from brinicle_etl.errors import ConfigError, InputError

__all__ = ["Batch", "Source", "SourceLike", "open_source"]

log = logging.getLogger(__name__)

SourceLike = Any  # path, glob, directory, list of paths, or a polars / Arrow / pandas frame
Format = Literal["csv", "parquet"]

_SUFFIXES: dict[str, Format] = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}
DEFAULT_BATCH_ROWS = 50_000


@dataclass(frozen=True, slots=True)
class Batch:
    """A slice of the source: ``frame`` holds rows ``offset`` .. ``offset + len(frame)`` of the whole source."""

    frame: pl.DataFrame
    offset: int
    origin: str
    origin_offset: int
    picked: np.ndarray | None = None
    """Which rows of the slice read these are, when only some were kept (a shard's rows)."""

    def where(self, index: int) -> str:
        """Where row ``index`` of this batch came from, for messages: ``products.csv row 18``."""
        row = int(self.picked[index]) if self.picked is not None else index
        return f"{self.origin} row {self.origin_offset + row + 1}"


@dataclass(frozen=True)
class Source:
    """A readable source; :meth:`batches` can be called more than once and yields the same rows in order."""

    description: str
    format: Format | None
    files: tuple[Path, ...] = ()
    frame: pl.LazyFrame | None = None
    separator: str = ","
    columns: tuple[str, ...] = field(default=())
    schema: dict[str, pl.DataType] = field(default_factory=dict)
    _checked: set[Path] = field(default_factory=set, compare=False, repr=False)

    def batches(self, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Batch]:
        """Rows in order, ``batch_rows`` at a time.

        The first time a CSV file is read through this source, its shape is checked.
        """
        offset = 0
        if self.frame is not None:
            for chunk in self.frame.collect_batches(chunk_size=batch_rows, maintain_order=True):
                yield Batch(chunk, offset, self.description, offset)
                offset += len(chunk)
            return
        for path in self.files:
            if self.format == "csv" and path not in self._checked:
                _check_csv_shape(path, self.separator)
                self._checked.add(path)
            origin_offset = 0
            chunks = _scan(path, self.format, self.separator).collect_batches(
                chunk_size=batch_rows, maintain_order=True
            )
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                except pl.exceptions.PolarsError as exc:
                    raise InputError(f"cannot read {path}: {exc}") from exc
                if list(chunk.columns) != list(self.columns):
                    raise InputError(
                        f"{path}: columns {chunk.columns} differ from the first file's {list(self.columns)}; "
                        "every file of one source must have the same columns"
                    )
                yield Batch(chunk, offset, str(path), origin_offset)
                offset += len(chunk)
                origin_offset += len(chunk)


def _scan(path: Path, fmt: Format | None, separator: str) -> pl.LazyFrame:
    try:
        if fmt == "parquet":
            return pl.scan_parquet(path)
        # Text on purpose: the schema types the columns and names bad values precisely.
        return pl.scan_csv(path, separator=separator, infer_schema=False, encoding="utf8", raise_if_empty=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _header(path: Path, fmt: Format, separator: str) -> dict[str, pl.DataType] | None:
    """The file's columns and types, or None for an empty file."""
    try:
        if fmt == "parquet":
            return dict(pl.read_parquet_schema(path))
        if path.stat().st_size == 0:
            return None
        schema = _scan(path, fmt, separator).collect_schema()
        return dict(schema) if len(schema) else None
    except pl.exceptions.NoDataError:
        return None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _check_csv_shape(path: Path, separator: str) -> None:
    """Every record has as many fields as the header; quoted commas and newlines are fine."""
    with open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=separator, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                return
            width = len(header)
            for record in reader:
                if len(record) != width and record:
                    raise InputError(
                        f"{path}: line {reader.line_num}: expected {width} fields like the header, found {len(record)}"
                    )
        except csv.Error as exc:
            raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not valid UTF-8 near byte {exc.start}; save the file as UTF-8") from exc


_SEPARATORS = (",", "\t", ";", "|")


def _sniff_separator(files: list[Path], fmt: Format) -> str:
    """The delimiter of a CSV source whose separator was not given: tab for ``.tsv``, else
    whichever of ``, TAB ; |`` the first file's header line holds most of (comma on a tie)."""
    if fmt != "csv":
        return ","
    if all(p.suffix.lower() == ".tsv" for p in files):
        return "\t"
    try:
        with open(files[0], encoding="utf-8-sig", errors="replace", newline="") as fh:
            header = fh.readline(1 << 16)
    except OSError:
        return ","
    counts = {sep: header.count(sep) for sep in _SEPARATORS}
    best = max(_SEPARATORS, key=lambda sep: counts[sep])
    return best if counts[best] > counts[","] else ","


def _expand(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[str, list[Path]]:
    if isinstance(spec, str | os.PathLike):
        text = os.fspath(spec)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES)
            if not files:
                raise InputError(f"directory {text} holds no .csv or .parquet files")
            return text, files
        if any(ch in text for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not files:
                raise InputError(f"no files match {text!r}")
            return text, files
        if not path.exists():
            raise InputError(f"no such file: {text}")
        return text, [path]
    files = [Path(os.fspath(p)) for p in spec]
    for p in files:
        if not p.is_file():
            raise InputError(f"no such file: {p}")
    return f"{len(files)} files", files


def _format_of(files: list[Path], given: Format | None) -> Format:
    if given is not None:
        return given
    kinds = {_SUFFIXES.get(p.suffix.lower()) for p in files}
    if None in kinds:
        odd = next(p for p in files if p.suffix.lower() not in _SUFFIXES)
        raise InputError(f"cannot tell the format of {odd}: use a .csv or .parquet name, or pass format=")
    if len(kinds) > 1:
        raise InputError("a source mixes CSV and Parquet files; ingest them separately")
    return kinds.pop()  # type: ignore[return-value]


def open_source(source: SourceLike, *, format: Format | None = None, separator: str | None = None) -> Source:
    """Open a path, glob, directory, list of paths, or an in-memory frame for reading."""
    if format is not None and format not in ("csv", "parquet"):
        raise ConfigError(f"format must be one of 'csv', 'parquet'; got {format!r}")
    frame = _as_lazy_frame(source)
    if frame is not None:
        schema = dict(frame.collect_schema())
        return Source(
            description=f"a {type(source).__module__.split('.')[0]} {type(source).__name__}",
            format=None,
            frame=frame,
            columns=tuple(schema),
            schema=schema,
        )
    description, files = _expand(source)
    fmt = _format_of(files, format)
    sep = separator or _sniff_separator(files, fmt)
    kept: list[Path] = []
    first: dict[str, pl.DataType] | None = None
    for path in files:
        header = _header(path, fmt, sep)
        if header is None:
            if len(files) == 1:
                raise InputError(f"{path} is empty: no header row and no data")
            log.warning("skipping %s: the file is empty", path)
            continue
        if first is None:
            first = header
        elif list(header) != list(first):
            raise InputError(
                f"{path}: columns {list(header)} differ from {kept[0]}'s {list(first)}; "
                "every file of one source must have the same columns"
            )
        kept.append(path)
    if first is None:
        raise InputError(f"every file in {description} is empty")
    return Source(
        description=description, format=fmt, files=tuple(kept), separator=sep, columns=tuple(first), schema=first
    )


def _as_lazy_frame(source: SourceLike) -> pl.LazyFrame | None:
    if isinstance(source, pl.LazyFrame):
        return source
    if isinstance(source, pl.DataFrame):
        return source.lazy()
    if isinstance(source, pa.Table | pa.RecordBatch):
        return pl.from_arrow(source).lazy()  # type: ignore[union-attr]
    if type(source).__module__.startswith("pandas") and type(source).__name__ == "DataFrame":
        return pl.from_pandas(source).lazy()
    return None
