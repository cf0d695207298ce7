"""The CSV ingest endpoint's rules as a library call: names, dims, seed/depth/dtype, models, quotas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import ConfigError, ConflictError, InputError, QuotaExceededError, Store
from brinicle_etl.compat.build_ingest import build_ingest_data, parse_dtype_config, sanitize_identifier
from brinicle_etl.compat.usage import UsageLedger, owner_id
from brinicle_etl.embed import ModelSpec
from brinicle_etl.pipeline import model_registry


def csv(tmp_path: Path, name: str, rows: list[str], header: str = "id,title,price") -> Path:
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "store")
    model_registry(st).register(ModelSpec(id="hash128", dim=128, kind="hash"))
    return st


def test_identifiers_and_dtype_config() -> None:
    assert sanitize_identifier(" my db!/x ", what="db_name") == "my_db__x"
    assert sanitize_identifier("a" * 80, what="db_name") == "a" * 64
    with pytest.raises(ConfigError, match=r"db_name '\.\./' has no letters or digits"):
        sanitize_identifier("../", what="db_name")
    assert parse_dtype_config(None) == (None, "cosine")  # None: the metric's default dtype
    assert parse_dtype_config('{"metric": "l2sq"}') == (None, "l2sq")
    assert parse_dtype_config("f16") == ("f16", "cosine")
    assert parse_dtype_config('{"dtype": "f32", "metric": "l2sq"}') == ("f32", "l2sq")
    with pytest.raises(ConfigError, match="dtype_config must be one of 'f32', 'f16', 'bf16', 'i8'; got 'f64'"):
        parse_dtype_config("f64")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rerank'\]"):
        parse_dtype_config('{"rerank": true}')


def test_create_then_append_with_the_spec_rules(store: Store, tmp_path: Path) -> None:
    first = csv(tmp_path, "a.csv", ["1,red boots,10", "2,blue tent,20"])
    result = build_ingest_data(store, first, dim=128, seed=7, depth=3, db_name="my db", dtype_config="f16")
    assert (result.mode, result.rows_inserted, result.namespace, result.vector_source) == (
        "Create",
        2,
        "default",
        "generated",
    )
    col = store.open("my_db/default")
    config = col.config
    assert (config.dim, config.dtype, config.params.M, config.params.rng_seed) == (128, "f16", 24, 7)
    assert col.meta["schema"]["model"] == "hash128", "a registered model that makes 128-d vectors"
    second = csv(tmp_path, "b.csv", ["2,blue tent,25", "3,green stove,30"])
    with pytest.raises(ConflictError) as info:
        build_ingest_data(store, second, dim=128, seed=0, depth=2, db_name="my db")
    assert (info.value.field, info.value.keys) == ("id", [2])
    appended = build_ingest_data(store, second, dim=128, seed=0, depth=2, db_name="my db", on_conflict="update")
    assert (appended.mode, appended.rows_inserted, appended.rows_updated, appended.conflicts) == ("Append", 1, 1, [2])
    assert store.open("my_db/default").config.params.M == 24, "an existing collection keeps its settings"


def test_dimension_rules(store: Store, tmp_path: Path) -> None:
    path = csv(tmp_path, "a.csv", ["1,red boots,10"])
    with pytest.raises(InputError, match="dim must be between 128 and 8192 for a new database; got 64"):
        build_ingest_data(store, path, dim=64, seed=0, depth=2)
    with pytest.raises(InputError, match="dimension mismatch: dim=512 was given, but model 'all-MiniLM-L6-v2'"):
        build_ingest_data(store, path, dim=512, seed=0, depth=2)
    assert not store.exists("fractal_db")
    build_ingest_data(store, path, dim=128, seed=0, depth=2)
    with pytest.raises(InputError, match="dimension mismatch: 'fractal_db/default' holds 128-d vectors, the request"):
        build_ingest_data(store, path, dim=256, seed=0, depth=2)
    with pytest.raises(ConfigError, match="depth must be between 1 and 8"):
        build_ingest_data(store, path, dim=128, seed=0, depth=0)
    with pytest.raises(ConfigError, match="on_conflict must be one of 'error', 'update', 'skip'; got 'merge'"):
        build_ingest_data(store, path, dim=128, seed=0, depth=2, on_conflict="merge")  # type: ignore[arg-type]


def test_precomputed_vectors_and_templates(store: Store, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [f'{i},item {i},"{json.dumps(rng.standard_normal(128).round(4).tolist())}"' for i in range(5)]
    path = csv(tmp_path, "v.csv", rows, header="id,title,embedding")
    result = build_ingest_data(store, path, dim=128, seed=0, depth=2, namespace="vecs", vector_col="embedding")
    assert (result.vector_source, result.rows_inserted) == ("precomputed", 5)
    bad = csv(tmp_path, "bad.csv", ['9,x,"[1, 2, oops]"'], header="id,title,embedding")
    with pytest.raises(InputError, match="row 1, column 'embedding': not a JSON array"):
        build_ingest_data(store, bad, dim=128, seed=0, depth=2, namespace="vecs", vector_col="embedding")
    plain = csv(tmp_path, "p.csv", ["1,red boots,10"])
    schema = '{"primary_key": "id", "semantic_fields": ["title"], "model": "hash128"}'
    build_ingest_data(
        store, plain, dim=128, seed=0, depth=2, db_name="t", template_schema=schema, template_name="catalogue"
    )
    reused = build_ingest_data(store, plain, dim=128, seed=0, depth=2, db_name="t2", template_name="catalogue")
    assert reused.schema.semantic_fields == ("title",)


def test_usage_is_recorded_and_quotas_enforced(store: Store, tmp_path: Path) -> None:
    path = csv(tmp_path, "a.csv", [f"{i},item {i},{i}" for i in range(50)])
    alice = owner_id("alice-key")
    build_ingest_data(store, path, dim=128, seed=0, depth=2, db_name="a", owner=alice)
    ledger = UsageLedger(store)
    entry = ledger.read()["collections"]["a/default"]
    assert (entry["owner"], entry["rows"], entry["ingests"]) == (alice, 50, 1)
    assert entry["bytes_on_disk"] == store.open("a").status().bytes_on_disk
    used = ledger.used_by(alice)
    with pytest.raises(QuotaExceededError, match="storage quota exceeded: this API key's collections use"):
        build_ingest_data(store, path, dim=128, seed=0, depth=2, db_name="b", owner=alice, quota_bytes=used + 10)
    assert not store.exists("b")
    build_ingest_data(store, path, dim=128, seed=0, depth=2, db_name="b", owner=alice, quota_bytes=10 * used)
    assert ledger.used_by(alice) > used
    assert "alice-key" not in (store.config_dir / "usage.json").read_text()
