"""Scenarios on a nearly full file system, run by tests/test_disk_full.py inside a private mount
namespace (``unshare -rm``) whose store lives on a small tmpfs. Each prints one JSON object of
what it saw; the test asserts on it.

    python tests/disk_full_scenarios.py SCENARIO DIRECTORY
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from brinicle_etl import DiskFullError, Store, ingest  # noqa: E402
from tests.conftest import clustered  # noqa: E402
from tests.server_process import running_server  # noqa: E402

DIM = 64


def fill(directory: Path, leave: int) -> Path:
    """Fill the file system holding ``directory``, then free ``leave`` bytes of it again."""
    filler = directory / "filler.bin"
    block = b"\1" * (1 << 16)
    # Unbuffered: a buffered file would hold the last partial block and fail again on close.
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def seeded(root: Path) -> Store:
    store = Store(root / "store")
    col = store.create("c", dim=DIM, dtype="f32")
    col.write([f"k{i}" for i in range(500)], clustered(500, DIM, seed=1), mode="build")
    return store


def attempt(call: Any) -> str:
    try:
        call()
    except DiskFullError as exc:
        return f"DiskFullError: {exc}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def python_api(root: Path) -> dict[str, Any]:
    store = seeded(root)
    col = store.open("c")
    directory = col.directory
    before = {"generation": col.generation, "files": files(directory)}
    filler = fill(root, leave=40_000)
    more = clustered(4000, DIM, seed=2)
    outcome: dict[str, Any] = {"before": before}
    outcome["write"] = attempt(lambda: col.write([f"n{i}" for i in range(4000)], more, mode="upsert"))
    outcome["after_write"] = {"generation": store.open("c").generation, "files": files(directory)}
    outcome["rebuild"] = attempt(lambda: col.rebuild())
    outcome["after_rebuild"] = {"generation": store.open("c").generation, "files": files(directory)}
    col.init("upsert")
    outcome["ingest_batch"] = attempt(lambda: col.ingest_batch([f"s{i}" for i in range(4000)], more))
    outcome["staged_after_ingest_batch"] = col.status().staged_count
    outcome["new_collection"] = attempt(
        lambda: ingest(
            pl.DataFrame({"id": [str(i) for i in range(4000)], "v": more.tolist()}),
            "fresh",
            store=store,
            vector_col="v",
            primary_key="id",
        )
    )
    outcome["fresh_exists"] = (store.root / "fresh" / "default").exists()
    outcome["search"] = [h.id for h in col.search(clustered(500, DIM, seed=1)[7], 1)]
    filler.unlink()
    col.abort()
    outcome["write_after_freeing"] = attempt(lambda: col.write([f"n{i}" for i in range(4000)], more, mode="upsert"))
    outcome["live_after_freeing"] = len(store.open("c"))
    return outcome


def cli(root: Path) -> dict[str, Any]:
    vectors = clustered(4000, DIM, seed=3)
    rows = ["id,v"] + [f'{i},"{json.dumps(v.tolist())}"' for i, v in enumerate(vectors)]
    small, big = Path(f"/tmp/disk-full-{os.getpid()}-1.csv"), Path(f"/tmp/disk-full-{os.getpid()}-2.csv")
    small.write_text("\n".join(rows[:101]) + "\n")
    big.write_text("\n".join(rows) + "\n")
    store = Store(root / "store")
    ingest(small, "t", store=store, vector_col="v", primary_key="id")
    before = files(store.root / "t" / "default")
    fill(root, leave=40_000)
    outcome: dict[str, Any] = {"before": before}
    for collection in ("t", "new"):
        proc = subprocess.run(
            [sys.executable, "-m", "brinicle_etl.cli", "ingest", str(big), "-c", collection, "--vector-col", "v", "-q"],
            cwd=REPO,
            env={**os.environ, "BRINICLE_STORE": str(store.root)},
            capture_output=True,
            text=True,
        )
        outcome[collection] = {"code": proc.returncode, "stderr": proc.stderr}
    outcome["after"] = files(store.root / "t" / "default")
    outcome["new_exists"] = (store.root / "new").exists() and any((store.root / "new").iterdir())
    small.unlink()
    big.unlink()
    return outcome


def http(root: Path) -> dict[str, Any]:
    import httpx

    store = seeded(root)
    outcome: dict[str, Any] = {}
    with running_server(store.root) as (url, _proc), httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/init", json={"index_name": "c", "mode": "upsert"}).status_code == 200
        vectors = clustered(4000, DIM, seed=4)
        body = b"".join(f"h{i}".encode().ljust(32, b"\0") + v.astype("<f4").tobytes() for i, v in enumerate(vectors))
        assert c.post("/ingest/batch", params={"index_name": "c"}, content=body[: 2000 * (32 + 4 * DIM)]).is_success
        filler = fill(root, leave=40_000)
        r = c.post("/ingest/batch", params={"index_name": "c"}, content=body)
        outcome["batch"] = (r.status_code, r.json())
        outcome["staged"] = c.get("/indexes/c/status").json()["staged_count"]
        r = c.post(
            "/build_ingest_data/",
            data={"dim": "128", "seed": "1", "depth": "2", "db_name": "up", "template_name": "t"},
            files={"file": ("rows.csv", b"id,title\n" + b"".join(b"%d,title %d\n" % (i, i) for i in range(9000)))},
        )
        outcome["upload"] = (r.status_code, r.json())
        outcome["uploads_left"] = files(store.config_dir / "uploads") if (store.config_dir / "uploads").exists() else []
        r = c.post("/finalize", json={"index_name": "c"})
        outcome["finalize"] = (r.status_code, r.json())
        outcome["files"] = files(store.root / "c" / "default")
        status = c.get("/indexes/c/status").json()
        outcome["after_finalize"] = {"live": status["live_count"], "staged": status["staged_count"]}
        filler.unlink()
        r = c.post("/finalize", json={"index_name": "c"})
        outcome["finalize_after_freeing"] = r.status_code
        outcome["live_after_freeing"] = c.get("/indexes/c/status").json()["live_count"]
    return outcome


if __name__ == "__main__":
    scenario, directory = sys.argv[1], Path(sys.argv[2])
    result = {"python": python_api, "cli": cli, "http": http}[scenario](directory)
    print(json.dumps(result))
