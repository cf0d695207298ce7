"""Our ``VectorEngine`` against brinicle's own, side by side in one run, same data and params.

A brinicle user switches by changing one import; this measures what they get. On the same
SIFT-like vectors (squared L2, brinicle's default ``dist_func="l2"``), M=16,
ef_construction=200, ef_search=64, the same build threads everywhere:

- a loop of single-vector ``ingest`` calls, then ``finalize``;
- ``ingest_batch`` of the same vectors, then ``finalize``;
- single-query ``search`` (p50 and mean of every query, recall@10 against exact search);
- raw usearch at the same dtype (``Index.add`` with the same params and threads, then
  ``Index.search`` one query at a time) as the floor for our layer.

Each engine runs in a fresh process, one after the other (2 cores: never two at once).

Goals (issue 17): single-query search <= 1.1x raw usearch at the same dtype and no slower
than brinicle; ``finalize`` no slower than brinicle's; the ``ingest`` loop + ``finalize``
within 1.5x of ``ingest_batch`` + ``finalize`` with the default durability.

Usage: python benchmarks/bench_engine.py [--n 100000] [--queries 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

M, EF_CONSTRUCTION, EF_SEARCH, K = 16, 200, 64, 10
ALONE_ROUNDS = 3
RESULTS = Path(__file__).resolve().parent / "results"


def load(n: int, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.ascontiguousarray(datasets.cached(f"sift128-{n}", datasets.sift_like, n, seed=1))
    queries = np.ascontiguousarray(datasets.cached(f"sift128-q{nq}", datasets.sift_like, nq, seed=2))
    truth = datasets.cached(f"sift128-{n}-gt{nq}", datasets.ground_truth, data, queries, K, "l2sq")
    return data, queries, np.asarray(truth)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def make_engine(kind: str, dtype: str, path: str, dim: int, threads: int) -> Any:
    if kind == "brinicle":
        import brinicle

        return brinicle.VectorEngine(path, dim, 0.1, M, EF_CONSTRUCTION, EF_SEARCH, threads, 0, "l2")
    from brinicle_etl import VectorEngine

    return VectorEngine(path, dim, 0.1, M, EF_CONSTRUCTION, EF_SEARCH, threads, 0, "l2", dtype=dtype)


def build_engine(kind: str, dtype: str, args: dict[str, Any]) -> dict[str, Any]:
    """One engine's loop build and (ours) batch build, in this fresh process; the index of the
    batch build (brinicle: of the loop) is left at ``<work>/<kind>-<dtype>`` for the searches."""
    data = load(args["n"], args["queries"])[0]
    keys = [str(i) for i in range(len(data))]
    threads, dim = args["threads"], data.shape[1]
    kept = f"{args['work']}/{kind}-{dtype}"
    out: dict[str, Any] = {"kind": kind, "dtype": dtype}
    loop_path = kept if kind == "brinicle" else f"{args['work']}/loop-{kind}-{dtype}"
    engine = make_engine(kind, dtype, loop_path, dim, threads)
    engine.init("build")
    rows = [np.array(v) for v in data]  # as a caller holds them: one array per vector
    t = time.perf_counter()
    for key, v in zip(keys, rows, strict=True):
        engine.ingest(key, v)
    out["loop_ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    engine.finalize()
    out["loop_finalize"] = time.perf_counter() - t
    engine.close()  # pool workers end without running destructors: brinicle writes its files here
    if kind == "brinicle":  # brinicle's Python engine has no ingest_batch: its loop's index is searched
        return out
    engine = make_engine(kind, dtype, kept, dim, threads)
    engine.init("build")
    t = time.perf_counter()
    for s in range(0, len(data), 10_000):
        engine.ingest_batch(keys[s : s + 10_000], data[s : s + 10_000])
    out["batch_ingest"] = time.perf_counter() - t
    t = time.perf_counter()
    engine.finalize()
    out["batch_finalize"] = time.perf_counter() - t
    engine.close()
    return out


def build_raw(dtype: str, args: dict[str, Any]) -> dict[str, Any]:
    from usearch.index import Index

    data = load(args["n"], args["queries"])[0]
    index = Index(
        ndim=data.shape[1],
        metric="l2sq",
        dtype=dtype,
        connectivity=M,
        expansion_add=EF_CONSTRUCTION,
        expansion_search=EF_SEARCH,
    )
    t = time.perf_counter()
    index.add(np.arange(len(data), dtype=np.uint64), data, threads=args["threads"])
    build = time.perf_counter() - t
    index.save(f"{args['work']}/usearch-{dtype}.usearch")
    return {"kind": "usearch", "dtype": dtype, "add": build}


def searcher(kind: str, dtype: str, args: dict[str, Any], dim: int) -> Any:
    """One engine's single-query search, as its user calls it: (query) -> keys."""
    # brinicle first: measured here, brinicle 0.1.3 opens its saved index as empty (every search
    # returns []) in a process that loaded the usearch module before it.
    import brinicle  # noqa: F401
    from usearch.index import Index

    if kind in ("usearch", "our file"):
        if kind == "usearch":  # in memory, as after add
            index = Index.restore(f"{args['work']}/usearch-{dtype}.usearch")
        else:  # our collection's own index file, searched by raw usearch: our layer's cost apart
            # A copy: a view of the very file would share its pages with ours, and the one
            # of the two that searches a query second would find its walk already cached.
            copy = Path(f"{args['work']}/our-file-{dtype}.usearch")
            if not copy.exists():
                shutil.copyfile(next(Path(f"{args['work']}/ours-{dtype}").glob("main-*.usearch")), copy)
            index = Index.restore(str(copy), view=True)
        index.expansion_search = EF_SEARCH
        return lambda q, ix=index: ix.search(q, K).keys.tolist()
    engine = make_engine(kind, dtype, f"{args['work']}/{kind}-{dtype}", dim, 1)
    return lambda q, e=engine: [int(x) for x in e.search(q, K, EF_SEARCH)]


def search_alone(kind: str, dtype: str, args: dict[str, Any]) -> float:
    """p50 of one engine's single queries with nothing else open in its process: caches hold
    its graph and code alone, as when a user runs one engine."""
    data, queries, _truth = load(args["n"], args["queries"])
    search = searcher(kind, dtype, args, data.shape[1])
    for q in queries[:200]:
        search(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def search_all(runs: list[tuple[str, str]], args: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every engine's single-query searches, interleaved query by query (each query goes to
    every engine in turn, the order rotating), so the machine's noise falls on all alike."""
    data, queries, truth = load(args["n"], args["queries"])
    searchers = {(kind, dtype): searcher(kind, dtype, args, data.shape[1]) for kind, dtype in runs}
    names = list(searchers)
    for q in queries[:200]:  # warm: page everything in
        for name in names:
            searchers[name](q)
    times: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    found: dict[tuple[str, str], list[list[int]]] = {name: [] for name in names}
    for i, q in enumerate(queries):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t = time.perf_counter()
            ids = searchers[name](q)
            times[name].append(time.perf_counter() - t)
            found[name].append(ids)
    return {
        name: {
            "search_p50": statistics.median(times[name]),
            "search_mean": statistics.fmean(times[name]),
            "recall": recall(found[name], truth),
            "times": times[name],
        }
        for name in names
    }


def in_child(target: Any, *params: Any) -> Any:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(target, params)


def paired(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over queries of a's time / b's time for the same query (measured back to back)."""
    return float(np.median(np.asarray(a["times"]) / np.asarray(b["times"])))


def report(results: list[dict[str, Any]], args: argparse.Namespace, started: float) -> str:
    by = {(r["kind"], r["dtype"]): r for r in results}
    us = 1e6

    def cell(r: dict[str, Any], key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
        return format(r[key] * scale, fmt) if key in r else "-"

    lines = [
        "# VectorEngine: ours against brinicle's",
        "",
        datasets.run_line(
            f"python benchmarks/bench_engine.py --n {args.n} --queries {args.queries} --threads {args.threads}", started
        ),
        "",
        f"{args.n:,} SIFT-like 128-d vectors (squared L2), M={M}, ef_construction={EF_CONSTRUCTION}, "
        f"ef_search={EF_SEARCH}, {args.threads} build threads everywhere; each build in a fresh process, one "
        f"after the other. Searches: {args.queries:,} single queries, k={K}, after 200 warm-up queries, in one "
        "process, query by query through every engine in turn (rotating order), so noise falls on all alike; "
        f"'alone': each engine in a process of its own, nothing else open (the median of {ALONE_ROUNDS} turns "
        "through the engines).",
        "",
        "| engine | dtype | ingest loop, µs/call | loop finalize, s | ingest_batch, s | batch finalize (raw: add), s "
        "| loop total / batch total | search p50, µs | search mean, µs | search p50 alone, µs | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        both = "loop_ingest" in r and "batch_ingest" in r
        ratio = (
            f"{(r['loop_ingest'] + r['loop_finalize']) / (r['batch_ingest'] + r['batch_finalize']):.2f}x"
            if both
            else "-"
        )
        build = cell(r, "add") if "add" in r else cell(r, "batch_finalize")
        lines.append(
            f"| {r['kind']} | {r['dtype']} | {cell(r, 'loop_ingest', us / args.n, '.1f')} | {cell(r, 'loop_finalize')} "
            f"| {cell(r, 'batch_ingest')} | {build} | {ratio} "
            f"| {r['search_p50'] * us:.1f} | {r['search_mean'] * us:.1f} | {r['alone_p50'] * us:.1f} "
            f"| {r['recall']:.4f} |"
        )
    lines += [
        "",
        "brinicle's Python engine has no `ingest_batch`: its index is the loop's. Ours: the loop runs with the "
        "default durability (calls synced in groups within `sync_window`, 1 s). `our file`: raw usearch "
        "searching a copy of our collection's own index file (memory-mapped), which separates our layer's "
        "cost from the graph's (a copy, so that the two never share cached pages).",
        "",
        "## Goals",
        "",
        "Search ratios are medians of per-query ratios (the same query, back to back).",
        "",
    ]
    theirs = by[("brinicle", "f32")]
    for dtype in args.dtypes:
        ours, raw = by[("ours", dtype)], by[("usearch", dtype)]
        loop_ratio = (ours["loop_ingest"] + ours["loop_finalize"]) / (ours["batch_ingest"] + ours["batch_finalize"])
        lines += [
            f"- {dtype}: search ours / raw usearch {dtype}: {paired(ours, raw):.2f}x (goal <= 1.1x); "
            f"ours / brinicle: {paired(ours, theirs):.2f}x (goal <= 1.0x); ours / raw usearch on our file: "
            f"{paired(ours, by[('our file', dtype)]):.2f}x; alone, p50 ours / raw usearch "
            f"{ours['alone_p50'] / raw['alone_p50']:.2f}x, ours / brinicle "
            f"{ours['alone_p50'] / theirs['alone_p50']:.2f}x, "
            f"ours / our file {ours['alone_p50'] / by[('our file', dtype)]['alone_p50']:.2f}x",
            f"- {dtype}: finalize after the loop, ours / brinicle: "
            f"{ours['loop_finalize'] / theirs['loop_finalize']:.2f}x (goal <= 1.0x); ours / raw `add`: "
            f"{ours['batch_finalize'] / raw['add']:.2f}x; loop + finalize / ingest_batch + finalize: "
            f"{loop_ratio:.2f}x (goal <= 1.5x)",
        ]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['kind']}\n{r['dtype']}" for r in results]
    colours = [
        "#888888" if r["kind"] == "brinicle" else "#1f77b4" if r["kind"] == "ours" else "#2ca02c" for r in results
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [
        ("search p50, µs (lower is better)", [r["search_p50"] * 1e6 for r in results]),
        ("build: finalize after the loop (raw: add), s", [r.get("loop_finalize", r.get("add", 0)) for r in results]),
        ("ingest loop + its finalize, s", [r.get("loop_ingest", 0) + r.get("loop_finalize", 0) for r in results]),
    ]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(labels, values, color=colours)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("VectorEngine: brinicle (grey), brinicle-etl (blue), raw usearch (green)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["f32", "bf16"])
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.md")
    args = parser.parse_args()
    started = time.time()
    load(args.n, args.queries)  # generate and cache the data before any timing
    with tempfile.TemporaryDirectory() as work:
        params = {"n": args.n, "queries": args.queries, "threads": args.threads, "work": work}
        results = [in_child(build_engine, "brinicle", "f32", params)]
        for dtype in args.dtypes:
            results.append(in_child(build_engine, "ours", dtype, params))
            results.append(in_child(build_raw, dtype, params))
        runs = [(r["kind"], r["dtype"]) for r in results] + [("our file", dtype) for dtype in args.dtypes]
        searched = in_child(search_all, runs, params)
        alone: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        for _round in range(ALONE_ROUNDS):  # in turns, so a noisy neighbour slows every engine alike
            for run in runs:
                alone[run].append(in_child(search_alone, *run, params))
    results += [{"kind": "our file", "dtype": dtype} for dtype in args.dtypes]
    for r in results:
        r.update(searched[r["kind"], r["dtype"]])
        r["alone_p50"] = statistics.median(alone[r["kind"], r["dtype"]])
    datasets.write_report(args.out, report(results, args, started))
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
