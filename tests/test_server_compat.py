"""brinicle users point their existing tools at us: brinicle's own client, the API reference's curl
sequence, and API keys."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import clustered, exact_knn
from tests.server_process import running_server

brinicle_client = pytest.importorskip("brinicle.ref.client")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("compat") / "store") as (base, _proc):
        yield base


def test_brinicles_own_client_runs_a_full_flow(url: str) -> None:
    dim = 16
    x = clustered(500, dim, seed=12, normalize=False)
    ids = [f"item-{i}" for i in range(500)]
    with brinicle_client.VectorEngineClient(url) as c:
        created = c.create_index("catalog", dim=dim, delta_ratio=0.2, M=16, ef_construction=200, ef_search=64)
        assert created == {"success": True, "message": "Index 'catalog' created successfully", "index_name": "catalog"}
        assert c.list_indexes() == {"indexes": ["catalog"], "count": 1}
        assert c.init("catalog", "build")["success"] is True
        c.ingest("catalog", ids[0], x[0])
        assert c.ingest_batch_binary("catalog", ids[1:], x[1:]) == {"success": True, "count": 499}
        # one build thread: the same graph every run (with two, which ties win varies with the load)
        assert c.finalize("catalog", build_params={"M": 16, "build_n_threads": 1}, optimize=False)["success"] is True
        truth = exact_knn(x, x[40:41], 10, "l2sq")[0]
        found = c.search("catalog", x[40], k=10)
        assert found[0] == "item-40"
        assert len(set(found) & {ids[j] for j in truth}) >= 9
        assert c.delete_items("catalog", ["item-40", "nope"], return_not_found=True) == {
            "deleted_count": 1,
            "not_found": ["nope"],
        }
        assert "item-40" not in c.search("catalog", x[40], k=10)
        assert c.get_status("catalog")["needs_rebuild"] is False
        assert c.rebuild("catalog", build_params={"ef_search": 80})["success"] is True
        assert c.optimize("catalog")["success"] is True
        status = c.get_status("catalog")
        assert (status["index_name"], status["dim"], status["has_index"], status["live_count"]) == (
            "catalog",
            dim,
            True,
            499,
        )
        assert status["params"]["ef_search"] == 80
        assert c.delete_index("catalog")["success"] is True
        assert c.load_index("catalog")["success"] is True
        assert c.search("catalog", x[41], k=1) == ["item-41"]


def test_the_api_reference_curl_sequence(url: str) -> None:
    """The curl commands of the API reference, verbatim but for the port."""
    commands = [
        f"curl -s -w '%{{http_code}}' {url}/",
        f"""curl -s -w '%{{http_code}}' -X POST {url}/indexes \\
  -H "Content-Type: application/json" \\
  -d '{{"index_name": "test", "dim": 128, "delta_ratio": 0.1}}'""",
        f"""curl -s -w '%{{http_code}}' -X POST {url}/init \\
  -H "Content-Type: application/json" \\
  -d '{{"index_name": "test", "mode": "build"}}'""",
        f"""curl -s -w '%{{http_code}}' -X POST {url}/ingest \\
  -H "Content-Type: application/json" \\
  -d '{{"index_name": "test", "external_id": "v1", "vector": [0.1, 0.2, 0.3]}}'""",
        f"""curl -s -w '%{{http_code}}' -X POST {url}/finalize \\
  -H "Content-Type: application/json" \\
  -d '{{"index_name": "test", "optimize": true}}'""",
    ]
    outcomes = []
    for command in commands:
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
        body, status = out[:-3], int(out[-3:])
        outcomes.append((status, json.loads(body)))
    assert outcomes[0][0] == 200
    assert outcomes[1] == (200, {"success": True, "message": "Index 'test' created successfully", "index_name": "test"})
    assert outcomes[2][0] == 200
    # The reference ingests a 3-d vector into a 128-d index: refused, as brinicle refuses it.
    assert outcomes[3] == (400, {"detail": "ingest: dimension mismatch: vector has 3 values, the collection 128"})
    assert outcomes[4] == (
        200,
        {"success": True, "message": "Finalized ingest for index 'test' (optimize=true)", "index_name": "test"},
    )


def test_api_keys_guard_every_endpoint(tmp_path: Path) -> None:
    with running_server(
        tmp_path / "keyed", "--api-key", "s3cret", "--api-key", "other", env={"TEST_KEY": "s3cret"}
    ) as (base, _proc):
        for path in ("/", "/indexes", "/docs", "/openapi.json", "/indexes/x/status"):
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
                r = httpx.get(base + path, headers=headers)
                assert (r.status_code, r.json()) == (401, {"detail": "missing or invalid API key"}), (path, headers)
        r = httpx.post(base + "/indexes", json={"index_name": "k", "dim": 4})
        assert r.status_code == 401
        for key in ("s3cret", "other"):
            assert httpx.get(base + "/indexes", headers={"X-API-Key": key}).status_code == 200
        r = httpx.post(base + "/search.bin", params={"index_name": "k"}, content=np.ones(4, "<f4").tobytes())
        assert r.status_code == 401
