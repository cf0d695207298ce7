"""Upsertion tasks in the library: durable records, idempotency, batches, failures, cancel, exact resume."""

from __future__ import annotations

import pytest

from brinicle_etl import ConfigError, ConflictError, NotFoundError, StateError, Store
from brinicle_etl.compat.tasks import PROGRESS_KEY, TaskStore, TaskWorker, default_index, item_text

MODEL = "hash-32"


def items(n: int, prefix: str = "doc") -> list[dict]:
    return [{"object_id": f"{prefix}-{i}", "payload": {"text": f"item number {i} about boots"}} for i in range(n)]


@pytest.fixture
def tasks(store: Store) -> TaskStore:
    return TaskStore(store)


def test_submit_is_durable_and_idempotent(tasks: TaskStore, store: Store) -> None:
    record, created = tasks.submit(embedding_model_id=MODEL, items=items(3), task_id="t1")
    assert (created, record.status, record.item_count, record.index_name) == (True, "pending", 3, "hash_32")
    again, created = TaskStore(store).submit(embedding_model_id=MODEL, items=items(3), task_id="t1")
    assert (created, again.id, again.created_at) == (False, "t1", record.created_at)
    with pytest.raises(ConflictError, match="task 't1' exists with a different body; use a new task_id"):
        tasks.submit(embedding_model_id=MODEL, items=items(4), task_id="t1")
    with pytest.raises(NotFoundError, match="unknown embedding model 'nope'"):
        tasks.submit(embedding_model_id="nope", items=items(1))
    with pytest.raises(ConfigError, match="invalid collection name"):
        tasks.submit(embedding_model_id=MODEL, items=items(1), index_name="../x")
    with pytest.raises(NotFoundError):
        tasks.get("missing")


def test_worker_runs_in_batches_and_upserts(tasks: TaskStore, store: Store) -> None:
    tasks.submit(embedding_model_id=MODEL, items=items(25), task_id="t1", index_name="docs")
    done = TaskWorker(tasks, batch_size=10).run_task("t1")
    assert (done.status, done.processed_count, done.batches_done, done.failed_items) == ("succeeded", 25, 3, [])
    col = store.open("docs")
    assert len(col) == 25
    assert col.meta[PROGRESS_KEY]["t1"] == 3
    row = col.rows(["object_id", "text", "payload"]).to_pylist()[0]
    assert row["payload"] == '{"text": "item number 0 about boots"}'
    updated = [{"object_id": "doc-0", "payload": {"text": "now about tents"}}]
    tasks.submit(embedding_model_id=MODEL, items=updated, task_id="t2", index_name="docs")
    TaskWorker(tasks).run_task("t2")
    assert len(col) == 25
    assert {r["object_id"]: r["text"] for r in col.rows(["object_id", "text"]).to_pylist()}[
        "doc-0"
    ] == "now about tents"


def test_numeric_looking_ids_stay_text(tasks: TaskStore, store: Store) -> None:
    first = [{"object_id": "1207", "payload": {"text": "boots", "size": "42"}}]
    second = [{"object_id": "doc-1", "payload": {"text": "tent"}}]
    tasks.submit(embedding_model_id=MODEL, items=first, task_id="t1", index_name="docs")
    tasks.submit(embedding_model_id=MODEL, items=second, task_id="t2", index_name="docs")
    worker = TaskWorker(tasks)
    assert [worker.run_task(t).status for t in ("t1", "t2")] == ["succeeded", "succeeded"]
    rows = [(r["object_id"], r["payload"]) for r in store.open("docs").rows(["object_id", "payload"]).to_pylist()]
    assert sorted(rows) == [
        ("1207", '{"size": "42", "text": "boots"}'),
        ("doc-1", '{"text": "tent"}'),
    ]


def test_a_repeated_object_id_applies_the_last_and_reports_the_others(tasks: TaskStore, store: Store) -> None:
    repeated = [
        {"object_id": "a", "payload": {"text": "first a"}},
        {"object_id": "b", "payload": {"text": "only b"}},
        {"object_id": "a", "payload": {"text": "second a"}},
        {"object_id": "a", "payload": {"text": "third a"}},
    ]
    tasks.submit(embedding_model_id=MODEL, items=repeated, task_id="repeats", index_name="rep")
    done = TaskWorker(tasks).run_task("repeats")
    assert (done.status, done.error) == ("partially_failed", "2 of 4 items were not applied (see failed_items)")
    assert done.failed_items == [
        {"position": 0, "object_id": "a", "error": "object_id repeats at position 2, which was applied instead"},
        {"position": 2, "object_id": "a", "error": "object_id repeats at position 3, which was applied instead"},
    ]
    rows = {r["object_id"]: r["text"] for r in store.open("rep").rows(["object_id", "text"]).to_pylist()}
    assert rows == {"a": "third a", "b": "only b"}


@pytest.mark.parametrize("task_id", ["..", ".", "../../etc", "/tmp/x", "a/b", "x" * 65, "a\0b", "", "-x", "a.b"])
def test_task_ids_that_are_not_names_are_refused_everywhere(tasks: TaskStore, task_id: str) -> None:
    message = "invalid task_id"
    with pytest.raises(ConfigError, match=message):
        tasks.submit(embedding_model_id=MODEL, items=items(1), task_id=task_id)
    for call in (tasks.get, tasks.cancel, tasks.restart):
        with pytest.raises(ConfigError, match=message):
            call(task_id)
    assert not (tasks.root / "task.json").exists() and not (tasks.root.parent / "task.json").exists()


def test_bad_items_are_listed_and_the_rest_applied(tasks: TaskStore, store: Store) -> None:
    bad = [
        {"payload": {"text": "no id"}},
        {"object_id": "", "payload": {"text": "empty id"}},
        {"object_id": "x", "payload": "not an object"},
        {"object_id": "y", "payload": {"count": True}},
        {"object_id": "z", "payload": {"text": "fine"}, "item_info": ["not", "an", "object"]},
    ]
    tasks.submit(embedding_model_id=MODEL, items=items(2) + bad, task_id="mixed")
    done = TaskWorker(tasks).run_task("mixed")
    assert done.status == "partially_failed"
    assert done.error == "5 of 7 items were not applied (see failed_items)"
    assert [(f["position"], f["error"]) for f in done.failed_items] == [
        (2, "object_id must be a non-empty string"),
        (3, "object_id must be a non-empty string"),
        (4, "payload must be an object"),
        (5, "payload has no text to embed (give a 'text' field or string fields)"),
        (6, "item_info must be an object"),
    ]
    assert len(store.open(default_index(MODEL))) == 2
    tasks.submit(embedding_model_id=MODEL, items=bad, task_id="all-bad")
    assert TaskWorker(tasks).run_task("all-bad").status == "failed"


def test_cancel_stops_between_batches_and_restart_finishes(tasks: TaskStore, store: Store) -> None:
    tasks.submit(embedding_model_id=MODEL, items=items(30), task_id="long", index_name="docs")
    worker = TaskWorker(tasks, batch_size=10)
    original = worker._apply

    def apply_then_cancel(*args: object) -> None:
        original(*args)  # type: ignore[arg-type]
        tasks.cancel("long")  # a user cancels while the first batch runs

    worker._apply = apply_then_cancel  # type: ignore[method-assign]
    stopped = worker.run_task("long")
    assert (stopped.status, stopped.batches_done, stopped.processed_count) == ("cancelled", 1, 10)
    assert len(store.open("docs")) == 10, "the index holds exactly the committed batches"
    with pytest.raises(StateError, match="only pending or running tasks can be cancelled"):
        tasks.cancel("long")
    assert tasks.restart("long").status == "pending"
    finished = TaskWorker(tasks, batch_size=10).run_task("long")
    assert (finished.status, finished.batches_done) == ("succeeded", 3)
    assert len(store.open("docs")) == 30
    with pytest.raises(StateError, match="only failed or cancelled tasks can be restarted"):
        tasks.restart("long")


def test_resume_after_a_crash_applies_each_batch_once(tasks: TaskStore, store: Store) -> None:
    """The collection's own commit records progress, so a record that lags behind it is corrected."""
    tasks.submit(embedding_model_id=MODEL, items=items(30), task_id="crash", index_name="docs")
    worker = TaskWorker(tasks, batch_size=10)
    calls: list[int] = []
    original = worker._apply

    def counting(*args: object) -> None:
        calls.append(args[4])  # type: ignore[arg-type]
        original(*args)  # type: ignore[arg-type]

    worker._apply = counting  # type: ignore[method-assign]
    worker._apply(store, "docs/default", MODEL, "crash", 1, items(30)[:10])
    # the process died after the commit, before the task record was updated
    tasks.update("crash", status="running", batches_done=0)
    generation = store.open("docs").generation
    done = worker.run_task("crash")
    assert done.status == "succeeded"
    assert calls == [1, 2, 3], "batch 1 was not applied again"
    assert store.open("docs").generation == generation + 2
    assert len(store.open("docs")) == 30


def test_list_and_text(tasks: TaskStore) -> None:
    for i in range(3):
        tasks.submit(embedding_model_id=MODEL, items=items(1), task_id=f"l{i}")
    TaskWorker(tasks).run_task("l1")
    page, total = tasks.list(offset=1, limit=1)
    assert ([r.id for r in page], total) == (["l1"], 3)
    assert [r.id for r in tasks.list(status="pending")[0]] == ["l0", "l2"]
    with pytest.raises(ConfigError, match="status must be one of 'pending', 'running'"):
        tasks.list(status="done")
    assert item_text({"title": "Boots", "price": 3, "tags": ["x"], "ok": True}) == "Boots\n3"
    assert default_index("all-MiniLM-L6-v2") == "all_MiniLM_L6_v2"
