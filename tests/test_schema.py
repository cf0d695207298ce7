"""Template schemas: JSON, inference, typing rows, rendering the embedded text."""

from __future__ import annotations

import polars as pl
import pytest

from brinicle_etl.errors import ConfigError, InputError
from brinicle_etl.pipeline.schema import TemplateSchema, cast_frame, infer_schema, render_text

CATALOGUE = pl.DataFrame(
    {
        "product_id": ["1", "2", "3"],
        "title": ["Trail shoes", "Rain jacket", "Camp stove"],
        "description": ["Grippy soles for mud", "Sheds heavy rain", None],
        "category": ["footwear", "apparel", "camping"],
        "price": ["89.90", "119", ""],
        "in_stock": ["true", "false", "TRUE"],
        "added": ["2024-01-02", "2024-02-03", "2024-03-04"],
    }
)


def test_inference_from_names_and_values() -> None:
    schema, inferred = infer_schema(CATALOGUE)
    assert schema.primary_key == "product_id"
    assert schema.semantic_fields == ("title", "description")
    assert schema.vector_col is None
    assert schema.columns == {
        "product_id": "int64",
        "title": "string",
        "description": "string",
        "category": "string",
        "price": "float64",
        "in_stock": "bool",
        "added": "date",
    }
    assert schema.vector_source == "generated"
    assert str(inferred) == "primary key 'product_id'; semantic fields ['title', 'description']"


def test_typed_string_columns_stay_strings() -> None:
    # A typed frame's (or Parquet's) string column is meant to be one; only CSV text is guessed.
    schema, _ = infer_schema(CATALOGUE, untyped_text=False)
    assert set(schema.columns.values()) == {"string"}
    assert schema.primary_key == "product_id"


def test_inference_respects_what_is_given_and_finds_vectors() -> None:
    frame = CATALOGUE.with_columns(embedding=pl.Series(["[0.1, 0.2]", "[0.3, 0.4]", "[0.5,0.6]"]))
    schema, inferred = infer_schema(frame, primary_key="title", semantic_fields=("category",))
    assert (schema.primary_key, schema.semantic_fields, schema.vector_col) == ("title", ("category",), "embedding")
    assert "embedding" not in schema.columns
    assert schema.vector_source == "precomputed"
    assert inferred.notes == ("vector column 'embedding' (it holds arrays of numbers)",)


def test_no_unique_key_means_content_keys() -> None:
    frame = pl.DataFrame({"id": ["1", "1"], "body": ["some long text about things", "another long text here"]})
    schema, inferred = infer_schema(frame)
    assert schema.primary_key is None
    assert schema.semantic_fields == ("body",)
    assert "no primary key: rows are keyed by content" in inferred.notes


def test_long_text_columns_are_found_without_hint_names() -> None:
    frame = pl.DataFrame(
        {
            "sku": ["a", "b"],
            "blurb": ["a long enough sentence to embed", "another long sentence here"],
            "colour": ["red", "red"],
        }
    )
    schema, _ = infer_schema(frame)
    assert (schema.primary_key, schema.semantic_fields) == ("sku", ("blurb",))


def test_given_names_must_exist() -> None:
    with pytest.raises(InputError, match=r"primary key 'nope' is not a column; columns are \['product_id'"):
        infer_schema(CATALOGUE, primary_key="nope")
    with pytest.raises(InputError, match="semantic field 'summary' is not a column"):
        infer_schema(CATALOGUE, semantic_fields=("summary",))


def test_reserved_and_unstorable_columns() -> None:
    with pytest.raises(InputError, match="column '_key' is reserved by brinicle_etl; rename it in the source"):
        infer_schema(pl.DataFrame({"_key": ["a"]}))
    with pytest.raises(InputError, match="column 'tags' has type List\\(String\\), which brinicle_etl cannot store"):
        infer_schema(pl.DataFrame({"id": [1], "tags": [["a", "b"]]}))


def test_json_round_trip_and_errors() -> None:
    schema = TemplateSchema(
        primary_key="id",
        semantic_fields=("title",),
        template="{title}!",
        columns={"id": "int64", "title": "string"},
        model="hash-32",
    )
    assert TemplateSchema.from_json(schema.to_json()) == schema
    spec_style = TemplateSchema.from_json('{"semantic_fields": ["title", "body"]}')
    assert spec_style.semantic_fields == ("title", "body")
    with pytest.raises(ConfigError, match="template schema is not valid JSON"):
        TemplateSchema.from_json("{nope")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['fields'\]"):
        TemplateSchema.from_json('{"fields": ["x"]}')
    with pytest.raises(ConfigError, match="column 'x' has type 'text'; types are 'string', 'int64'"):
        TemplateSchema(columns={"x": "text"})
    with pytest.raises(ConfigError, match=r"template refers to \{body\}, which is not a column"):
        TemplateSchema(template="{body}", columns={"title": "string"})


def test_cast_types_rows_and_names_bad_values() -> None:
    schema, _ = infer_schema(CATALOGUE)
    typed = cast_frame(CATALOGUE, schema, lambda i: f"products.csv row {i + 1}")
    assert typed["price"].to_list() == [89.9, 119.0, None]
    assert typed["in_stock"].to_list() == [True, False, True]
    assert typed["product_id"].dtype == pl.Int64
    bad = CATALOGUE.with_columns(price=pl.Series(["1", "two", "3"]))
    with pytest.raises(InputError) as info:
        cast_frame(bad, schema, lambda i: f"products.csv row {i + 1}")
    assert str(info.value) == "products.csv row 2, column 'price': 'two' is not a valid float64"


def test_source_that_no_longer_fits() -> None:
    schema, _ = infer_schema(CATALOGUE)
    with pytest.raises(InputError) as info:
        schema.check_source(["product_id", "title", "description", "category", "price", "colour"], "day2.csv")
    assert str(info.value) == (
        "day2.csv no longer fits the collection's schema: missing column(s) ['in_stock', 'added'] and "
        "unexpected column(s) ['colour']; ingest with mode='build' to replace the collection and its schema"
    )


def test_render_text_default_and_template() -> None:
    schema, _ = infer_schema(CATALOGUE)
    typed = cast_frame(CATALOGUE, schema, str)
    assert render_text(typed, schema).to_list() == [
        "Trail shoes\nGrippy soles for mud",
        "Rain jacket\nSheds heavy rain",
        "Camp stove",
    ]
    templated = TemplateSchema.from_dict(
        {**schema.to_dict(), "template": "{title} ({category}) {{new}}: {description}"}
    )
    assert render_text(typed, templated).to_list()[2] == "Camp stove (camping) {new}: "
    assert templated.text_columns == ("title", "category", "description")
