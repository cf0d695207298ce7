"""Full scans through ``brinicle_rows``: this checkout against an earlier revision, in one run.

Issue 17 made search fetch its rows in time proportional to k; its goal says full scans must
not get slower for it. This builds the same collection with each version's own code (the
baseline from a ``git worktree`` of ``--baseline``, each version in its own processes), deletes
10% of its rows through a re-ingest with ``sync=True`` (so the scan has tombstones to skip),
and times SQL scans over it, the two versions in turns:

- ``count``: ``SELECT count(*) FROM brinicle_rows(c)``;
- ``group by``: ``SELECT category, avg(price), count(*) FROM brinicle_rows(c) GROUP BY category``;
- ``all rows``: ``SELECT * FROM brinicle_rows(c)``, fetched whole as an Arrow table.

Each turn is a fresh process (a new connection, the row files in the page cache from the turn
before); per query, the best of three runs in the turn, then the median over turns.

Usage: python benchmarks/bench_scan.py [--n 1000000] [--turns 5] [--baseline REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import datasets  # noqa: E402

# The last commit before issue 17 changed how rows are found (7c76b54 is the first that did).
BASELINE = "26d9ccb"
NAME = "bench/scan"
DIM = 8
QUERIES = {
    "count": f"SELECT count(*) FROM brinicle_rows('{NAME}')",
    "group by": f"SELECT category, avg(price), count(*) FROM brinicle_rows('{NAME}') GROUP BY category",
    "all rows": f"SELECT * FROM brinicle_rows('{NAME}')",
}
OUT = HERE / "results" / "scan.md"


def frame(n: int, keep: float = 1.0) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    categories = np.array(["boots", "jackets", "tents", "bags", "stoves", "lamps", "bottles", "packs"])
    data = pl.DataFrame(
        {
            "id": [f"sku-{i}" for i in range(n)],
            "title": [f"product {i}" for i in range(n)],
            "category": categories[rng.integers(0, len(categories), n)],
            "price": rng.uniform(1, 500, n).round(2),
            "in_stock": rng.integers(0, 2, n).astype(bool),
            "v": rng.standard_normal((n, DIM)).astype(np.float32),
        }
    )
    if keep < 1.0:
        data = data.filter(pl.Series(rng.random(n) < keep))
    return data


def child_build(n: int, store: str) -> None:
    from brinicle_etl import ingest
    from brinicle_etl.types import HnswParams

    params = HnswParams(ef_construction=32)
    ingest(frame(n), NAME, store=store, vector_col="v", primary_key="id", params=params)
    ingest(frame(n, keep=0.9), NAME, store=store, vector_col="v", primary_key="id", sync=True)


def child_scan(store: str) -> None:
    import brinicle_etl
    from brinicle_etl.sql import connect

    con = connect(store)
    best: dict[str, float] = {}
    tables = {}
    for name, sql in QUERIES.items():
        times = []
        for _ in range(3):
            t = time.perf_counter()
            tables[name] = con.execute(sql).to_arrow_table()
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    counted = tables["count"].column(0)[0].as_py()
    if counted != tables["all rows"].num_rows:
        raise SystemExit(f"count(*) says {counted} rows, SELECT * gave {tables['all rows'].num_rows}")
    print(json.dumps({"best": best, "live": counted, "code": brinicle_etl.__file__}))


def run_child(code_root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child[0] == "build":
            child_build(int(args.child[1]), args.child[2])
        else:
            child_scan(args.child[1])
        return
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as tmp:
        work = Path(tmp)
        old_root = work / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_root), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            versions = {f"baseline ({args.baseline})": old_root, "this checkout": ROOT}
            stores = {label: work / f"store-{i}" for i, label in enumerate(versions)}
            builds = {}
            for label, root in versions.items():
                t = time.perf_counter()
                run_child(root, "build", str(args.n), str(stores[label]))
                builds[label] = time.perf_counter() - t
                print(f"built {label} in {builds[label]:.0f} s", flush=True)
            times: dict[str, dict[str, list[float]]] = {label: {q: [] for q in QUERIES} for label in versions}
            live: dict[str, int] = {}
            labels = list(versions)
            for turn in range(args.turns):
                for label in labels[turn % 2 :] + labels[: turn % 2]:
                    found = json.loads(run_child(versions[label], "scan", str(stores[label])))
                    if not found["code"].startswith(str(versions[label])):
                        raise SystemExit(f"{label} ran the code at {found['code']}, not under {versions[label]}")
                    live[label] = found["live"]
                    for q, seconds in found["best"].items():
                        times[label][q].append(seconds)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_root)], check=False)
    report(args, labels, times, live, builds, started)
    plot(args.out.with_suffix(".png"), labels, times)


def report(
    args: argparse.Namespace,
    labels: list[str],
    times: dict[str, dict[str, list[float]]],
    live: dict[str, int],
    builds: dict[str, float],
    started: float,
) -> None:
    old, new = labels
    p50 = {label: {q: statistics.median(ts) for q, ts in times[label].items()} for label in labels}
    lines = [
        "# Full scans through brinicle_rows, against the code before issue 17",
        "",
        datasets.run_line(
            f"python benchmarks/bench_scan.py --n {args.n} --turns {args.turns} --baseline {args.baseline}", started
        ),
        "",
        f"{args.n:,} rows (a key, a title, a category, a price, a flag, {DIM}-d vectors) built by each "
        f"version's own code, then 10% deleted by a re-ingest with `sync=True`: "
        f"{live[new]:,} live rows read by this checkout, {live[old]:,} by the baseline. "
        f"Milliseconds, the median over {args.turns} turns of the best of three runs in a fresh process; "
        "the versions in turns.",
        "",
        f"| query | {old} | {new} | this / baseline |",
        "|---|---:|---:|---:|",
    ]
    for q, sql in QUERIES.items():
        lines.append(
            f"| {q} (`{sql}`) | {p50[old][q] * 1000:.1f} | {p50[new][q] * 1000:.1f} "
            f"| {p50[new][q] / p50[old][q]:.2f}x |"
        )
    slowest = max(p50[new][q] / p50[old][q] for q in QUERIES)
    lines += [
        "",
        f"Goal (issue 17): full scans no slower than before; the slowest ratio here is {slowest:.2f}x. "
        f"Builds (both ingests, s): {', '.join(f'{label} {s:.0f}' for label, s in builds.items())}.",
        "",
    ]
    datasets.write_report(args.out, "\n".join(lines))


def plot(path: Path, labels: list[str], times: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    x = np.arange(len(QUERIES))
    for i, label in enumerate(labels):
        p50 = [statistics.median(times[label][q]) * 1000 for q in QUERIES]
        ax.bar(x + (i - 0.5) * width, p50, width, label=label)
    ax.set_xticks(x, list(QUERIES))
    ax.set_ylabel("ms (median of turns, best of three)")
    ax.set_title("Full scans through brinicle_rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
