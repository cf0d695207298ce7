"""A real S3-compatible server for the object-storage tests: moto's, as its own process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.server_process import free_port, stop, wait_until_answering

REGION = "us-east-1"
BUCKET = "brinicle-tests"
# A credential no message, log line or error may ever show.
SECRET = "s3cr3t-NEVER-SHOWN-0123456789"
ACCESS_KEY = "AKIATESTNOTSHOWN01"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    log_path: str

    def options(self) -> dict[str, Any]:
        """``storage_options`` for a Store on this server."""
        return {
            "endpoint": self.endpoint,
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET,
            "region": REGION,
        }

    def env(self) -> dict[str, str]:
        """The same, as the standard variables a process (the CLI, the server) reads."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": REGION,
        }

    def new_url(self) -> str:
        """A fresh, empty prefix in the test bucket."""
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def running_s3() -> Iterator[S3Server]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(proc, endpoint + "/moto-api/", seconds=60, log=Path(log.name).read_text)
        # obstore cannot create buckets; S3's REST call is one PUT.
        httpx.put(f"{endpoint}/{BUCKET}", timeout=10).raise_for_status()
        yield S3Server(endpoint, log.name)
    finally:
        stop(proc)
        Path(log.name).unlink(missing_ok=True)
