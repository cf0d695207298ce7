"""Schema-based fuzzing: schemathesis against a real server, from the server's own /openapi.json.

Every operation gets generated requests, valid and invalid, with and without an API key.
No response may be a 5xx, and every response must match what the spec documents for it
(status code, content type, body schema); no file outside the store may be read or written
(files planted beside the store must stay as they were). The default suite runs 25
examples per operation and mode; the slow suite 500 (over 50,000 requests).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from brinicle_etl import Store, ingest
from brinicle_etl.embed import ModelSpec
from brinicle_etl.pipeline import model_registry
from tests.server_process import running_server, server_log

KEY = "fuzz-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
CALLS = {"count": 0}


def seeded_store(path: Path) -> Path:
    store = Store(path)
    # hashing models for every dimension the CSV endpoint accepts cheaply: no torch in the fuzz run
    for dim in (128, 256, 384, 512):
        model_registry(store).register(ModelSpec(id=f"hash{dim}", dim=dim, kind="hash"))
    frame = pl.DataFrame({"sku": ["a", "b", "c"], "title": ["boots", "tent", "stove"], "price": [1.0, 2.0, 3.0]})
    ingest(frame, "shop/products", store=store, model="hash-32")
    col = store.create("idx", dim=4, metric="l2sq")
    col.write(["x", "y"], [[0, 0, 0, 1], [0, 0, 1, 0]], mode="build")
    col.init("upsert")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("fuzz")
    store = seeded_store(root / "store")
    planted = {root / "task.json": '{"id": "planted"}', root / "outside" / "manifest.json": "{}"}
    for path, text in planted.items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    before = sorted(p.relative_to(root) for p in root.rglob("*") if not p.is_relative_to(store))
    args = ("--upload-idle-seconds", "5", "--writer-timeout", "10", "--max-upload-mb", "4")
    with running_server(store, *args) as (open_url, open_proc):
        with running_server(store, *args, "--api-key", KEY, env={"TEST_KEY": KEY}) as (keyed_url, keyed_proc):
            yield open_url, keyed_url
        for proc in (open_proc, keyed_proc):
            assert "Traceback" not in server_log(proc), server_log(proc)
    assert sorted(p.relative_to(root) for p in root.rglob("*") if not p.is_relative_to(store)) == before
    assert all(path.read_text() == text for path, text in planted.items())
    print(f"\nfuzz: {CALLS['count']} requests, none answered 5xx or off the spec")


@pytest.fixture(scope="module")
def api(server: tuple[str, str]) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(server[0] + "/openapi.json")
    schema.config.generation.update(allow_x00=True)
    return schema


def operations() -> list[tuple[str, str]]:
    """Every documented operation, read from the app itself (so a new route is fuzzed too)."""
    from brinicle_etl.server import create_app

    spec = create_app(Path("unused-store")).openapi()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


MODES = pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
OPERATIONS = pytest.mark.parametrize(("method", "path"), operations())


@MODES
@OPERATIONS
def test_no_5xx_and_every_answer_is_documented(
    api: schemathesis.BaseSchema, server: tuple[str, str], method: str, path: str, mode: GenerationMode
) -> None:
    fuzz(api, server, method, path, mode, examples=25)


@pytest.mark.slow
@MODES
@OPERATIONS
def test_no_5xx_and_every_answer_is_documented_long(
    api: schemathesis.BaseSchema, server: tuple[str, str], method: str, path: str, mode: GenerationMode
) -> None:
    fuzz(api, server, method, path, mode, examples=500)


def fuzz(
    api: schemathesis.BaseSchema, server: tuple[str, str], method: str, path: str, mode: GenerationMode, examples: int
) -> None:
    open_url, keyed_url = server
    session = requests.Session()  # keep-alive, as real clients do

    @given(case=api[path][method].as_strategy(mode))
    @settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=examples, derandomize=True)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=open_url, session=session, checks=CHECKS, timeout=60)
        # the same request to a server that wants a key: 401 without it, answered as above with it
        refused = case.call(base_url=keyed_url, session=session, timeout=60)
        assert refused.status_code == 401, refused.text
        case.call_and_validate(
            base_url=keyed_url, session=session, headers={"X-API-Key": KEY}, checks=CHECKS, timeout=60
        )
        CALLS["count"] += 3

    try:
        run()
    except Unsatisfiable:
        # no request to this operation can be invalid: it takes nothing, or only free text
        assert (mode, method, path) in NOTHING_TO_BREAK, (method, path)


NOTHING_TO_BREAK = {
    (GenerationMode.NEGATIVE, "GET", "/"),
    (GenerationMode.NEGATIVE, "GET", "/indexes"),
    (GenerationMode.NEGATIVE, "GET", "/indexes/{index_name}/status"),
    (GenerationMode.NEGATIVE, "POST", "/optimize"),
}
