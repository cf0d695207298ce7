"""Schema: which column is the key, which carry meaning, where precomputed vectors are, and column types.

A :class:`TemplateSchema` is given (as a dataclass or JSON), loaded from a saved
template, or inferred from the column names and a sample of the data. Inference
says what it chose (:class:`Inferred`), and only ever applies to a new collection:
an existing collection keeps its schema and a source that no longer fits is refused.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from brinicle_etl.errors import ConfigError, InputError
from brinicle_etl.store.rows import RESERVED_COLUMNS
from brinicle_etl.types import EmbedBackend, EmbedPrecision, VectorSource, check_choice

__all__ = [
    "RESERVED_COLUMNS",
    "Inferred",
    "TemplateSchema",
    "cast_frame",
    "infer_schema",
    "render_text",
]


# Portable type names, persisted with a collection.
_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int64": pl.Int64(),
    "float64": pl.Float64(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}

_KEY_NAMES = ("id", "pk", "key", "uuid", "sku", "code")
_TEXT_NAMES = (
    "title",
    "name",
    "headline",
    "subject",
    "summary",
    "description",
    "desc",
    "text",
    "content",
    "body",
    "abstract",
    "review",
    "comment",
    "question",
    "answer",
    "caption",
    "notes",
    "details",
    "overview",
)
_VECTOR_NAMES = ("vector", "embedding", "embeddings", "vec", "emb")


@dataclass(frozen=True, kw_only=True)
class TemplateSchema:
    """How a table maps onto a collection.

    ``primary_key``: the column whose values identify a row (None: a row's key is the
    hash of its content). ``semantic_fields``: the text columns that are embedded,
    joined by ``template`` (a ``str.format`` pattern over column names; by default the
    values one per line). ``vector_col``: a column of precomputed vectors (JSON arrays
    in CSV, list or array columns in Parquet); it is not stored with the row.
    ``columns``: column name -> type (string, int64, float64, bool, date, datetime).
    ``model``: the embedding model id used for ``semantic_fields``. ``backend`` and
    ``precision``: what may run it (None: the model registry entry's, ``auto`` by default);
    they may change without re-embedding anything (every gated path agrees with float32
    within the quality gate), except to or from ``int8``, which counts as another model.
    """

    primary_key: str | None = None
    semantic_fields: tuple[str, ...] = ()
    template: str | None = None
    vector_col: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    backend: EmbedBackend | None = None
    precision: EmbedPrecision | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "semantic_fields", tuple(self.semantic_fields))
        if self.backend is not None:
            check_choice("backend", self.backend, EmbedBackend)
        if self.precision is not None:
            check_choice("precision", self.precision, EmbedPrecision)
        for name, kind in self.columns.items():
            if kind not in _TYPES:
                raise ConfigError(f"column {name!r} has type {kind!r}; types are {', '.join(repr(t) for t in _TYPES)}")
        if self.template is not None:
            for name in _template_fields(self.template):
                if self.columns and name not in self.columns:
                    raise ConfigError(f"template refers to {{{name}}}, which is not a column")

    @property
    def vector_source(self) -> VectorSource:
        if self.vector_col:
            return "precomputed"
        if self.semantic_fields or self.template:
            return "generated"
        return "none"

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns the embedded text is made from."""
        if self.template is not None:
            return tuple(dict.fromkeys(_template_fields(self.template)))
        return self.semantic_fields

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary_key": self.primary_key,
            "semantic_fields": list(self.semantic_fields),
            "template": self.template,
            "vector_col": self.vector_col,
            "columns": dict(self.columns),
            "model": self.model,
        } | {name: value for name, value in (("backend", self.backend), ("precision", self.precision)) if value}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateSchema:
        known = {"primary_key", "semantic_fields", "template", "vector_col", "columns", "model", "backend", "precision"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"template schema has unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        fields = data.get("semantic_fields") or ()
        if isinstance(fields, str):
            fields = (fields,)
        return cls(
            primary_key=data.get("primary_key"),
            semantic_fields=tuple(fields),
            template=data.get("template"),
            vector_col=data.get("vector_col"),
            columns=dict(data.get("columns") or {}),
            model=data.get("model"),
            backend=data.get("backend"),
            precision=data.get("precision"),
        )

    @classmethod
    def from_json(cls, text: str) -> TemplateSchema:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"template schema is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError('template schema must be a JSON object such as {"semantic_fields": ["title"]}')
        return cls.from_dict(data)

    def check_source(self, columns: list[str], where: str) -> None:
        """Refuse a source whose columns no longer fit this schema."""
        expected = list(self.columns) + ([self.vector_col] if self.vector_col else [])
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s) {missing}")
            if extra:
                parts.append(f"unexpected column(s) {extra}")
            raise InputError(
                f"{where} no longer fits the collection's schema: {' and '.join(parts)}; "
                "ingest with mode='build' to replace the collection and its schema"
            )


@dataclass(frozen=True, slots=True)
class Inferred:
    """What inference chose, and why, for the result and the log."""

    primary_key: str | None
    semantic_fields: tuple[str, ...]
    vector_col: str | None
    notes: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.notes)


def _template_fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise ConfigError(f"invalid template {template!r}: {exc}") from exc


def _type_name(dtype: pl.DataType) -> str | None:
    if dtype.is_integer():
        return "int64"
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return "float64"
    if isinstance(dtype, pl.Boolean):
        return "bool"
    if isinstance(dtype, pl.Date):
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum | pl.Time | pl.Null):
        return "string"
    return None


def _guess_text_type(values: pl.Series) -> str:
    """The narrowest type every non-empty value of a text column parses as."""
    present = values.drop_nulls().str.strip_chars()
    present = present.filter(present != "")
    if present.is_empty():
        return "string"
    if present.str.to_integer(strict=False).null_count() == 0:
        return "int64"
    if present.cast(pl.Float64, strict=False).null_count() == 0:
        return "float64"
    if present.str.to_lowercase().is_in(["true", "false"]).all():
        return "bool"
    if present.str.to_date("%Y-%m-%d", strict=False).null_count() == 0:
        return "date"
    if _to_datetime(present).null_count() == 0:
        return "datetime"
    return "string"


def _to_datetime(col: pl.Series) -> pl.Series:
    """Parse timestamps in whatever format polars recognises; all null if it recognises none."""
    try:
        return col.str.to_datetime(strict=False, time_unit="us")
    except pl.exceptions.ComputeError:
        return pl.Series(col.name, [None] * len(col), dtype=pl.Datetime("us"))


def _looks_like_vectors(values: pl.Series) -> bool:
    if isinstance(values.dtype, pl.List | pl.Array):
        return values.dtype.inner is not None and values.dtype.inner.is_float()
    if values.dtype != pl.String:
        return False
    sample = values.drop_nulls().head(20)
    return bool(len(sample)) and bool(sample.str.contains(r"^\s*\[\s*-?[\d.]").all())


def infer_schema(
    sample: pl.DataFrame,
    *,
    primary_key: str | None = None,
    semantic_fields: tuple[str, ...] | None = None,
    vector_col: str | None = None,
    template: str | None = None,
    model: str | None = None,
    infer_fields: bool = True,
    untyped_text: bool = True,
) -> tuple[TemplateSchema, Inferred]:
    """A schema for ``sample``'s columns; arguments given win over inference.

    ``untyped_text``: string columns are raw text (as read from CSV) whose type is guessed
    from the values; otherwise (a typed frame or Parquet) a string column stays a string,
    so ids like ``"0042"`` or ``"1207"`` are not turned into numbers.

    With ``infer_fields=False`` only column types are inferred: the key, text fields and
    vector column are exactly what is given (a template schema that names no primary
    key has none).
    """
    notes: list[str] = []
    names = list(sample.columns)
    lowered = {c.lower(): c for c in names}
    for given, what in ((primary_key, "primary key"), (vector_col, "vector column")):
        if given is not None and given not in names:
            raise InputError(f"{what} {given!r} is not a column; columns are {names}")
    for f in semantic_fields or ():
        if f not in names:
            raise InputError(f"semantic field {f!r} is not a column; columns are {names}")

    if vector_col is None and infer_fields:
        by_name = [lowered[n] for n in _VECTOR_NAMES if n in lowered and _looks_like_vectors(sample[lowered[n]])]
        by_type = [
            c for c in names if isinstance(sample[c].dtype, pl.List | pl.Array) and _looks_like_vectors(sample[c])
        ]
        found = (by_name or by_type or [""])[0]
        if found:
            vector_col = found
            notes.append(f"vector column {found!r} (it holds arrays of numbers)")

    columns: dict[str, str] = {}
    for name in names:
        if name == vector_col:
            continue
        if name in RESERVED_COLUMNS:
            raise InputError(f"column {name!r} is reserved by brinicle_etl; rename it in the source")
        dtype = sample[name].dtype
        kind = _guess_text_type(sample[name]) if dtype == pl.String and untyped_text else _type_name(dtype)
        if kind is None:
            raise InputError(
                f"column {name!r} has type {dtype}, which brinicle_etl cannot store; convert it to text or drop it"
            )
        columns[name] = kind

    if primary_key is None and infer_fields:
        primary_key = _infer_key(sample, [c for c in names if c != vector_col], lowered)
        notes.append(f"primary key {primary_key!r}" if primary_key else "no primary key: rows are keyed by content")

    if semantic_fields is None and template is not None:
        semantic_fields = tuple(dict.fromkeys(_template_fields(template)))
    if semantic_fields is None and infer_fields:
        semantic_fields = _infer_text_fields(sample, columns, exclude={primary_key, vector_col})
        if vector_col is None:
            notes.append(f"semantic fields {list(semantic_fields)}" if semantic_fields else "no text fields to embed")
    schema = TemplateSchema(
        primary_key=primary_key,
        semantic_fields=tuple(semantic_fields or ()),
        template=template,
        vector_col=vector_col,
        columns=columns,
        model=model,
    )
    inferred = Inferred(primary_key, schema.semantic_fields, vector_col, tuple(notes))
    return schema, inferred


def _infer_key(sample: pl.DataFrame, names: list[str], lowered: dict[str, str]) -> str | None:
    candidates = [lowered[n] for n in _KEY_NAMES if n in lowered]
    candidates += [c for c in names if re.search(r"(_id|Id|ID)$", c) and c not in candidates]
    for name in candidates:
        col = sample[name]
        if col.null_count() == 0 and col.n_unique() == len(col) and len(col) > 0:
            return name
    return None


def _infer_text_fields(sample: pl.DataFrame, columns: dict[str, str], exclude: set[str | None]) -> tuple[str, ...]:
    text_cols = [c for c, kind in columns.items() if kind == "string" and c not in exclude]
    lowered = {c.lower(): c for c in text_cols}
    named = [lowered[n] for n in _TEXT_NAMES if n in lowered]
    if named:
        return tuple(named)
    long_text = []
    for c in text_cols:
        values = sample[c].drop_nulls()
        if len(values) and values.str.len_chars().mean() >= 20 and values.n_unique() >= 0.5 * len(values):  # type: ignore[operator]
            long_text.append(c)
    return tuple(long_text)


def cast_frame(
    batch: pl.DataFrame, schema: TemplateSchema, where: Any, *, only: Sequence[str] | None = None
) -> pl.DataFrame:
    """Give every payload column (or those named in ``only``) its schema type; a value that
    does not parse is an error naming its row.

    ``where(i)`` names row ``i`` of the batch for messages.
    """
    exprs: list[pl.Series] = []
    for name, kind in schema.columns.items():
        if only is not None and name not in only:
            continue
        target = _TYPES[kind]
        col = batch[name]
        if col.dtype == target:
            exprs.append(col)
            continue
        if col.dtype == pl.String and kind in ("int64", "float64", "bool", "date", "datetime"):
            converted = _parse_text(col.str.strip_chars(), kind)
            blank = col.is_null() | (col.str.strip_chars() == "")
        else:
            converted = col.cast(target, strict=False)
            blank = col.is_null()
        bad = converted.is_null() & ~blank
        if bad.any():
            i = int(bad.arg_max())  # type: ignore[arg-type]
            raise InputError(f"{where(i)}, column {name!r}: {col[i]!r} is not a valid {kind}")
        exprs.append(converted.alias(name))
    return batch.select(exprs) if exprs else batch.select([])


def _parse_text(col: pl.Series, kind: str) -> pl.Series:
    if kind == "int64":
        return col.str.to_integer(strict=False)
    if kind == "float64":
        return col.cast(pl.Float64, strict=False)
    if kind == "bool":
        low = col.str.to_lowercase()
        return pl.select(pl.when(low == "true").then(True).when(low == "false").then(False).otherwise(None)).to_series()
    if kind == "date":
        return col.str.to_date("%Y-%m-%d", strict=False)
    return _to_datetime(col)


def render_text(frame: pl.DataFrame, schema: TemplateSchema) -> pl.Series:
    """The text embedded for each row: the template filled in, or the semantic fields one per line."""
    if schema.template is not None:
        parts = re.split(r"(\{[^{}]*\})", schema.template.replace("{{", "\x00").replace("}}", "\x01"))
        exprs: list[pl.Expr] = []
        for part in parts:
            if part.startswith("{") and part.endswith("}"):
                exprs.append(pl.col(part[1:-1]).cast(pl.String).fill_null(""))
            elif part:
                exprs.append(pl.lit(part.replace("\x00", "{").replace("\x01", "}")))
        return frame.select(pl.concat_str(exprs).alias("_text")).to_series()
    cols = [pl.col(c).cast(pl.String) for c in schema.semantic_fields]
    return frame.select(pl.concat_str(cols, separator="\n", ignore_nulls=True).fill_null("").alias("_text")).to_series()


def with_overrides(schema: TemplateSchema, **overrides: Any) -> TemplateSchema:
    """``schema`` with the non-None overrides applied."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(schema, **given) if given else schema
