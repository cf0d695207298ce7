"""A full disk, for real: the store on a 4 MB tmpfs in a private mount namespace.

Each scenario (tests/disk_full_scenarios.py) runs under ``unshare -rm``, which maps the
user to root in a new user namespace so it may mount a tmpfs that no one else sees.
Whatever runs out of space says so (DiskFullError, ``error: no space left ...``, HTTP 507),
the current generation stays, nothing half-written is left, and acknowledged data is kept.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO


def run_on_small_disk(scenario: str, tmp_path: Path) -> dict[str, Any]:
    mount = tmp_path / "disk"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"needs unshare -rm (user and mount namespaces): {probe.stderr!r}")
    mounted = f"mount -t tmpfs -o size=4m tmpfs {mount}"
    script = f"{mounted} && exec {sys.executable} tests/disk_full_scenarios.py {scenario} {mount}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return result


def full(path: str) -> str:
    return f"no space left on the disk holding {path}: nothing was written there; free some space and retry"


def test_python_api(tmp_path: Path) -> None:
    out = run_on_small_disk("python", tmp_path)
    disk = tmp_path / "disk"
    col = f"{disk}/store/c/default"
    assert out["write"] == "DiskFullError: " + full(col)
    assert out["rebuild"] == "DiskFullError: " + full(col)
    assert out["ingest_batch"] == "DiskFullError: " + full(col)
    assert out["new_collection"] == "DiskFullError: " + full(f"{disk}/store/fresh/default")
    # the generation before stays current, with exactly its files: nothing half-written is left
    assert out["after_write"] == out["before"] and out["after_rebuild"] == out["before"]
    assert out["staged_after_ingest_batch"] == 0 and out["fresh_exists"] is False
    assert out["search"] == ["k7"]
    assert (out["write_after_freeing"], out["live_after_freeing"]) == ("ok", 4500)


def test_cli(tmp_path: Path) -> None:
    out = run_on_small_disk("cli", tmp_path)
    store = tmp_path / "disk" / "store"
    assert out["t"] == {"code": 1, "stderr": f"error: {full(f'{store}/t/default')}\n"}
    assert out["new"] == {"code": 1, "stderr": f"error: {full(f'{store}/new/default')}\n"}
    assert out["after"] == out["before"] and out["new_exists"] is False


def test_http_is_507_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    out = run_on_small_disk("http", tmp_path)
    store = tmp_path / "disk" / "store"
    assert out["batch"] == [507, {"detail": full(f"{store}/c/default")}]
    assert out["upload"] == [507, {"detail": full(f"{store}/.brinicle/uploads")}]
    assert out["finalize"] == [507, {"detail": full(f"{store}/c/default")}]
    assert out["uploads_left"] == []
    assert [f.split("-")[0] for f in out["files"]] == ["main", "manifest.json", "rows", "session.log"]
    # the 2,000 staged rows were acknowledged: a finalize that found no room keeps them
    assert out["after_finalize"] == {"live": 500, "staged": 2000}
    assert (out["finalize_after_freeing"], out["live_after_freeing"]) == (200, 2500)
