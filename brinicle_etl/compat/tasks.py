"""Upsertion tasks: items embedded and upserted into a collection in the background, durably.

A task is accepted by writing its items and record under ``<store>/.brinicle/tasks/<id>/``
and syncing them, so a restart loses nothing accepted. A worker (one per store: it holds a
lock file) runs tasks in order of arrival, batch by batch; each batch is one ingest whose
commit also records, in the collection's own metadata, how many batches of the task are
done. That makes resuming after a crash exact: no item is lost or applied twice.

Status: ``pending`` -> ``running`` -> ``succeeded`` | ``partially_failed`` (some items were
invalid; ``failed_items`` lists them) | ``failed`` | ``cancelled``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from brinicle_etl._fs import atomic_write_bytes
from brinicle_etl.errors import BrinicleError, ConfigError, ConflictError, NotFoundError, TaskStateError
from brinicle_etl.pipeline.options import IngestOptions
from brinicle_etl.pipeline.run import run_ingest
from brinicle_etl.store import Store
from brinicle_etl.types import check_name, is_name

__all__ = ["TaskItem", "TaskRecord", "TaskStatus", "TaskStore", "TaskWorker", "default_index"]

_BATCH_OPTIONS = IngestOptions.of(
    mode="upsert", on_conflict="update", primary_key="object_id", semantic_fields=["text"], wait=True
)
"""Every batch of every task: items replace what their object_id held."""

TaskStatus = Literal["pending", "running", "succeeded", "partially_failed", "failed", "cancelled"]
TASK_STATUSES: tuple[str, ...] = ("pending", "running", "succeeded", "partially_failed", "failed", "cancelled")
PROGRESS_KEY = "upsertion_tasks"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_index(model_id: str) -> str:
    """The collection a task writes to when it names none: the model id as a collection name."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model_id)[:64] or "embeddings"


@dataclass(frozen=True, kw_only=True)
class TaskItem:
    object_id: str
    payload: dict[str, Any] | None = None
    item_info: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class TaskRecord:
    """What the API shows of a task. ``batches_done`` counts committed batches."""

    id: str
    embedding_model_id: str
    index_name: str
    status: TaskStatus
    created_at: str
    updated_at: str
    item_count: int
    processed_count: int = 0
    batches_done: int = 0
    failed_items: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    cancel_requested: bool = False
    body_hash: str = ""

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("body_hash")
        data.pop("cancel_requested")
        return data


def body_hash(model_id: str, items: Sequence[Mapping[str, Any]], index_name: str | None) -> str:
    canonical = json.dumps({"m": model_id, "i": list(items), "x": index_name}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def item_text(payload: Mapping[str, Any]) -> str:
    """The text embedded for an item: its ``text`` field, else its string fields one per line."""
    text = payload.get("text")
    if isinstance(text, str):
        return text
    return "\n".join(str(v) for k, v in payload.items() if isinstance(v, str | int | float) and not isinstance(v, bool))


class TaskStore:
    """Task records and items on disk, under the store's ``.brinicle/tasks``."""

    def __init__(self, store: Store):
        self.store = store
        self.root = store.config_dir / "tasks"
        self._lock = threading.Lock()

    def _dir(self, task_id: str) -> Path:
        return self.root / check_name(task_id, "task_id")

    def _save(self, record: TaskRecord) -> None:
        atomic_write_bytes(self._dir(record.id) / "task.json", json.dumps(asdict(record), indent=1).encode())

    def get(self, task_id: str) -> TaskRecord:
        try:
            data = json.loads((self._dir(task_id) / "task.json").read_text())
        except FileNotFoundError:
            raise NotFoundError(f"upsertion task {task_id!r} not found") from None
        return TaskRecord(**data)

    def items(self, task_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads((self._dir(task_id) / "items.json").read_text())
        return items

    def submit(
        self,
        *,
        embedding_model_id: str,
        items: Sequence[Mapping[str, Any]],
        task_id: str | None = None,
        index_name: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Accept a task durably; returns (record, created). The same ``task_id`` with the same
        body returns the existing task; with a different body it is a ConflictError."""
        self.store.models.get(embedding_model_id)  # unknown model: NotFoundError now, not later
        if task_id is not None:
            check_name(task_id, "task_id")
        target = index_name or default_index(embedding_model_id)
        self.store.canonical(target)  # a name that could leave the store is refused here
        digest = body_hash(embedding_model_id, items, index_name)
        with self._lock:
            if task_id is None:
                task_id = f"task-{int(time.time() * 1000)}-{digest[:12]}"
            directory = self._dir(task_id)
            if (directory / "task.json").exists():
                existing = self.get(task_id)
                if existing.body_hash != digest:
                    raise ConflictError(
                        f"task {task_id!r} exists with a different body; use a new task_id", keys=[task_id]
                    )
                return existing, False
            now = _now()
            record = TaskRecord(
                id=task_id,
                embedding_model_id=embedding_model_id,
                index_name=target,
                status="pending",
                created_at=now,
                updated_at=now,
                item_count=len(items),
                body_hash=digest,
            )
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(directory / "items.json", json.dumps(list(items)).encode())
            self._save(record)  # last: a task exists once its record does
        return record, True

    def update(self, task_id: str, **changes: Any) -> TaskRecord:
        with self._lock:
            record = replace(self.get(task_id), **changes, updated_at=_now())
            self._save(record)
        return record

    def all(self) -> list[TaskRecord]:
        if not self.root.is_dir():
            return []
        records = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir() and is_name(entry.name) and os.path.exists(os.path.join(entry.path, "task.json")):
                records.append(self.get(entry.name))
        return sorted(records, key=lambda r: (r.created_at, r.id))

    def list(self, *, offset: int = 0, limit: int = 100, status: str | None = None) -> tuple[list[TaskRecord], int]:
        if status is not None and status not in TASK_STATUSES:
            raise ConfigError(f"status must be one of {', '.join(repr(s) for s in TASK_STATUSES)}; got {status!r}")
        records = [r for r in self.all() if status is None or r.status == status]
        return records[offset : offset + limit], len(records)

    def restart(self, task_id: str) -> TaskRecord:
        record = self.get(task_id)
        if record.status not in ("failed", "cancelled", "partially_failed"):
            raise TaskStateError(
                f"task {task_id!r} is {record.status}; only failed or cancelled tasks can be restarted"
            )
        return self.update(
            task_id, status="pending", error=None, failed_items=[], cancel_requested=False, processed_count=0
        )

    def cancel(self, task_id: str) -> TaskRecord:
        record = self.get(task_id)
        if record.status == "pending":
            return self.update(task_id, status="cancelled", cancel_requested=True)
        if record.status == "running":
            return self.update(task_id, cancel_requested=True)
        raise TaskStateError(f"task {task_id!r} is {record.status}; only pending or running tasks can be cancelled")


class TaskWorker:
    """Runs tasks in the background, one at a time, in batches. At most one worker per store."""

    def __init__(self, tasks: TaskStore, *, batch_size: int = 512, poll_seconds: float = 0.2):
        self.tasks = tasks
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None

    def start(self) -> bool:
        """Start unless another process already runs this store's worker; returns whether it started."""
        self.tasks.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.tasks.root / ".worker.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self._thread = threading.Thread(target=self._loop, name="brinicle-upsertion-tasks", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def notify(self) -> None:
        """A task was submitted or restarted: look for work now."""
        self._wake.set()

    def _next(self) -> str | None:
        runnable = [r for r in self.tasks.all() if r.status in ("running", "pending")]
        # Interrupted ("running") tasks first: they were accepted earlier.
        runnable.sort(key=lambda r: (r.status != "running", r.created_at, r.id))
        return runnable[0].id if runnable else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            task_id = self._next()
            if task_id is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self.run_task(task_id)

    def run_task(self, task_id: str) -> TaskRecord:
        """Run (or resume) one task to its end, or until cancelled or stopped."""
        record = self.tasks.update(task_id, status="running")
        try:
            items = self.tasks.items(task_id)
            valid, failed = self._validate(items)
            store = self.tasks.store
            collection = store.canonical(record.index_name)
            done = self._batches_done(store, collection, task_id)
            batches = [valid[i : i + self.batch_size] for i in range(0, len(valid), self.batch_size)]
            processed = sum(len(b) for b in batches[:done])
            self.tasks.update(task_id, batches_done=done, processed_count=processed, failed_items=failed)
            for number in range(done, len(batches)):
                current = self.tasks.get(task_id)
                if current.cancel_requested or self._stop.is_set():
                    status: TaskStatus = "cancelled" if current.cancel_requested else "running"
                    return self.tasks.update(task_id, status=status)
                batch = batches[number]
                self._apply(store, collection, record.embedding_model_id, task_id, number + 1, batch)
                processed += len(batch)
                self.tasks.update(task_id, batches_done=number + 1, processed_count=processed)
            if failed and not valid:
                final: TaskStatus = "failed"
            else:
                final = "partially_failed" if failed else "succeeded"
            error = f"{len(failed)} of {len(items)} items were not applied (see failed_items)" if failed else None
            return self.tasks.update(task_id, status=final, error=error)
        except BrinicleError as exc:
            return self.tasks.update(task_id, status="failed", error=str(exc))
        except Exception as exc:  # keep the worker alive; the task says what went wrong
            return self.tasks.update(task_id, status="failed", error=f"unexpected {type(exc).__name__}: {exc}")

    @staticmethod
    def _validate(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(items to apply, failed items). Of items repeating an ``object_id`` the last is applied,
        as an upsert would, and the earlier ones are reported as failed, never dropped silently."""
        latest: dict[str, tuple[int, dict[str, Any]]] = {}
        failed: list[dict[str, Any]] = []
        for position, item in enumerate(items):
            object_id = item.get("object_id") if isinstance(item, dict) else None
            payload = item.get("payload") if isinstance(item, dict) else None
            reason = None
            if not isinstance(object_id, str) or not object_id:
                reason = "object_id must be a non-empty string"
            elif payload is not None and not isinstance(payload, dict):
                reason = "payload must be an object"
            elif not item_text(payload or {}).strip():
                reason = "payload has no text to embed (give a 'text' field or string fields)"
            elif item.get("item_info") is not None and not isinstance(item.get("item_info"), dict):
                reason = "item_info must be an object"
            if reason is not None:
                failed.append({"position": position, "object_id": object_id, "error": reason})
                continue
            assert isinstance(object_id, str)
            earlier = latest.get(object_id)
            if earlier is not None:
                failed.append(
                    {
                        "position": earlier[0],
                        "object_id": object_id,
                        "error": f"object_id repeats at position {position}, which was applied instead",
                    }
                )
            latest[object_id] = (position, item)
        failed.sort(key=lambda f: f["position"])
        return [item for _position, item in latest.values()], failed

    @staticmethod
    def _batches_done(store: Store, collection: str, task_id: str) -> int:
        if not store.exists(collection):
            return 0
        progress = store.open(collection).meta.get(PROGRESS_KEY, {})
        return int(progress.get(task_id, 0))

    @staticmethod
    def _apply(
        store: Store, collection: str, model_id: str, task_id: str, number: int, batch: Sequence[Mapping[str, Any]]
    ) -> None:
        frame = pl.DataFrame(
            {
                "object_id": [i["object_id"] for i in batch],
                "text": [item_text(i.get("payload") or {}) for i in batch],
                "payload": [json.dumps(i.get("payload") or {}, sort_keys=True) for i in batch],
                "item_info": [json.dumps(i.get("item_info") or {}, sort_keys=True) for i in batch],
            }
        )
        progress = dict(store.open(collection).meta.get(PROGRESS_KEY, {})) if store.exists(collection) else {}
        progress[task_id] = number
        if len(progress) > 1000:  # keep the newest entries; finished tasks no longer need theirs
            progress = dict(list(progress.items())[-1000:])
        # The batch and the task's progress are published in one commit: a crash repeats a batch, never skips one.
        schema = replace(_BATCH_OPTIONS.schema, model=model_id)
        run_ingest(
            frame,
            collection,
            store=store,
            options=replace(_BATCH_OPTIONS, schema=schema, meta={PROGRESS_KEY: progress}),
        )
