"""How the graph could be built: raw usearch options against LanceDB's index build, on
``bench_peers``' vectors, side by side in one run.

``bench_peers`` shows our first ingest within a few percent of a raw usearch ``Index.add``
and that add slower than LanceDB's whole ingest at 1M. This script measures what would
change that, on the same 128-d text-like unit vectors (cosine), with no store around them:

- ``bf16``: today's graph (``M=16``), at ``ef_construction`` 200 and 100;
- ``i8 + rerank``: the graph on 8-bit codes, its ``RERANK`` x k candidates re-scored on the
  float32 vectors (kept beside the graph), at ``ef_construction`` 200 and 100;
- ``bf16, 2 graphs``: half the rows in each graph, built one after the other with every
  core, searched as one (usearch ``Indexes``, a thread per graph), as LanceDB searches its
  partitions or a sharded collection its shards;
- ``i8 + rerank`` in batches of 50,000 rows, as an ingest hands them to the store: each batch
  in a random order (the store's order until 2026-12) or region by region (``store/order.py``);
- hnswlib's f32 graph at ``ef_construction`` 200, for reference: the same algorithm with a walk
  that prefetches the next candidates' memory (usearch's dense index does not), which
  ``bench_walk`` finds 2-3x faster per query on this CPU;
- LanceDB's ``IVF_HNSW_SQ`` index (one partition per 500k rows, as ``bench_peers``), at
  ``ef_construction`` 200 and 100; only ``create_index`` is timed, not the table.

Each option: the build (every core), then single-query search p50 and recall@10 over an ef
sweep (LanceDB: its ``ef``, every partition probed: with one of two, recall@10 stopped near
0.79 at 1M), and the fastest setting at recall@10 >= 0.95.
Search times are of the bare index (keys only), not of rows. Each option runs in a fresh
process, one after the other.

Usage: python benchmarks/bench_graph.py [--size 1000000] [--queries 300] [--only 'batches,LanceDB'] [--out F]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets
from bench_peers import DIM, RESULTS, TARGET, K, M, import_lancedb, sweep

RERANK = 4
BATCH_ROWS = 50_000
EFS = [64, 96, 128, 192, 256, 384, 512, 768, 1024]
OPTIONS: list[dict[str, Any]] = [
    {"name": "bf16, efc 200 (today)", "engine": "usearch", "dtype": "bf16", "efc": 200},
    {"name": "bf16, efc 100", "engine": "usearch", "dtype": "bf16", "efc": 100},
    {"name": "i8 + rerank, efc 200", "engine": "usearch", "dtype": "i8", "efc": 200, "rerank": True},
    {"name": "i8 + rerank, efc 100", "engine": "usearch", "dtype": "i8", "efc": 100, "rerank": True},
    {"name": "bf16, efc 200, 2 graphs", "engine": "usearch", "dtype": "bf16", "efc": 200, "parts": 2},
    # As an ingest hands the store its rows: 50,000 at a time, each batch in an order of its own.
    {
        "name": "i8 + rerank, efc 200, batches in a random order",
        "engine": "usearch",
        "dtype": "i8",
        "efc": 200,
        "rerank": True,
        "order": "random",
    },
    {
        "name": "i8 + rerank, efc 200, batches region by region (store/order.py)",
        "engine": "usearch",
        "dtype": "i8",
        "efc": 200,
        "rerank": True,
        "order": "regions",
    },
    {"name": "hnswlib f32, efc 200 (reference)", "engine": "hnswlib", "efc": 200},
    {"name": "LanceDB IVF_HNSW_SQ, efc 200", "engine": "lancedb", "efc": 200},
    {"name": "LanceDB IVF_HNSW_SQ, efc 100", "engine": "lancedb", "efc": 100},
]


def data(work: Path, size: int, n_queries: int) -> None:
    vectors = datasets.text_like(size, DIM, seed=21).astype(np.float32)
    queries = datasets.text_like(n_queries, DIM, seed=23).astype(np.float32)
    np.save(work / "vectors.npy", vectors)
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", datasets.ground_truth(vectors, queries, K, "cosine"))


def run_usearch(option: dict[str, Any], work: Path) -> dict[str, Any]:
    from usearch.index import Index, Indexes

    vectors = np.load(work / "vectors.npy")
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    keys = np.arange(len(vectors), dtype=np.uint64)
    parts = option.get("parts", 1)
    started = time.perf_counter()
    graphs = []
    for p in range(parts):
        rows = slice(p * len(vectors) // parts, (p + 1) * len(vectors) // parts)
        index = Index(ndim=DIM, metric="cos", dtype=option["dtype"], connectivity=M, expansion_add=option["efc"])
        if "order" in option:
            add_in_batches(index, keys[rows], vectors[rows], option["order"])
        else:
            index.add(keys[rows], vectors[rows], threads=0)
        graphs.append(index)
    build = time.perf_counter() - started
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    joint = Indexes(indexes=graphs) if parts > 1 else None

    def search(q: np.ndarray, ef: int) -> list[int]:
        for g in graphs:
            g.expansion_search = ef
        if joint is not None:
            return np.asarray(joint.search(q, K, threads=parts).keys).tolist()
        if not option.get("rerank"):
            return graphs[0].search(q, K).keys.tolist()
        candidates = graphs[0].search(q, RERANK * K).keys
        scores = unit[candidates] @ (q / np.linalg.norm(q))
        return candidates[np.argsort(-scores)[:K]].tolist()

    return {"build": build, "curve": sweep(search, EFS, queries, truth)["curve"]}


def add_in_batches(index: Any, keys: np.ndarray, vectors: np.ndarray, order: str) -> None:
    from brinicle_etl.store.order import insert_order

    for start in range(0, len(keys), BATCH_ROWS):
        batch = vectors[start : start + BATCH_ROWS]
        if order == "regions":
            ordered = insert_order(batch, "cosine", start)
        else:
            ordered = np.random.default_rng(start).permutation(len(batch))
        index.add(keys[start : start + BATCH_ROWS][ordered], batch[ordered], threads=0)


def run_hnswlib(option: dict[str, Any], work: Path) -> dict[str, Any]:
    import hnswlib

    vectors = np.load(work / "vectors.npy")
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    index = hnswlib.Index(space="cosine", dim=DIM)
    started = time.perf_counter()
    index.init_index(max_elements=len(vectors), M=M, ef_construction=option["efc"], random_seed=1)
    index.add_items(vectors, np.arange(len(vectors)), num_threads=-1)
    build = time.perf_counter() - started

    def search(q: np.ndarray, ef: int) -> list[int]:
        index.set_ef(ef)
        labels, _distances = index.knn_query(q, k=K, num_threads=1)
        return [int(x) for x in labels[0]]

    return {"build": build, "curve": sweep(search, EFS, queries, truth)["curve"]}


def run_lancedb(option: dict[str, Any], work: Path) -> dict[str, Any]:
    import pyarrow as pa

    lancedb = import_lancedb()
    vectors = np.load(work / "vectors.npy")
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    table_data = pa.table(
        {
            "id": np.arange(len(vectors)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
        }
    )
    table = lancedb.connect(str(work / f"lance-{option['efc']}")).create_table("g", data=table_data)
    partitions = max(1, len(vectors) // 500_000)
    started = time.perf_counter()
    table.create_index(
        metric="cosine",
        vector_column_name="embedding",
        index_type="IVF_HNSW_SQ",
        num_partitions=partitions,
        m=M,
        ef_construction=option["efc"],
    )
    build = time.perf_counter() - started

    def search(q: np.ndarray, ef: int) -> list[int]:
        query = table.search(q).distance_type("cosine").nprobes(partitions).ef(ef)
        found = query.limit(K).select(["id"]).to_arrow()
        return found["id"].to_pylist()

    return {"build": build, "curve": sweep(search, EFS, queries, truth)["curve"]}


def _child(option: dict[str, Any], work: str, out: Any) -> None:
    runner = {"lancedb": run_lancedb, "hnswlib": run_hnswlib, "usearch": run_usearch}[option["engine"]]
    out.put(runner(option, Path(work)))


def in_child(option: dict[str, Any], work: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(option, work, out))
    child.start()
    result: dict[str, Any] = out.get()
    child.join()
    return result


def chosen(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    good = [c for c in curve if c["recall"] >= TARGET]
    return min(good, key=lambda c: c["p50"]) if good else None


def report(results: list[dict[str, Any]], args: argparse.Namespace, started: float) -> str:
    base = next((r for r in results if r["name"].startswith("LanceDB") and r["efc"] == 200), results[0])
    lines = [
        "# Graph build options against LanceDB's index",
        "",
        datasets.run_line(
            f"python benchmarks/bench_graph.py --size {args.size} --queries {args.queries}"
            + (f" --only '{args.only}'" if args.only else "")
            + (f" --out {args.out}" if args.out != RESULTS / "graph.md" else ""),
            started,
        ),
        f"{args.size:,} x {DIM} text-like unit vectors (cosine, `benchmarks/datasets.py`), M={M}, every core; "
        f"single-query search p50 of the bare index (keys only), recall@10 against exact search; "
        f"`i8 + rerank` re-scores {RERANK}x k candidates on float32 vectors. Options in batches add "
        f"{BATCH_ROWS:,} rows at a time, as an ingest hands them to the store; the others add all at once.",
        "",
        f"| option | build s | build vs {base['name']} | fastest at recall@10 >= {TARGET} | p50 ms | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        best = chosen(r["curve"])
        at = f"ef {best['setting']}" if best else "none"
        p50 = f"{best['p50'] * 1e3:.2f}" if best else ""
        rec = f"{best['recall']:.3f}" if best else f"best {max(c['recall'] for c in r['curve']):.3f}"
        ratio = base["build"] / r["build"]
        lines.append(f"| {r['name']} | {r['build']:.1f} | {ratio:.2f}x as fast | {at} | {p50} | {rec} |")
    lines += ["", "Recall@10 / p50 ms by ef:", "", "| option | " + " | ".join(f"ef {e}" for e in EFS) + " |"]
    lines.append("|---|" + "---|" * len(EFS))
    for r in results:
        cells = [f"{c['recall']:.3f} / {c['p50'] * 1e3:.2f}" for c in r["curve"]]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(15, 5))
    names = [r["name"] for r in results]
    bars.barh(names, [r["build"] for r in results], color=["#ff7f0e" if "LanceDB" in n else "#1f77b4" for n in names])
    bars.invert_yaxis()
    bars.set_xlabel("build seconds (every core)")
    bars.set_title("building the index (lower is better)")
    for r in results:
        curve = r["curve"]
        style = "s--" if "LanceDB" in r["name"] else "o-"
        curves.plot([c["recall"] for c in curve], [1 / c["p50"] for c in curve], style, label=r["name"])
    curves.axvline(TARGET, color="grey", linestyle=":")
    curves.set_xlabel("recall@10")
    curves.set_ylabel("queries/s, one query at a time (1 / p50)")
    curves.set_yscale("log")
    curves.set_title("searching the bare index")
    curves.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS / "graph.md")
    parser.add_argument("--only", default="", help="run the options whose names contain one of these, comma-separated")
    args = parser.parse_args()
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory() as work:
        data(Path(work), args.size, args.queries)
        wanted = [w for w in args.only.split(",") if w]
        for option in OPTIONS:
            if wanted and not any(w in option["name"] for w in wanted):
                continue
            result = {**option, **in_child(option, work)}
            results.append(result)
            print(f"{option['name']}: build {result['build']:.1f} s", flush=True)
    datasets.write_report(args.out, report(results, args, started))
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
