"""Where a single query's time goes as the collection grows: the HNSW walk itself.

bench_rows.py finds every path's search with rows growing from 100k to 1M rows with the
index alone (the rows cost the same at both sizes). This looks at that index search with
raw usearch, no store around it: the same 64-d text-like vectors (cosine, M=16,
ef_construction=64, ef 64, k=10) at each size and dtype, single queries on one thread:

- p50 of the graph as the store opens it (a memory-mapped view of the saved file), searched
  with the call the store makes (usearch's compiled search, without its Python wrapper's
  result objects, a constant ~5 µs here);
- p50 of the same graph loaded into memory and collapsed into 2 MB pages
  (``madvise(MADV_COLLAPSE)``), to tell whether TLB misses are the growth;
- the distances computed and the nodes visited per query (usearch's own counters), and
  the time per distance computed: when the work grows less than the time, the extra is
  memory latency (the graph leaves the CPU caches);
- with ``hnswlib`` among the dtypes, hnswlib's graph (f32, in memory) with the same params as
  the reference: its walk prefetches the next candidates' memory while it computes a
  distance, which usearch's dense index does not (usearch 2.26 passes no prefetch to it).

Usage: python benchmarks/bench_walk.py [--sizes 100000 1000000] [--dtypes bf16,i8[,f32,hnswlib]] [--queries 1000]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index

from brinicle_etl.store.segment import _search_many

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

DIM, M, EF_CONSTRUCTION, EF, K = 64, 16, 64, 64, 10
OUT = Path(__file__).resolve().parent / "results" / "walk.md"
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25
LAYOUTS = ("file view", "in memory, 2 MB pages")
HNSWLIB = "hnswlib"


class HnswlibWalk:
    """hnswlib's graph behind the one call the timing makes (f32, in memory: it has no view)."""

    def __init__(self, vectors: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
        self.index.init_index(max_elements=len(vectors), M=M, ef_construction=EF_CONSTRUCTION, random_seed=1)
        self.index.add_items(vectors, np.arange(len(vectors)), num_threads=-1)
        self.index.set_ef(EF)

    def search(self, query: np.ndarray, k: int) -> Any:
        return self.index.knn_query(query, k=k, num_threads=1)

    def keys(self, queries: np.ndarray, k: int) -> np.ndarray:
        labels, _distances = self.index.knn_query(queries, k=k, num_threads=-1)
        return np.asarray(labels)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def collapse_anonymous(least_bytes: int = 8 << 20) -> int:
    """Ask the kernel to back this process's large anonymous mappings with 2 MB pages now;
    the bytes it took."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            low, high = (int(v, 16) for v in parts[0].split("-"))
            name = parts[5] if len(parts) > 5 else ""
            if name in ("", "[heap]") and high - low >= least_bytes and "w" in parts[1]:
                libc.madvise(low, high - low, MADV_HUGEPAGE)
                if libc.madvise(low, high - low, MADV_COLLAPSE) == 0:
                    done += high - low
    return done


def huge_bytes() -> int:
    with open("/proc/self/smaps_rollup") as fh:
        return sum(int(line.split()[1]) * 1024 for line in fh if line.startswith("AnonHugePages"))


def p50_ms(index: Any, queries: np.ndarray) -> float:
    if isinstance(index, HnswlibWalk):
        search = index.search
    else:  # the store's own single-query call

        def search(q: np.ndarray, k: int) -> Any:
            return _search_many(index, q.reshape(1, -1), k, exact=False, threads=1)

    for q in queries[:50]:
        search(q, K)
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q, K)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dtypes", default="bf16,i8")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="bench_walk_"))
    queries = datasets.text_like(args.queries, DIM, seed=7)
    cases = [(n, dtype) for n in args.sizes for dtype in args.dtypes.split(",")]
    builds: dict[tuple[int, str], float] = {}
    opened: dict[tuple[int, str, str], Any] = {}
    truths: dict[int, np.ndarray] = {}
    recalls: dict[tuple[int, str], float] = {}
    for n, dtype in cases:
        vectors = datasets.text_like(n, DIM, seed=1)
        if n not in truths:  # unit vectors: the largest dot products are the nearest by cosine
            truths[n] = datasets.ground_truth(vectors, queries, K, "ip")
        if dtype == HNSWLIB:
            t = time.perf_counter()
            opened[n, dtype, LAYOUTS[1]] = HnswlibWalk(vectors)
            builds[n, dtype] = time.perf_counter() - t
            recalls[n, dtype] = recall(opened[n, dtype, LAYOUTS[1]].keys(queries, K), truths[n])
            print(f"built {n:,} {dtype} in {builds[n, dtype]:.0f} s", flush=True)
            continue
        index = Index(ndim=DIM, metric="cos", dtype=dtype, connectivity=M, expansion_add=EF_CONSTRUCTION)
        t = time.perf_counter()
        index.add(np.arange(n), vectors)
        builds[n, dtype] = time.perf_counter() - t
        index.save(str(work / f"{dtype}-{n}.usearch"))
        del index, vectors
        print(f"built {n:,} {dtype} in {builds[n, dtype]:.0f} s", flush=True)

    work_done: dict[tuple[int, str], tuple[float, float]] = {}
    for n, dtype in cases:
        if dtype == HNSWLIB:
            continue
        path = str(work / f"{dtype}-{n}.usearch")
        opened[n, dtype, LAYOUTS[0]] = Index.restore(path, view=True)
        opened[n, dtype, LAYOUTS[1]] = Index.restore(path, view=False)
        for index in (opened[n, dtype, LAYOUTS[0]], opened[n, dtype, LAYOUTS[1]]):
            index.expansion_search = EF
        found = opened[n, dtype, LAYOUTS[0]].search(queries, K)
        work_done[n, dtype] = (found.computed_distances / len(queries), found.visited_members / len(queries))
        recalls[n, dtype] = recall(np.asarray(found.keys), truths[n])
    collapse_anonymous()
    huge = huge_bytes()
    times: dict[tuple[int, str, str], list[float]] = {key: [] for key in opened}
    for _round in range(args.rounds):  # in turns, so a noisy neighbour slows every case alike
        for key, index in opened.items():
            times[key].append(p50_ms(index, queries))
    report(args, cases, builds, times, work_done, recalls, huge, started)
    plot(args.out.with_suffix(".png"), cases, times, work_done)
    opened.clear()
    shutil.rmtree(work)


def report(
    args: Any,
    cases: list[tuple[int, str]],
    builds: dict[tuple[int, str], float],
    times: dict[tuple[int, str, str], list[float]],
    work_done: dict[tuple[int, str], tuple[float, float]],
    recalls: dict[tuple[int, str], float],
    huge: int,
    started: float,
) -> None:
    sizes = " ".join(map(str, args.sizes))
    small, large = min(args.sizes), max(args.sizes)
    lines = [
        "# The HNSW walk, by collection size",
        "",
        datasets.run_line(
            f"python benchmarks/bench_walk.py --sizes {sizes} --dtypes {args.dtypes}"
            + (f" --out {args.out}" if args.out != OUT else ""),
            started,
        ),
        f"Raw usearch, {DIM}-d text-like vectors (cosine), M={M}, ef_construction={EF_CONSTRUCTION}, ef={EF}, "
        f"k={K}; single queries on one thread, p50 in ms, median of {args.rounds} turns over {args.queries:,} "
        f"queries. {huge / 2**20:,.0f} MB of the in-memory graphs were backed by 2 MB pages.",
        "",
        "| rows | dtype | build s | recall@10 | p50 file view | p50 in memory, 2 MB pages | distances / query "
        "| nodes visited / query | ns per distance (view) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    p50 = {key: statistics.median(found) for key, found in times.items()}
    for n, dtype in cases:
        if dtype == HNSWLIB:
            lines.append(
                f"| {n:,} | hnswlib f32 | {builds[n, dtype]:.0f} | {recalls[n, dtype]:.3f} | - "
                f"| {p50[n, dtype, LAYOUTS[1]]:.3f} | - | - | - |"
            )
            continue
        computed, visited = work_done[n, dtype]
        lines.append(
            f"| {n:,} | {dtype} | {builds[n, dtype]:.0f} | {recalls[n, dtype]:.3f} | {p50[n, dtype, LAYOUTS[0]]:.3f} "
            f"| {p50[n, dtype, LAYOUTS[1]]:.3f} | {computed:,.0f} | {visited:,.0f} "
            f"| {p50[n, dtype, LAYOUTS[0]] * 1e6 / computed:.0f} |"
        )
    lines += ["", f"From {small:,} to {large:,} rows:", ""]
    for dtype in args.dtypes.split(","):
        if dtype == HNSWLIB:
            grow_h = p50[large, dtype, LAYOUTS[1]] / p50[small, dtype, LAYOUTS[1]]
            lines.append(f"- hnswlib f32 (a prefetching walk): its p50 grows {grow_h:.2f}x in memory.")
            continue
        grow = {layout: p50[large, dtype, layout] / p50[small, dtype, layout] for layout in LAYOUTS}
        more = work_done[large, dtype][0] / work_done[small, dtype][0]
        lines.append(
            f"- {dtype}: the walk's p50 grows {grow[LAYOUTS[0]]:.2f}x as a file view and "
            f"{grow[LAYOUTS[1]]:.2f}x in memory on 2 MB pages, while its distances computed grow "
            f"{more:.2f}x."
        )
    lines.append("")
    datasets.write_report(args.out, "\n".join(lines))


def plot(
    path: Path,
    cases: list[tuple[int, str]],
    times: dict[tuple[int, str, str], list[float]],
    work_done: dict[tuple[int, str], tuple[float, float]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for dtype in dict.fromkeys(d for _n, d in cases):
        sizes = sorted(n for n, d in cases if d == dtype)
        for layout, style in zip(LAYOUTS, ("o-", "s--"), strict=True):
            if (sizes[0], dtype, layout) not in times:
                continue
            p50 = [statistics.median(times[n, dtype, layout]) for n in sizes]
            left.plot(sizes, p50, style, label=f"{dtype}, {layout}")
        if dtype == HNSWLIB:
            continue
        right.plot(sizes, [work_done[n, dtype][0] for n in sizes], "o-", label=dtype)
    left.set(xscale="log", xlabel="rows", ylabel="p50 ms, one query", title="time of a single query")
    right.set(xscale="log", xlabel="rows", ylabel="distances computed per query", title="work of a single query")
    right.set_ylim(bottom=0)
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
