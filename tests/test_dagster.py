"""Dagster: materialize() the asset chain, the checks, partitions, the sensor and the YAML component."""

import os
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from brinicle_etl import ConfigError, Store
from brinicle_etl.dagster import (
    BrinicleCollectionComponent,
    BrinicleResource,
    collection_asset,
    directory_sensor,
    scan_directory,
)
from brinicle_etl.store import shard_of
from tests.conftest import REPO

DAY1 = pl.DataFrame(
    {
        "sku": ["a", "b", "c", "d"],
        "title": ["Trail shoes", "Hiking boots", "Water bottle", "Rain jacket"],
        "price": [89.0, 149.0, 24.5, 119.0],
    }
)
DAY2 = pl.DataFrame(
    {
        "sku": ["a", "b", "c", "e"],
        "title": ["Trail shoes", "Leather hiking boots", "Water bottle", "Camp stove"],
        "price": [79.0, 149.0, 24.5, 59.0],
    }
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def products_asset(frame: pl.DataFrame) -> dg.AssetsDefinition:
    @dg.asset(name="products")
    def products() -> pl.DataFrame:
        return frame

    return products


def run_chain(store: Path, frame: pl.DataFrame, **options: object) -> dg.ExecuteInProcessResult:
    catalogue = collection_asset(
        "shop/items", upstream="products", key="catalogue", model="hash-32", primary_key="sku", **options
    )

    @dg.asset(deps=[catalogue])
    def downstream() -> int:
        return 1

    return dg.materialize(
        [products_asset(frame), catalogue, downstream],
        resources={"brinicle": BrinicleResource(store=str(store))},
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    event = result.asset_materializations_for_node("catalogue")[0]
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def test_first_load_then_second_day_with_every_outcome(store: Path) -> None:
    first = run_chain(store, DAY1, on_conflict="update", sync=True)
    assert first.success
    m = metadata(first)
    assert (m["rows_inserted"], m["rows_embedded"], m["generation"], m["live_rows"]) == (4, 4, 1, 4)
    assert m["primary_key"] == "sku"
    assert [c.name for c in m["dagster/column_schema"].columns] == ["sku", "title", "price"]
    assert m["size_on_disk_bytes"] > 0
    assert 0.0 <= m["recall_at_10"] <= 1.0
    checks = first.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {
        "primary_key_unique",
        "vector_count_matches_rows",
        "dimension_matches_model",
        "recall_at_10",
    }
    assert all(c.passed for c in checks)

    second = run_chain(store, DAY2, on_conflict="update", sync=True)
    assert second.success
    m = metadata(second)
    got = {k: m[k] for k in ("rows_inserted", "rows_updated", "rows_unchanged", "rows_deleted", "rows_embedded")}
    assert got == {"rows_inserted": 1, "rows_updated": 2, "rows_unchanged": 1, "rows_deleted": 1, "rows_embedded": 2}
    assert m["conflict_count"] == 2
    assert m["conflicts"] == {"shown": ["a", "b"], "total": 2}
    assert sorted(r["sku"] for r in Store(store).open("shop/items").rows(["sku"]).to_pylist()) == ["a", "b", "c", "e"]


def test_conflict_policy_error_fails_the_run_naming_the_keys(store: Path) -> None:
    assert run_chain(store, DAY1).success
    failed = run_chain(store, DAY2)
    assert not failed.success
    failure = failed.failure_data_for_node("catalogue")
    assert failure is not None
    message = failure.error.message
    assert "primary key 'sku' already holds different content for 2 row(s): 'a', 'b'" in message
    assert failed.get_step_success_events() == [e for e in failed.get_step_success_events() if "products" in str(e)]


def test_a_failing_blocking_check_stops_the_downstream_asset(store: Path) -> None:
    result = run_chain(store, DAY1, recall_threshold=1.01)  # recall can never reach it
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["recall_at_10"].passed
    assert checks["primary_key_unique"].passed
    assert not result.success
    assert "downstream" not in {e.step_key for e in result.get_step_success_events()}
    assert result.asset_materializations_for_node("catalogue"), "the collection itself was written"


def test_static_partitions_write_one_namespace_each(store: Path) -> None:
    parts = dg.StaticPartitionsDefinition(["red", "blue"])

    @dg.asset(partitions_def=parts, name="colours")
    def colours(context: dg.AssetExecutionContext) -> pl.DataFrame:
        return DAY1.with_columns(title=pl.col("title") + f" ({context.partition_key})")

    asset = collection_asset(
        "paint/{partition}", upstream="colours", key="paint", partitions_def=parts, model="hash-16", primary_key="sku"
    )
    for partition in ("red", "blue"):
        result = dg.materialize(
            [colours, asset], partition_key=partition, resources={"brinicle": BrinicleResource(store=str(store))}
        )
        assert result.success
    st = Store(store)
    assert st.names() == ["paint/blue", "paint/red"]
    assert st.open("paint/red").rows(["title"]).column("title").to_pylist()[0] == "Trail shoes (red)"


def test_sensor_requests_a_run_per_new_or_changed_file(tmp_path: Path, store: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    files = dg.DynamicPartitionsDefinition(name="files")
    asset = collection_asset(
        "shop/inbox", source="{partition}", key="inbox", partitions_def=files, model="hash-16", primary_key="sku"
    )
    job = dg.define_asset_job("inbox_job", selection=[asset.key])
    sensor = directory_sensor(inbox, job=job, partitions_def=files, name="inbox_sensor")
    defs = dg.Definitions(
        assets=[asset], jobs=[job], sensors=[sensor], resources={"brinicle": BrinicleResource(store=str(store))}
    )
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        assert isinstance(sensor(context), dg.SkipReason)
        DAY1.write_csv(inbox / "day1.csv")
        (inbox / "notes.txt").write_text("ignored")
        result = sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor, definitions=defs))
        assert isinstance(result, dg.SensorResult)
        day1 = str((inbox / "day1.csv").resolve())
        assert [r.partition_key for r in result.run_requests] == [day1]
        assert result.dynamic_partitions_requests[0].partition_keys == [day1]
        instance.add_dynamic_partitions("files", [day1])
        cursor = result.cursor
        assert isinstance(
            sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)), dg.SkipReason
        )
        DAY2.write_csv(inbox / "day1.csv")  # changed in place
        DAY2.write_csv(inbox / "day2.csv")
        os.utime(inbox / "day1.csv", ns=(1, 1))
        again = sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        assert isinstance(again, dg.SensorResult)
        assert sorted(Path(r.partition_key).name for r in again.run_requests) == ["day1.csv", "day2.csv"]
        run = defs.resolve_job_def("inbox_job").execute_in_process(instance=instance, partition_key=day1)
        assert run.success
    assert len(Store(store).open("shop/inbox")) == 4
    assert set(scan_directory(inbox, "*.csv")) == {day1, str((inbox / "day2.csv").resolve())}


def test_component_from_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A project whose defs folder declares a collection in YAML only, loaded as dg loads it."""
    project = tmp_path / "yamlproject"
    folder = project / "yamlproj" / "defs" / "catalogue"
    folder.mkdir(parents=True)
    (project / "yamlproj" / "__init__.py").write_text("")
    (project / "yamlproj" / "defs" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "yamlproj"\nversion = "0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "yamlproj"\ndefs_module = "yamlproj.defs"\n'
    )
    DAY1.write_csv(folder / "items.csv")
    (folder / "defs.yaml").write_text(
        "type: brinicle_etl.dagster.BrinicleCollectionComponent\n"
        "attributes:\n"
        "  collection: shop/yaml\n"
        "  source: items.csv\n"
        "  store: yaml-store\n"
        "  asset_key: [yaml_catalogue]\n"
        "  primary_key: sku\n"
        "  semantic_fields: [title]\n"
        "  embedding_model: hash-16\n"
        "  on_conflict: update\n"
        "  daily_at: '05:15'\n"
    )
    monkeypatch.syspath_prepend(str(project))
    defs = dg.load_from_defs_folder(path_within_project=project)
    assert defs.resolve_schedule_def("daily_yaml_catalogue").cron_schedule == "15 5 * * *"
    result = defs.resolve_job_def("refresh_yaml_catalogue").execute_in_process()
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 4
    assert all(c.passed for c in checks)
    collection = Store(project / "yaml-store").open("shop/yaml")
    assert collection.meta["schema"]["model"] == "hash-16"
    assert len(collection) == 4
    component = next(iter(defs.component_tree.get_all_components(of_type=BrinicleCollectionComponent)), None)
    assert component is not None
    assert (component.collection, component.sync, component.on_conflict) == ("shop/yaml", False, "update")


@pytest.mark.skipif(shutil.which("dagster") is None and not (REPO / ".venv/bin/dagster").exists(), reason="no CLI")
def test_pipelines_load_like_dagster_dev_and_the_sample_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster dev -m pipelines` imports the module and reads `defs`; do the same, then run the job."""
    import subprocess
    import sys

    env = {**os.environ, "BRINICLE_STORE": str(tmp_path / "store"), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    check = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "pipelines"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    monkeypatch.setenv("BRINICLE_STORE", str(tmp_path / "store"))
    for name in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
        monkeypatch.delitem(sys.modules, name)
    import pipelines

    defs = pipelines.defs
    assert {s.name for s in defs.schedules} >= {"daily_catalogue", "daily_catalogue_vectors"}
    assert {s.name for s in defs.sensors} == {"inbox_sensor"}
    # the inbox sensor runs from the start; the schedules wait to be turned on (README says so)
    assert [s.default_status for s in defs.sensors] == [dg.DefaultSensorStatus.RUNNING]
    assert {s.default_status for s in defs.schedules} == {dg.DefaultScheduleStatus.STOPPED}
    assert set(defs.resources) == {"brinicle_store"}  # readable, not brinicle_<hash>
    result = defs.resolve_job_def("catalogue_job").execute_in_process()
    assert result.success
    # What embedded the rows shows in the asset's metadata (backend/precision/device, and quality).
    built = result.asset_materializations_for_node("catalogue")[0]
    assert str(built.metadata["embedding"].value).split(" ")[0].endswith("/cpu")
    smoke = result.asset_materializations_for_node("catalogue_smoke_test")[0]
    assert "Waterproof Hiking Boots" in str(smoke.metadata["top_titles"].value)
    assert len(Store(tmp_path / "store").open("shop/products")) == 300


def test_resource_keys_read_as_their_stores(tmp_path: Path) -> None:
    from brinicle_etl.dagster import store_resource

    # (keys are per process: names no other test uses)
    assert store_resource(tmp_path / "brinicle_keys")[0] == "brinicle_keys"
    key, resource = store_resource(tmp_path / "key-vectors")
    assert (key, resource.store) == ("brinicle_key_vectors", str(tmp_path / "key-vectors"))
    assert store_resource(tmp_path / "key-vectors") == (key, resource)  # one object per store
    assert store_resource(tmp_path / "other" / "key-vectors")[0] == "brinicle_key_vectors_2"


def test_dg_loads_the_project_without_a_warning(tmp_path: Path) -> None:
    """The code location has a stable name (not the checkout's folder): `dg check defs` and
    `dg dev` say nothing about it."""
    import subprocess
    import sys

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").touch()
    venv = Path(sys.executable).parent.parent
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "BRINICLE_STORE": str(tmp_path / "store"),
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [str(venv / "bin" / "dg"), "check", "defs"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "All definitions loaded successfully." in out
    assert "warning" not in out.lower(), out


def test_wrong_ingest_options_fail_when_the_definitions_load() -> None:
    with pytest.raises(ConfigError, match=r"^on_conflict must be one of 'error', 'update', 'skip'; got 'merge'$"):
        collection_asset("shop/products", source="products.csv", on_conflict="merge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^unknown ingest option\(s\) 'primary'"):
        collection_asset("shop/products", source="products.csv", primary="id")  # type: ignore[call-arg]


def test_a_sharded_asset_runs_a_step_per_shard_with_the_multiprocess_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sharded example, end to end with the real model: one run per shard partition, each
    step in a process of its own, then the collection searched as one."""
    import sys

    from brinicle_etl.search import search
    from tests.dagster_sharded_job import sharded_catalogue_job

    monkeypatch.setenv("BRINICLE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
        monkeypatch.delitem(sys.modules, name)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        for shard in ("0", "1", "2", "3"):
            with dg.execute_job(
                dg.reconstructable(sharded_catalogue_job), instance=instance, tags={"dagster/partition": shard}
            ) as run:
                assert run.success, [e.message for e in run.all_events if e.is_failure]
                steps = {e.step_key for e in run.all_events if e.event_type_value == "STEP_START"}
                assert steps == {"catalogue_sharded"}
                event = run.asset_materializations_for_node("catalogue_sharded")[0]
                assert event.partition == shard and event.metadata["shard"].value == int(shard)
                checks = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
                assert checks["recall_at_10"] and checks["primary_key_unique"]
                # all_shards passes once the last shard is written
                assert checks["all_shards"] is (shard == "3")
    col = Store(tmp_path / "store").open("shop/products_sharded")
    assert len(col) == 300
    hits = search(col, "waterproof boots for hiking in the rain", 3)
    assert any("Waterproof Hiking Boots" in str(h.row["title"]) for h in hits)


def test_the_sharded_definitions_load_with_the_kubernetes_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's one-line switch: the same asset, on Kubernetes (loaded and resolved, not run)."""
    from dagster_k8s import k8s_job_executor

    from pipelines.defs import sharded

    job = dg.define_asset_job("on_kubernetes", selection=[sharded.catalogue_sharded], executor_def=k8s_job_executor)
    defs = dg.Definitions(assets=[sharded.catalogue_sharded], jobs=[job], resources=sharded.defs.resources)
    dg.Definitions.validate_loadable(defs)
    resolved = defs.resolve_job_def("on_kubernetes")
    assert resolved.executor_def is k8s_job_executor
    assert resolved.partitions_def is not None
    assert resolved.partitions_def.get_partition_keys() == ["0", "1", "2", "3"]


def test_shards_compose_with_the_assets_own_partitions(tmp_path: Path, store: Path) -> None:
    DAY1.write_csv(tmp_path / "north.csv")
    DAY2.write_csv(tmp_path / "south.csv")
    asset = collection_asset(
        "shop/{partition}",
        source=str(tmp_path / "{partition}.csv"),
        key="regional",
        partitions_def=dg.StaticPartitionsDefinition(["north", "south"]),
        model="hash-32",
        primary_key="sku",
        shards=2,
    )
    assert isinstance(asset.partitions_def, dg.MultiPartitionsDefinition)
    resources = {"brinicle": BrinicleResource(store=str(store))}
    for region, shard in (("north", "0"), ("north", "1"), ("south", "1")):
        key = dg.MultiPartitionKey({"partition": region, "shard": shard})
        result = dg.materialize([asset], resources=resources, partition_key=key)
        assert result.success
        assert result.asset_materializations_for_node("regional")[0].metadata["shard"].value == int(shard)
    owner = dict(zip(DAY2["sku"].to_list(), shard_of(DAY2["sku"].to_list(), 2).tolist(), strict=True))
    assert sorted(Store(store).open("shop/north").keys()) == sorted(DAY1["sku"].to_list())
    assert sorted(Store(store).open("shop/south").keys()) == sorted(k for k, o in owner.items() if o == 1)


def test_a_shard_option_on_an_asset_is_refused_when_the_definitions_load() -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="give shards=N; each shard is a partition"):
        collection_asset("shop/items", source="x.csv", shards=2, shard=1)


def test_the_resource_checks_its_dtype_when_built_and_leaves_it_to_the_metric(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"dtype must be one of 'f32', 'f16', 'bf16', 'i8'; got 'f64'"):
        BrinicleResource(store=str(tmp_path), dtype="f64")
    assert BrinicleResource(store=str(tmp_path), dtype="f16").options().new.dtype == "f16"
    assert BrinicleResource(store=str(tmp_path)).options().new.dtype is None  # the metric's default, at creation
