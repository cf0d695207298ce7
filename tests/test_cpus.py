import os
import subprocess
import sys

import pytest

from brinicle_etl._cpus import usable_cpus


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs a CPU set")
def test_a_process_pinned_to_one_core_counts_one() -> None:
    pinned = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from brinicle_etl._cpus import usable_cpus; print(usable_cpus())"
    )
    out = subprocess.run([sys.executable, "-c", pinned], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_without_a_cpu_set_the_machines_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1
