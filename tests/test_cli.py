"""The brinicle-etl command line: every command, JSON output, errors without tracebacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from brinicle_etl import Store
from brinicle_etl.cli import main
from brinicle_etl.store import shard_of
from tests.conftest import REPO

ROWS = pl.DataFrame(
    {
        "sku": ["A1", "B2", "C3"],
        "title": ["Trail running shoes", "Waterproof hiking boots", "Insulated water bottle"],
        "price": [89.9, 149.0, 24.5],
    }
)


def cli(*argv: str) -> tuple[int, str, str]:
    """The installed command in its own process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "brinicle_etl.cli", *argv], cwd=REPO, capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "products.csv"
    ROWS.write_csv(path)
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def test_ingest_search_status_list(capsys: pytest.CaptureFixture[str], csv: Path, store: str) -> None:
    code, out, _ = run(capsys, "ingest", str(csv), "-c", "shop/items", "--model", "hash-32", "--store", store, "-q")
    assert code == 0
    assert out.splitlines()[:3] == [
        f"Created shop/items from {csv} (generated vectors, model hash-32)",
        "inferred: primary key 'sku'; semantic fields ['title']",
        "rows: 3 read, 3 inserted, 0 updated, 0 skipped, 0 unchanged, 0 deleted; 3 embedded",
    ]
    code, out, _ = run(capsys, "search", "shop/items", "hiking boots", "--k", "2", "--store", store, "--json")
    hits = json.loads(out)
    assert code == 0
    assert next(h["key"] for h in hits) == "B2"
    assert hits[0]["row"] == {"sku": "B2", "title": "Waterproof hiking boots", "price": 149.0}
    assert hits[0]["distance"] <= hits[1]["distance"]
    code, out, _ = run(capsys, "search", "shop/items", "hiking boots", "--store", store)
    assert out.splitlines()[0].split() == ["distance", "sku", "title", "price"]
    assert "Waterproof hiking boots" in out.splitlines()[2]
    code, out, _ = run(capsys, "status", "shop/items", "--store", store, "--json")
    status = json.loads(out)
    assert (status["live_count"], status["dim"], status["metric"]) == (3, 32, "cosine")
    code, out, _ = run(capsys, "list", "--store", store)
    assert out.splitlines()[2].split() == ["shop/items", "3", "32", "1"]


def test_vector_query_and_json_ingest(capsys: pytest.CaptureFixture[str], csv: Path, store: str) -> None:
    code, out, _ = run(capsys, "ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "--json")
    result = json.loads(out)
    assert (code, result["mode"], result["rows_inserted"], result["namespace"]) == (0, "Create", 3, "default")
    code, out, _ = run(capsys, "search", "shop", json.dumps([1, 0, 0, 0, 0, 0, 0, 0]), "--store", store, "--json")
    assert code == 0
    assert len(json.loads(out)) == 3


def test_delete_rebuild_optimize(capsys: pytest.CaptureFixture[str], csv: Path, store: str) -> None:
    run(capsys, "ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    code, out, _ = run(capsys, "delete", "shop", "A1", "ZZ", "--store", store)
    assert (code, out) == (0, "deleted 1; not found: ZZ\n")
    code, out, _ = run(capsys, "optimize", "shop", "--store", store, "--json")
    assert json.loads(out)["rebuilt"] is True  # 1 delete >= 0.1 * 2 live rows
    code, out, _ = run(capsys, "rebuild", "shop", "--M", "8", "--store", store, "--json")
    assert json.loads(out)["params"]["M"] == 8


def test_conflicts_and_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], csv: Path, tmp_path: Path, store: str
) -> None:
    run(capsys, "ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    changed = tmp_path / "changed.csv"
    ROWS.with_columns(price=pl.lit(1.0)).write_csv(changed)
    code, out, err = run(capsys, "ingest", str(changed), "-c", "shop", "--store", store, "-q")
    assert code == 1
    assert out == ""
    assert err == (
        "error: primary key 'sku' already holds different content for 3 row(s): 'A1', 'B2', 'C3'; nothing was "
        "written; pass --on-conflict update to replace them or --on-conflict skip to keep the stored rows\n"
    )
    code, out, _ = run(capsys, "ingest", str(changed), "-c", "shop", "--store", store, "-q", "--on-conflict", "skip")
    assert "conflicts (skip): A1, B2, C3" in out
    code, _, err = run(capsys, "search", "nope", "x", "--store", store)
    assert (code, err) == (
        1,
        "error: collection 'nope/default' not found at " + str(Path(store) / "nope" / "default") + "\n",
    )


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ingest", "x.csv", "-c", "a", "--mode", "append"])
    assert info.value.code == 2
    assert "invalid choice: 'append'" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,title\n1,a\n2,b,c\n")
    proc = subprocess.run(
        [sys.executable, "-m", "brinicle_etl.cli", "ingest", str(bad), "-c", "x", "--store", str(tmp_path / "s")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"error: {bad}: line 3: expected 2 fields like the header, found 3\n"
    assert "Traceback" not in proc.stderr


def test_store_from_environment(
    capsys: pytest.CaptureFixture[str], csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRINICLE_STORE", str(tmp_path / "env-store"))
    code, _, _ = run(capsys, "ingest", str(csv), "-c", "shop", "--model", "hash-8", "-q")
    assert code == 0
    assert (tmp_path / "env-store" / "shop" / "default" / "manifest.json").exists()


def test_drop(capsys: pytest.CaptureFixture[str], csv: Path, store: str) -> None:
    run(capsys, "ingest", str(csv), "-c", "shop/items", "--model", "hash-8", "--store", store, "-q")
    code, out, _ = run(capsys, "drop", "shop/items", "--store", store)
    assert (code, out) == (0, "dropped shop/items and its files\n")
    assert not (Path(store) / "shop" / "items").exists()
    code, out, err = run(capsys, "drop", "shop/items", "--store", store, "--json")
    assert (code, out, err) == (1, "", f"error: collection 'shop/items' not found in {store}\n")
    # the name is free again
    code, _, _ = run(capsys, "ingest", str(csv), "-c", "shop/items", "--model", "hash-8", "--store", store, "-q")
    assert code == 0


def test_a_missing_schema_file_is_named(capsys: pytest.CaptureFixture[str], csv: Path, store: str) -> None:
    code, out, err = run(capsys, "ingest", str(csv), "-c", "shop", "--schema", "@missing.json", "--store", store)
    assert (code, out) == (1, "")
    assert err == "error: --schema @missing.json: cannot read 'missing.json': No such file or directory\n"


def test_a_closed_pipe_ends_quietly(store: str) -> None:
    # `brinicle-etl sql ... --json | head -c 1`: the reader leaves while the output (far more
    # than a pipe holds) is still being written
    proc = subprocess.Popen(
        [sys.executable, "-m", "brinicle_etl.cli", "sql", "SELECT range AS i FROM range(100000)", "--json"],
        cwd=REPO,
        env={**os.environ, "BRINICLE_STORE": store},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert (proc.wait(30), err) == (141, "")


def test_a_no_op_ingest_says_unchanged_and_publishes_nothing(csv: Path, store: str) -> None:
    cli("ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    code, out, _ = cli("ingest", str(csv), "-c", "shop", "--store", store, "-q")
    assert (code, out.splitlines()[0]) == (0, f"Unchanged shop/default from {csv} (generated vectors, model hash-8)")
    assert out.splitlines()[-1].endswith("; generation 1")
    code, out, _ = cli("delete", "shop", "nope", "--store", store, "--json")
    assert json.loads(out) == {"deleted_count": 0, "not_found": ["nope"], "generation": 1}


@pytest.mark.parametrize("separator", ["\t", ";", "|"])
def test_the_delimiter_is_detected(tmp_path: Path, store: str, separator: str) -> None:
    path = tmp_path / "products.csv"
    ROWS.write_csv(path, separator=separator)
    code, out, _ = cli("ingest", str(path), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    assert (code, out.splitlines()[1]) == (0, "inferred: primary key 'sku'; semantic fields ['title']")
    code, out, _ = cli("status", "shop", "--store", store, "--json")
    assert json.loads(out)["live_count"] == 3


def test_an_explicit_separator_wins(tmp_path: Path, store: str) -> None:
    path = tmp_path / "odd.txt"
    path.write_text("sku:title\nA1:red, warm boots\n")
    code, out, _ = cli(
        "ingest", str(path), "-c", "shop", "--separator", ":", "--model", "hash-8", "--store", store, "-q"
    )
    assert (code, out.splitlines()[1]) == (0, "inferred: primary key 'sku'; semantic fields ['title']")


def test_errors_name_flags_not_python_arguments(csv: Path, store: str) -> None:
    cli("ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    code, _, err = cli("ingest", str(csv), "-c", "shop", "--text-fields", "sku", "--store", store, "-q")
    assert (code, err) == (
        1,
        "error: collection 'shop/default' has semantic_fields=('title',), not ('sku',); an existing collection "
        "keeps its schema (use --mode build to replace it)\n",
    )
    col = Store(store).open("shop")
    with col.transaction("upsert"):  # another writer, as far as the CLI can tell
        code, _, err = cli("delete", "shop", "A1", "--store", store)
    assert (code, err) == (
        1,
        f"error: collection 'shop/default' is locked by another writer (pid {os.getpid()}); retry when it "
        "finishes, or pass --wait to wait for it\n",
    )


def test_status_reads_as_text(csv: Path, store: str) -> None:
    cli("ingest", str(csv), "-c", "shop/items", "--model", "hash-8", "--store", store, "-q")
    code, out, _ = cli("status", "shop/items", "--store", store)
    assert code == 0
    lines = out.splitlines()
    assert lines[:6] == [
        "shop/items",
        "  rows       3 live (3 in main, 0 in delta; 0 deleted since the last build)",
        "  vectors    8-d i8, cosine",
        "  index      M=16  ef_construction=200  ef_search=64  rng_seed=0  build_n_threads=0",
        "  rebuild    not needed (delta_ratio 0.1)",
        "  generation 1",
    ]
    assert re.fullmatch(r"  on disk    \d+\.\d KB", lines[6]) and lines[7] == "  session    none"
    assert "None" not in out and "{" not in out


def test_an_empty_text_query_is_refused(csv: Path, store: str) -> None:
    cli("ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    code, out, err = cli("search", "shop", "  ", "--store", store)
    assert (code, out, err) == (
        1,
        "",
        "error: search: the query text is empty; give words to search for, or a vector\n",
    )


def sql_script(store: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brinicle_etl.cli", "sql", "--store", store],
        cwd=REPO,
        input=script,
        capture_output=True,
        text=True,
    )


def test_piped_sql_runs_the_last_statement_and_stops_at_the_first_error(
    capsys: pytest.CaptureFixture[str], csv: Path, store: str
) -> None:
    run(capsys, "ingest", str(csv), "-c", "shop", "--model", "hash-8", "--store", store, "-q")
    done = sql_script(store, "SELECT 1 AS a;\nSELECT count(*) AS n FROM brinicle_rows('shop')")
    assert (done.returncode, done.stdout, done.stderr) == (0, "a\n-\n1\n(1 row)\nn\n-\n3\n(1 row)\n", "")
    failed = sql_script(store, "SELECT 1 AS a;\nSELECT nope FROM nowhere;\nSELECT 3 AS never;\n")
    assert (failed.returncode, failed.stdout) == (1, "a\n-\n1\n(1 row)\n")
    assert failed.stderr.startswith("error: Catalog Error: Table with name nowhere does not exist!")
    rounded = sql_script(store, "SELECT round(_distance, 3) AS d FROM brinicle_search('shop', 'hiking boots', k := 1)")
    assert rounded.returncode == 0 and len(rounded.stdout.splitlines()[2]) <= 5  # e.g. 0.352, never 0.35199999...


def test_sharded_ingest_status_and_one_shard(capsys: pytest.CaptureFixture[str], csv: Path, store: str) -> None:
    args = ("-c", "shop/items", "--model", "hash-32", "--store", store, "-q")
    code, out, _ = run(capsys, "ingest", str(csv), *args, "--shards", "2")
    assert code == 0
    owner = shard_of(["A1", "B2", "C3"], 2).tolist()
    lines = out.splitlines()
    assert lines[0] == f"Created shop/items from {csv} (generated vectors, model hash-32)"
    assert [line.split(":")[0] for line in lines[-2:]] == ["  shard 0", "  shard 1"]
    assert lines[-2].split(": ")[1].startswith(f"{owner.count(0)} read, {owner.count(0)} inserted")
    code, out, _ = run(capsys, "status", "shop/items", "--store", store)
    assert f"  shards     2, split by key; live rows by shard: {owner.count(0)}, {owner.count(1)}" in out.splitlines()
    code, out, _ = run(capsys, "ingest", str(csv), *args, "--shard", "1", "--json")
    assert (code, json.loads(out)["shard"], json.loads(out)["rows_unchanged"]) == (0, 1, owner.count(1))
    code, _, err = run(capsys, "ingest", str(csv), *args, "--shard", "2")
    assert (code, err.strip()) == (1, "error: shard must be from 0 to 1 for 'shop/items' (2 shard(s)); got 2")
    code, out, _ = run(capsys, "search", "shop/items", "hiking boots", "--k", "1", "--store", store, "--json")
    assert json.loads(out)[0]["key"] == "B2"
