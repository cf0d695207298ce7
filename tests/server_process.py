"""Run `brinicle-etl serve` as a real process on 127.0.0.1 for the HTTP tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_answering(
    proc: subprocess.Popen, url: str, *, seconds: float, log: Callable[[], str], headers: dict[str, str] | None = None
) -> None:
    """Until a GET of ``url`` gets any answer; the process's log if it exits first."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited before {url} answered: {log()[-2000:]}")
        try:
            httpx.get(url, timeout=1, headers=headers)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not ended within 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_server(
    store: Path | str, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    # The server's log goes to a file: a pipe nobody reads would fill up and stall the server.
    log = tempfile.NamedTemporaryFile(prefix="brinicle-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "brinicle_etl.cli", "serve", "--store", str(store), "--port", str(port), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        headers = {"X-API-Key": (env or {}).get("TEST_KEY", "")}
        wait_until_answering(proc, url + "/", seconds=30, log=lambda: server_log(proc), headers=headers)
        yield url, proc
    finally:
        stop(proc)
        Path(log.name).unlink(missing_ok=True)


def server_log(proc: subprocess.Popen) -> str:
    """What the server wrote to stderr so far."""
    path: Path = proc.log_path  # type: ignore[attr-defined]
    return path.read_text(errors="replace") if path.exists() else ""


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")
