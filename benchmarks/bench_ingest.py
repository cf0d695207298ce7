"""The ingest pipeline at scale, side by side in one run.

1. First ingest of 1M rows with precomputed 128-d vectors from Parquet: rows/s and peak RSS
   (in a fresh process, so the RSS is the ingest's own).
2. Re-ingest of the same file, unchanged (goal: < 5% of the first ingest, zero rows embedded).
3. An upsert of a file where 10% of the rows changed (half their vectors, half only their
   price), against a full rebuild of the same collection (goal: < 15% of it).
4. Embedding throughput: the pipeline ingesting N texts against a bare ``model.encode`` of the
   same texts, interleaved, best of two (goal: >= 0.9x).

Usage: python benchmarks/bench_ingest.py [--rows 1000000] [--texts 3000] [--out benchmarks/results/ingest.md]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

CATEGORIES = ["footwear", "apparel", "camping", "packs", "kitchen", "electronics"]


def make_table(rows: int, path: Path) -> None:
    rng = np.random.default_rng(11)
    vectors = datasets.text_like(rows, 128, seed=4)
    frame = pl.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64),
            "title": [f"item {i}" for i in range(rows)],
            "category": rng.choice(CATEGORIES, rows),
            "price": np.round(rng.uniform(5, 500, rows), 2),
            "embedding": pl.Series(vectors, dtype=pl.Array(pl.Float32, 128)),
        }
    )
    frame.write_parquet(path, row_group_size=100_000)


def make_changed(source: Path, path: Path, fraction: float) -> None:
    frame = pl.read_parquet(source)
    n = len(frame)
    rng = np.random.default_rng(12)
    changed = rng.choice(n, int(n * fraction), replace=False)
    new_vectors, new_prices = changed[: len(changed) // 2], changed[len(changed) // 2 :]
    vectors = frame["embedding"].to_numpy().copy()
    vectors[new_vectors] = datasets.text_like(len(new_vectors), 128, seed=5)
    prices = frame["price"].to_numpy().copy()
    prices[new_prices] += 1.0
    frame.with_columns(
        embedding=pl.Series(vectors, dtype=pl.Array(pl.Float32, 128)), price=pl.Series(prices)
    ).write_parquet(path, row_group_size=100_000)


def timed_ingest(source: str, store: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process."""
    from brinicle_etl import ingest

    started = time.perf_counter()
    result = ingest(source, "bench/items", store=store, **kwargs)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "result": result.to_dict(),
        "peak_rss": datasets.peak_rss_bytes(),
    }


def timed_rebuild(store: str) -> float:
    from brinicle_etl import Store

    col = Store(store).open("bench/items")
    started = time.perf_counter()
    col.rebuild()
    return time.perf_counter() - started


def embedding_throughput(texts: list[str], rounds: int = 2) -> dict[str, float]:
    from brinicle_etl import Store, ingest
    from brinicle_etl.embed import ModelRegistry

    embedder = ModelRegistry().embedder("all-MiniLM-L6-v2")
    embedder.embed_batch(texts[:64])  # load the model outside the timings
    from brinicle_etl.embed.engines import load_model

    model = load_model(embedder.name_or_path, "cpu")  # type: ignore[attr-defined]
    frame = pl.DataFrame({"id": list(range(len(texts))), "text": texts})
    bare, pipeline = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        bare.append(len(texts) / (time.perf_counter() - t))
        tmp = tempfile.mkdtemp(prefix="bench_embed_")
        t = time.perf_counter()
        result = ingest(frame, "bench/texts", store=Store(tmp), semantic_fields=["text"])
        pipeline.append(len(texts) / (time.perf_counter() - t))
        assert result.rows_embedded == len(texts)
        shutil.rmtree(tmp)
    return {"bare": max(bare), "pipeline": max(pipeline)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ingest.md")
    args = parser.parse_args()
    started = time.time()
    datasets.CACHE.mkdir(exist_ok=True)
    source = datasets.CACHE / f"ingest-{args.rows}.parquet"
    changed = datasets.CACHE / f"ingest-{args.rows}-changed.parquet"
    if not source.exists():
        make_table(args.rows, source)
    n_changed = int(args.rows * 0.10)
    if not changed.exists():
        make_changed(source, changed, 0.10)
    store = tempfile.mkdtemp(prefix="bench_ingest_")
    ctx = mp.get_context("spawn")

    def in_process(fn: Any, *fn_args: Any) -> Any:
        with ctx.Pool(1) as pool:
            return pool.apply(fn, fn_args)

    first = in_process(timed_ingest, str(source), store, {"mode": "build", "vector_col": "embedding"})
    print(f"first ingest {first['seconds']:.1f}s", flush=True)
    again = in_process(timed_ingest, str(source), store, {})
    print(f"unchanged re-ingest {again['seconds']:.1f}s", flush=True)
    upsert = in_process(timed_ingest, str(changed), store, {"on_conflict": "update"})
    print(f"10% upsert {upsert['seconds']:.1f}s", flush=True)
    rebuild = in_process(timed_rebuild, store)
    print(f"rebuild {rebuild:.1f}s", flush=True)
    shutil.rmtree(store)
    texts = datasets.product_texts(args.texts)
    embed = in_process(embedding_throughput, texts)
    print(f"embedding {embed}", flush=True)

    rows = args.rows
    r1, r2, r3 = first["result"], again["result"], upsert["result"]
    lines = [
        "# Ingest benchmark",
        "",
        datasets.run_line(f"python benchmarks/bench_ingest.py --rows {rows} --texts {args.texts}", started)
        + " Each step runs in a fresh process (peak RSS is that "
        f"process's VmHWM; the Parquet file is {source.stat().st_size / 2**20:,.0f} MB). Data: {rows:,} rows "
        "(id, title, category, price, and a 128-d float32 `embedding` array column) in one Parquet file; "
        "collection dtype bf16, M=16, ef_construction=200.",
        "",
        "| step | seconds | rows/s | rows embedded | peak RSS MB | against | goal |",
        "|---|---|---|---|---|---|---|",
        f"| first ingest (build) | {first['seconds']:.1f} | {rows / first['seconds']:,.0f} | "
        f"{r1['rows_embedded']} | {first['peak_rss'] / 2**20:,.0f} | | |",
        f"| same file again, unchanged | {again['seconds']:.1f} | {rows / again['seconds']:,.0f} | "
        f"{r2['rows_embedded']} | {again['peak_rss'] / 2**20:,.0f} | "
        f"{again['seconds'] / first['seconds']:.1%} of the first ingest | < 5%, 0 embedded |",
        f"| 10% changed ({n_changed:,} rows), on_conflict=update | {upsert['seconds']:.1f} | "
        f"{rows / upsert['seconds']:,.0f} | {r3['rows_embedded']} | {upsert['peak_rss'] / 2**20:,.0f} | "
        f"{upsert['seconds'] / rebuild:.1%} of a full rebuild ({rebuild:.1f} s) | < 15% |",
        "",
        f"Counts of the 10% upsert: {r3['rows_updated']:,} updated, {r3['rows_unchanged']:,} unchanged. "
        f"Stage seconds of the first ingest: {r1['timings']}; of the re-ingest: {r2['timings']}; "
        f"of the upsert: {r3['timings']}.",
        "",
        "## Embedding throughput",
        "",
        f"{args.texts:,} product-like texts with all-MiniLM-L6-v2 on the CPU, best of two interleaved rounds: "
        f"bare `model.encode(batch_size=32)` {embed['bare']:,.0f} texts/s; the pipeline (read, hash, plan, "
        f"embed, index, write) {embed['pipeline']:,.0f} texts/s = **{embed['pipeline'] / embed['bare']:.2f}x** "
        "(goal >= 0.9x).",
        "",
    ]
    datasets.write_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
