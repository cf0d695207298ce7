"""Storage use per collection, recorded after every ingest, and quotas per API key.

The ledger is ``<store>/.brinicle/usage.json``. Owners are recorded as a hash of the API key
that first wrote a collection, never the key itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from brinicle_etl._fs import atomic_write_bytes
from brinicle_etl.errors import QuotaExceededError
from brinicle_etl.store import Store

__all__ = ["UsageLedger", "owner_id"]


def owner_id(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class UsageLedger:
    def __init__(self, store: Store):
        self.store = store
        self.path = store.config_dir / "usage.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            yield data
            atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        finally:
            os.close(fd)

    def read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"collections": {}}
        return data

    def record(self, collection: str, *, owner: str | None) -> dict[str, Any]:
        """Record a collection's current size after an ingest; returns its entry."""
        status = self.store.open(collection).status()
        with self._locked() as data:
            entry = data["collections"].setdefault(collection, {"owner": owner, "ingests": 0})
            if entry.get("owner") is None:
                entry["owner"] = owner
            entry.update(
                bytes_on_disk=status.bytes_on_disk,
                rows=status.live_count,
                ingests=entry["ingests"] + 1,
                last_ingest_at=time.time(),
            )
            return dict(entry)

    def used_by(self, owner: str) -> int:
        return sum(e["bytes_on_disk"] for e in self.read()["collections"].values() if e.get("owner") == owner)

    def check(self, owner: str, *, quota_bytes: int, incoming_bytes: int) -> None:
        """Refuse a write that would take ``owner`` past its quota."""
        used = self.used_by(owner)
        if used + incoming_bytes > quota_bytes:
            raise QuotaExceededError(
                f"storage quota exceeded: this API key's collections use {used / 2**20:.1f} MB of "
                f"{quota_bytes / 2**20:.1f} MB and the upload is {incoming_bytes / 2**20:.1f} MB; "
                "delete data or ask for a larger quota"
            )
