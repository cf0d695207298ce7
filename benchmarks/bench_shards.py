"""Sharded collections against one collection of the same rows, side by side in one run.

Search: the same N x 384 text-like unit vectors (cosine, bf16, M=16, ef_construction=200)
as 1, 2, 4 and 8 shards (each searched with ef / N^(2/3), all at once); recall@10 against
exact search at the same ef (goal: within 0.005 of one shard), batch QPS of ``search_batch``
on every core (goal >= 0.7x one shard) and single-query p50 (goal <= 2x), measured in turns
so a noisy neighbour hits every layout.

Build: the critical path with one machine per shard. Product texts ingested with the real
model (all-MiniLM-L6-v2), on one core (process pinned, one torch thread, one HNSW thread):
the whole source into one collection, against each shard's own ingest (``shard=i``, which
reads the whole source and embeds and indexes only its rows). Goal: with 8 shards the
slowest shard takes <= 1/6 of the unsharded time.

Usage: python benchmarks/bench_shards.py [--n 200000] [--queries 1000] [--texts 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets  # noqa: E402

from brinicle_etl import Store, ingest  # noqa: E402
from brinicle_etl.types import HnswParams  # noqa: E402

LAYOUTS = (1, 2, 4, 8)


def recall(found: list[list[Any]], truth: np.ndarray, keys: list[str]) -> float:
    hits = sum(len({h.id for h in row} & {keys[j] for j in t}) for row, t in zip(found, truth, strict=True))
    return hits / truth.size


def batch_qps(col: Any, queries: np.ndarray) -> float:
    t = time.perf_counter()
    col.search_batch(queries, 10)
    return len(queries) / (time.perf_counter() - t)


def single_p50_ms(col: Any, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        col.search(q, 10)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def search_side(n: int, n_queries: int, tmp: Path) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    data = np.ascontiguousarray(datasets.cached(f"text384-{n}", datasets.text_like, n, seed=1))
    queries = np.ascontiguousarray(datasets.cached(f"text384-q{n_queries}", datasets.text_like, n_queries, seed=2))
    truth = datasets.ground_truth(data, queries, 10, "cosine")
    keys = [f"k{i}" for i in range(n)]
    store = Store(tmp / "search")
    # --work keeps the built layouts (and their build times) for a re-run of the measurements.
    timings = tmp / "built.json"
    saved = json.loads(timings.read_text()) if timings.exists() else {}
    built: dict[int, float] = {int(k): v for k, v in saved.items()}
    cols = {}
    for shards in LAYOUTS:
        if shards in built and store.exists(f"bench/s{shards}"):
            cols[shards] = store.open(f"bench/s{shards}")
            continue
        t = time.perf_counter()
        col = store.create(f"bench/s{shards}", dim=384, metric="cosine", dtype="bf16", shards=shards)
        col.write(keys, data, mode="build")
        built[shards] = time.perf_counter() - t
        cols[shards] = col
        timings.write_text(json.dumps(built))
        print(f"built {shards} shard(s) in {built[shards]:.1f} s", flush=True)
    figures: dict[int, dict[str, list[float]]] = {s: {"batch": [], "p50": []} for s in LAYOUTS}
    for col in cols.values():  # warm every layout's pages and pools
        col.search_batch(queries[:100], 10)
    for _turn in range(3):
        for shards, col in cols.items():
            figures[shards]["batch"].append(batch_qps(col, queries))
            figures[shards]["p50"].append(single_p50_ms(col, queries[:300]))
    out = {}
    for shards, col in cols.items():
        out[shards] = {
            "recall": recall(col.search_batch(queries, 10), truth, keys),
            "batch_qps": statistics.median(figures[shards]["batch"]),
            "p50_ms": statistics.median(figures[shards]["p50"]),
            "bytes": col.status().bytes_on_disk,
        }
    return out, built


def build_side(n_texts: int, tmp: Path) -> tuple[float, dict[int, list[float]], float]:
    import torch

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    texts = datasets.product_texts(n_texts)
    frame = pl.DataFrame({"id": np.arange(n_texts), "text": texts})
    store = Store(tmp / f"build-{time.time_ns()}")
    embedder = store.models.embedder("all-MiniLM-L6-v2")
    embedder.embed_batch(["warm up"])  # the model loads once, outside every timing
    options: dict[str, Any] = {
        "primary_key": "id",
        "semantic_fields": ["text"],
        "params": HnswParams(build_n_threads=1),
        "embedder": embedder,
    }
    t = time.perf_counter()
    ingest(frame, "bench/one", store=store, **options)
    whole = time.perf_counter() - t
    rate = n_texts / whole
    per_shard: dict[int, list[float]] = {}
    for shards in (2, 4, 8):
        per_shard[shards] = []
        for i in range(shards):
            t = time.perf_counter()
            ingest(frame, f"bench/s{shards}", store=store, shards=shards, shard=i, **options)
            per_shard[shards].append(time.perf_counter() - t)
        print(f"{shards} shards: slowest {max(per_shard[shards]):.1f} s of {whole:.1f} s unsharded", flush=True)
    return whole, per_shard, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shards.md")
    parser.add_argument("--work", type=Path, help="where the collections are built (kept, and reused if there)")
    args = parser.parse_args()
    started = time.time()
    tmp = args.work or Path(tempfile.mkdtemp(prefix="bench_shards_"))
    tmp.mkdir(parents=True, exist_ok=True)
    search, built = search_side(args.n, args.queries, tmp)
    whole, per_shard, rate = build_side(args.texts, tmp)
    one = search[1]
    lines = [
        "# Sharded collections",
        "",
        datasets.run_line(
            f"python benchmarks/bench_shards.py --n {args.n} --queries {args.queries} --texts {args.texts}", started
        ),
        "",
        f"## Search: {args.n:,} x 384 text-like vectors (cosine, bf16, M=16, ef_construction=200, ef 64, k=10)",
        "",
        "Every shard is searched at once (when no shard has tombstones, all shards' segments in one native "
        "usearch multi-index call) and the hits merged by distance; recall@10 is against exact "
        f"search over all rows, for {args.queries:,} queries. Median of 3 turns, layouts measured in turn. "
        "A search asked for ef 64 searches each of N shards with ceil(64 / N^(2/3)) (at least k): "
        "64, 41, 26 and 16.",
        "",
        "| shards | build s | recall@10 | vs 1 shard | batch QPS | vs 1 shard (goal >= 0.7x) | "
        "single-query p50 ms | vs 1 shard (goal <= 2x) | on disk MB |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {s} | {built[s]:.1f} | {f['recall']:.4f} | {f['recall'] - one['recall']:+.4f} | "
            f"{f['batch_qps']:,.0f} | {f['batch_qps'] / one['batch_qps']:.2f}x | {f['p50_ms']:.3f} | "
            f"{f['p50_ms'] / one['p50_ms']:.2f}x | {f['bytes'] / 2**20:,.0f} |"
            for s, f in search.items()
        ],
        "",
        f"## Build: {args.texts:,} product texts, all-MiniLM-L6-v2, one core",
        "",
        "Each ingest pinned to one core (one torch thread, one HNSW thread), embedding included, the "
        "model loaded once before: the whole source into one collection, then each shard's own ingest "
        "(`shard=i`), as one machine per shard would run it. The critical path is the slowest shard.",
        "",
        "| shards | slowest shard s | fastest s | sum of shards s | slowest / unsharded | ideal |",
        "|---|---|---|---|---|---|",
        f"| 1 | {whole:.1f} | {whole:.1f} | {whole:.1f} | 1.00 | 1.00 |",
        *[
            f"| {s} | {max(t):.1f} | {min(t):.1f} | {sum(t):.1f} | {max(t) / whole:.3f}"
            f"{' (goal <= 0.167)' if s == 8 else ''} | {1 / s:.3f} |"
            for s, t in per_shard.items()
        ],
        "",
        f"One core embedded and indexed {rate:,.0f} texts/s end to end in the unsharded ingest.",
    ]
    datasets.write_report(args.out, "\n".join(lines) + "\n")
    plot(args.out.with_suffix(".png"), search, whole, per_shard)


def plot(path: Path, search: dict[int, dict[str, float]], whole: float, per_shard: dict[int, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    layouts = list(search)
    a.plot(layouts, [search[s]["recall"] for s in layouts], "o-")
    a.axhline(search[1]["recall"] - 0.005, color="grey", linestyle="--", label="goal floor")
    a.set(title="recall@10 at ef 64", xlabel="shards", xscale="log", xticks=layouts, xticklabels=layouts)
    a.legend()
    one = search[1]
    b.plot(layouts, [search[s]["batch_qps"] / one["batch_qps"] for s in layouts], "o-", label="batch QPS ratio")
    b.plot(layouts, [search[s]["p50_ms"] / one["p50_ms"] for s in layouts], "s-", label="single p50 ratio")
    b.axhline(0.7, color="tab:blue", linestyle=":")
    b.axhline(2.0, color="tab:orange", linestyle=":")
    b.set(title="vs one shard, same cores", xlabel="shards", xscale="log", xticks=layouts, xticklabels=layouts)
    b.legend()
    counts = [1, *per_shard]
    c.plot(counts, [1.0] + [max(t) / whole for t in per_shard.values()], "o-", label="slowest shard / unsharded")
    c.plot(counts, [1 / s for s in counts], "--", color="grey", label="ideal 1/N")
    c.set(title="build critical path, one core per shard", xlabel="shards", xscale="log", yscale="log")
    c.set(xticks=counts, xticklabels=counts)
    c.legend()
    for ax in (a, b, c):
        ax.minorticks_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
