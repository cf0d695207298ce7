"""Two revisions of brinicle-etl side by side: did a change make the store or SQL slower?

Checks out ``--before`` and ``--after`` (default: the working tree) as git worktrees and runs
``bench_store.py`` and ``bench_sql.py`` at a small size on each, alternating, ``--rounds``
times. Each benchmark already reports ours as a ratio to raw usearch (or to the Python call)
measured in the same run, so the comparison is of those ratios, which survive a noisy
machine better than seconds do; the medians over rounds are what to read.

Usage: python benchmarks/bench_compare.py --before 1202fdf [--after HEAD] [--rounds 3] [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (label, script, pattern over its markdown result); each pattern yields one ratio per data set.
METRICS = [
    ("build vs raw usearch", "store", re.compile(r"^\| ours \| \w+ \| [\d.]+ \| [\d,]+ \| ([\d.]+)x", re.M)),
    ("search QPS vs raw usearch", "store", re.compile(r"^\| ours \| \w+ \|(?:[^|]*\|){6} ([\d.]+)x", re.M)),
    ("SQL table of queries vs search_batch", "sql", re.compile(r"\*\*([\d.]+)x\*\*")),
]


def worktree(rev: str, into: Path) -> Path:
    if rev == "WORKTREE":
        return REPO
    path = into / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev], check=True)
    return path


def run(tree: Path, script: str, args: list[str], out: Path) -> str:
    # The tree's own package first: its benchmarks and every process they spawn import it.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / "benchmarks" / f"bench_{script}.py"), *args, "--out", str(out)]
    subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True)
    return out.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a git revision")
    parser.add_argument("--after", default="WORKTREE", help="a git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compare.md")
    args = parser.parse_args()
    started = time.time()
    store_args = ["--n", str(args.n), "--queries", "300", "--datasets", "sift128,text384", "--dtypes", "bf16"]
    sql_args = ["--n", str(args.n), "--queries", "2000", "--single", "200"]
    values: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": worktree(args.before, Path(tmp)), "after": worktree(args.after, Path(tmp))}
        try:
            for round_ in range(args.rounds):
                for side, tree in trees.items():
                    texts = {
                        "store": run(tree, "store", store_args, Path(tmp) / f"store_{side}_{round_}.md"),
                        "sql": run(tree, "sql", sql_args, Path(tmp) / f"sql_{side}_{round_}.md"),
                    }
                    for label, script, pattern in METRICS:
                        found = [float(v) for v in pattern.findall(texts[script])]
                        values.setdefault((label, side), []).extend(found)
                    print(f"round {round_ + 1} {side} done", file=sys.stderr)
        finally:
            for tree in trees.values():
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    report(values, args, time.time() - started)


def report(values: dict[tuple[str, str], list[float]], args: argparse.Namespace, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [
        "# Before and after",
        "",
        f"`python benchmarks/bench_compare.py --before {args.before} --after {args.after} --rounds {args.rounds} "
        f"--n {args.n}`: {args.rounds} alternating rounds of `bench_store.py` (20k-style sizes: SIFT-like 128-d "
        f"and text-like 384-d, bf16) and `bench_sql.py`, {seconds:.0f} s in all. Each value is a ratio measured "
        "inside one run (ours against raw usearch, or SQL against the Python call), one per data set and round.",
        "",
        "| ratio | before: median (all) | after: median (all) | after / before |",
        "|---|---|---|---|",
    ]
    labels = [label for label, _script, _pattern in METRICS]
    for label in labels:
        before, after = values.get((label, "before"), []), values.get((label, "after"), [])
        if not before or not after:
            continue
        mb, ma = statistics.median(before), statistics.median(after)
        lines.append(
            f"| {label} | {mb:.2f}x ({', '.join(f'{v:.2f}' for v in before)}) | "
            f"{ma:.2f}x ({', '.join(f'{v:.2f}' for v in after)}) | {ma / mb:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, side, color in ((-0.15, "before", "tab:blue"), (0.15, "after", "tab:red")):
        for i, label in enumerate(labels):
            points = values.get((label, side), [])
            ax.scatter([i + offset] * len(points), points, color=color, label=side if i == 0 else None, alpha=0.7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_ylabel("ratio (higher is better)")
    after = "the working tree" if args.after == "WORKTREE" else args.after
    ax.set_title(f"{args.before} (before) vs {after} (after), medians in {args.out.name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=100)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
