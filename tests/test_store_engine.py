"""The brinicle-compatible VectorEngine, side by side with brinicle's own engine."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import brinicle_etl
from brinicle_etl import EngineError, VectorEngine
from tests.conftest import clustered

brinicle = pytest.importorskip("brinicle")

DIM = 16


def scenario(engine_cls: Callable[..., Any], path: Path, n_shards: int = 1) -> list[object]:
    """A brinicle user's script; returns everything it observed."""
    x = clustered(600, DIM, seed=11, normalize=False)
    seen: list[object] = []
    e = engine_cls(str(path), DIM, delta_ratio=0.2, M=16, ef_construction=200, ef_search=64, n_shards=n_shards)
    seen.append(e.search(x[0], 5))
    e.init("build")
    for i in range(500):
        e.ingest(f"id{i}", x[i])
    e.finalize()
    seen.append(e.search(x[3], 5, 200))
    seen.append([(k, round(d, 3)) for k, d in e.search_with_distance(x[3], 5, 200)])
    e.init("upsert")
    for i in range(500, 600):
        e.ingest(f"id{i - 450}", x[i])  # replaces id50..id149
    e.finalize()
    seen.append(e.search_batch(x[[550, 10]], 5, 200))
    seen.append(e.delete_items(["id1", "nope"], True))
    seen.append(e.delete_items(["id2"]))
    seen.append(e.needs_rebuild())
    e.rebuild_compact()
    seen.append(e.needs_rebuild())
    e.optimize_graph()
    seen.append(e.search(x[1], 3, 200))
    seen.append((e.dim, e.has_index))
    e.close()
    reopened = engine_cls(str(path), 0)
    seen.append(reopened.search(x[4], 3, 200))
    return seen


def same_answers(ours: object, theirs: object, *, rel: float) -> bool:
    """Equal, but for distances within ``rel`` of each other (bf16 vectors give distances to
    about three significant digits)."""
    if isinstance(ours, float) and isinstance(theirs, float):
        return ours == pytest.approx(theirs, rel=rel, abs=rel)
    if isinstance(ours, list | tuple) and isinstance(theirs, list | tuple):
        return len(ours) == len(theirs) and all(same_answers(a, b, rel=rel) for a, b in zip(ours, theirs, strict=True))
    return ours == theirs


@pytest.mark.parametrize("dtype", ["f32", None])
def test_same_script_same_answers_as_brinicle(tmp_path: Path, dtype: str | None) -> None:
    """With ``dtype="f32"`` the same answers to the last digit; by default (bf16, faster) the same
    ids, and distances within 1%."""
    (tmp_path / "theirs").mkdir()
    theirs = scenario(brinicle.VectorEngine, tmp_path / "theirs" / "idx")
    ours = scenario(VectorEngine if dtype is None else partial(VectorEngine, dtype=dtype), tmp_path / "ours")
    if dtype == "f32":
        assert ours == theirs
    else:
        assert VectorEngine(str(tmp_path / "ours"), 0).collection.config.dtype == "bf16"
        assert same_answers(ours, theirs, rel=0.01), (ours, theirs)


def test_an_index_with_shards_answers_as_one(tmp_path: Path) -> None:
    (tmp_path / "theirs").mkdir()
    theirs = scenario(brinicle.VectorEngine, tmp_path / "theirs" / "idx")
    ours = scenario(partial(VectorEngine, dtype="f32"), tmp_path / "ours", n_shards=3)
    assert ours == theirs
    assert VectorEngine(str(tmp_path / "ours"), 0).n_shards == 3
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "shard-0000",
        "shard-0001",
        "shard-0002",
        "sharding.json",
    ]


def test_switching_is_an_import_change(tmp_path: Path) -> None:
    assert brinicle_etl.VectorEngine is VectorEngine
    e = VectorEngine(str(tmp_path / "i"), 4)
    e.init("build")
    e.ingest("a", np.ones(4, np.float32))
    e.finalize(optimize=True, M=24)
    assert e.search(np.ones(4, np.float32)) == ["a"]
    assert e.collection.config.params.M == 24


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be greater than 0 when creating a new index"),
        ({"dim": 4, "delta_ratio": 0.7}, "delta_ratio must be in range (0, 0.5]"),
        ({"dim": 4, "dist_func": "hamming"}, "dist_func must be one of"),
        ({"dim": 4, "M": 1}, "M must be an integer between 2 and 256; got 1"),
    ],
)
def test_constructor_errors_are_value_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        VectorEngine(str(tmp_path / "x"), **kwargs)


def test_state_and_data_errors_are_runtime_errors(tmp_path: Path) -> None:
    e = VectorEngine(str(tmp_path / "i"), 4)
    cases = [
        (lambda: e.ingest("a", np.ones(4, np.float32)), "ingest: no pending ingest session"),
        (lambda: e.finalize(), "finalize: no pending ingest session"),
        (lambda: e.init("replace"), "init(mode): mode must be 'build'|'insert'|'upsert'"),
    ]
    for call, prefix in cases:
        with pytest.raises(RuntimeError) as info:
            call()
        assert str(info.value).startswith(prefix)
        assert isinstance(info.value, EngineError)
    e.init("build")
    with pytest.raises(RuntimeError, match=r"^init: an ingest session is already pending"):
        e.init("build")
    with pytest.raises(RuntimeError, match=r"^ingest: dimension mismatch"):
        e.ingest("a", np.ones(3, np.float32))
    with pytest.raises(RuntimeError, match=r"^ingest: vector contains NaN/Inf at index 1$"):
        e.ingest("a", np.array([0, np.nan, 0, 0], np.float32))
    with pytest.raises(RuntimeError, match=r"^search: dimension mismatch"):
        e.search(np.ones(5, np.float32))
    with pytest.raises(RuntimeError, match=r"^dim mismatch: constructor requested 8, manifest has 4$"):
        VectorEngine(str(tmp_path / "i"), 8)


def test_unlike_brinicle_insert_of_an_existing_id_is_refused(tmp_path: Path) -> None:
    e = VectorEngine(str(tmp_path / "i"), 4)
    e.init("build")
    e.ingest("a", np.ones(4, np.float32))
    e.finalize()
    e.init("insert")
    e.ingest("a", np.full(4, 2, np.float32))
    with pytest.raises(RuntimeError, match="1 id\\(s\\) already exist: 'a'"):
        e.finalize()
    assert e.search(np.ones(4, np.float32), 10) == ["a"]


def test_destroy_removes_the_files(tmp_path: Path) -> None:
    e = VectorEngine(str(tmp_path / "i"), 4)
    e.destroy()
    assert not (tmp_path / "i").exists()
    with pytest.raises(ValueError, match="dim must be greater than 0"):
        VectorEngine(str(tmp_path / "i"))


def session(path: Path, dim: int, prefix: str, vectors: np.ndarray) -> str:
    """One brinicle-style writer: its own engine, init / ingest / finalize."""
    try:
        e = VectorEngine(str(path), dim)
        e.init("insert")
        for i, v in enumerate(vectors):
            e.ingest(f"{prefix}-{i}", v)
        e.finalize()
        e.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_writers_in_other_threads_or_processes_wait_their_turn(tmp_path: Path, workers: str) -> None:
    dim = 8
    path = tmp_path / "shared"
    base = VectorEngine(str(path), dim)
    base.init("build")
    base.ingest_batch([f"base-{i}" for i in range(50)], clustered(50, dim, seed=1))
    base.finalize()
    jobs = [(path, dim, f"w{w}", clustered(15, dim, seed=10 + w)) for w in range(6)]
    if workers == "threads":
        with ThreadPoolExecutor(len(jobs)) as pool:
            outcomes = list(pool.map(lambda job: session(*job), jobs))
    else:
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            outcomes = pool.starmap(session, jobs)
    assert outcomes == ["ok"] * len(jobs)
    assert len(VectorEngine(str(path)).collection) == 50 + 6 * 15


def test_a_writer_past_its_timeout_is_told_and_readers_never_wait(tmp_path: Path) -> None:
    path = str(tmp_path / "i")
    holder = VectorEngine(path, 4)
    holder.init("build")
    holder.ingest("a", np.ones(4, np.float32))
    # another thread's writer waits its turn, and no longer than its timeout
    late = VectorEngine(path, 4, lock_timeout=0.5)
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: outcome.extend(_raised(lambda: late.init("upsert"))))
    started = time.monotonic()
    thread.start()
    thread.join()
    assert 0.4 < time.monotonic() - started < 3
    assert isinstance(outcome[0], EngineError)
    assert "is still locked by another writer" in str(outcome[0]) and "after waiting 0.5 s" in str(outcome[0])
    # a reader does not wait for the session
    t = time.monotonic()
    assert VectorEngine(path, 4).search(np.ones(4, np.float32)) == []
    assert time.monotonic() - t < 0.5
    holder.finalize()
    assert late.search(np.ones(4, np.float32)) == ["a"]


def test_waiting_for_a_session_this_thread_holds_fails_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "i")
    first = VectorEngine(path, 4)
    first.init("build")
    t = time.monotonic()
    with pytest.raises(EngineError, match=r"is held by this same thread .* finalize or close it first"):
        VectorEngine(path, 4).delete_items(["x"])
    assert time.monotonic() - t < 1
    first.close()  # lets others in; the staged session stays on disk
    assert VectorEngine(path, 4).delete_items(["x"], True) == (0, ["x"])


def _raised(call: Callable[[], object]) -> list[BaseException]:
    try:
        call()
    except BaseException as exc:
        return [exc]
    return []
