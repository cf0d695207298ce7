"""/docs in a real headless Chromium with no way out but loopback: the page renders offline.

Chromium (the Debian package; `make test` installs it) gets a proxy that does not exist for
every address but loopback, so any asset fetched from a CDN would fail. The rendered page
must show the API's operations, and a screenshot is kept for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.server_process import running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(os.environ.get("BRINICLE_DOCS_SCREENSHOT", "/tmp/brinicle-docs.png"))


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # everything but loopback goes to a proxy that is not there: no CDN can answer
        "--proxy-server=http://127.0.0.1:9",
        "--virtual-time-budget=15000",
        "--window-size=1280,1400",
    ]
    return subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium; `make test` installs it)")
def test_docs_render_without_internet(tmp_path: Path) -> None:
    with running_server(tmp_path / "store") as (url, _proc):
        dom = chromium(url + "/docs", tmp_path / "profile", "--dump-dom")
        assert dom.returncode == 0, dom.stderr
        page = dom.stdout
        # Swagger UI ran (its scripts came from the server) and rendered the spec's operations
        assert 'class="swagger-ui"' in page
        for summary in ("Create an index", "Search with one float32 query vector", "Stage many vectors"):
            assert summary in page, summary
        assert "Failed to load API definition" not in page
        shot = chromium(url + "/docs", tmp_path / "profile2", f"--screenshot={SCREENSHOT}")
        assert shot.returncode == 0, shot.stderr
        assert SCREENSHOT.stat().st_size > 20_000  # a rendered page, not a blank one
