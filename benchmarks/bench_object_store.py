"""A store on object storage against the same store in a local directory, side by side in one run.

The object store is moto's S3-compatible server on 127.0.0.1 (a separate process), so the
figures are the protocol's and the client's cost without a network's latency. On N x 384
text-like vectors (cosine, bf16) with a few payload columns:

- ingest (precomputed vectors) into ``s3://`` against into a local directory (goal >= 0.7x);
- cold open + first search of a reader with an empty cache, and warm single-query QPS
  against the local store (goal >= 0.95x);
- how long a reader takes to see a new generation with the default refresh interval
  (goal <= 1.5 s);
- the client libraries on the same server: obstore (ours) and boto3, uploading and
  downloading one segment-sized object and writing small objects with create-if-absent.

Usage: python benchmarks/bench_object_store.py [--n 100000] [--queries 2000] [--out benchmarks/results/object_store.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets  # noqa: E402

from brinicle_etl import Store, ingest  # noqa: E402
from tests.s3_server import ACCESS_KEY, BUCKET, REGION, SECRET, S3Server, running_s3  # noqa: E402


def frame_of(data: np.ndarray, start: int = 0) -> pl.DataFrame:
    n = len(data)
    rng = np.random.default_rng(start)
    return pl.DataFrame(
        {
            "id": np.arange(start, start + n),
            "title": [f"item {i}" for i in range(start, start + n)],
            "category": rng.choice(["a", "b", "c", "d"], n),
            "embedding": pl.Series(data, dtype=pl.Array(pl.Float32, data.shape[1])),
        }
    )


def qps(col: object, queries: np.ndarray, rounds: int = 3) -> float:
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for q in queries:
            col.search(q, 10)  # type: ignore[attr-defined]
        best = max(best, len(queries) / (time.perf_counter() - t))
    return best


def clients(s3: S3Server, tmp: Path, megabytes: int = 64, small: int = 200) -> list[tuple[str, float, float, float]]:
    """(client, upload MB/s, download MB/s, create-if-absent puts/s) on the same server."""
    import boto3
    import obstore
    from obstore.store import S3Store

    blob = np.random.default_rng(0).bytes(megabytes * 2**20)
    path = tmp / "blob.bin"
    path.write_bytes(blob)
    results = []
    store = S3Store(
        BUCKET,
        prefix="clients/obstore",
        endpoint=s3.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET,
        region=REGION,
        client_options={"allow_http": True},
    )
    t = time.perf_counter()
    obstore.put(store, "blob", path)
    up = megabytes / (time.perf_counter() - t)
    t = time.perf_counter()
    with open(tmp / "down-obstore", "wb") as out:
        for chunk in obstore.get(store, "blob").stream(min_chunk_size=8 * 2**20):
            out.write(chunk)
    down = megabytes / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(small):
        obstore.put(store, f"small/{i}", b"{}", mode="create")
    results.append(("obstore", up, down, small / (time.perf_counter() - t)))

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        region_name=REGION,
    )
    t = time.perf_counter()
    client.upload_file(str(path), BUCKET, "clients/boto3/blob")
    up = megabytes / (time.perf_counter() - t)
    t = time.perf_counter()
    client.download_file(BUCKET, "clients/boto3/blob", str(tmp / "down-boto3"))
    down = megabytes / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(small):
        client.put_object(Bucket=BUCKET, Key=f"clients/boto3/small/{i}", Body=b"{}", IfNoneMatch="*")
    results.append(("boto3", up, down, small / (time.perf_counter() - t)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "object_store.md")
    args = parser.parse_args()
    started = time.time()
    data = np.ascontiguousarray(datasets.cached(f"text384-{args.n}", datasets.text_like, args.n, seed=1))
    queries = np.ascontiguousarray(
        datasets.cached(f"text384-q{args.queries}", datasets.text_like, args.queries, seed=2)
    )
    frame = frame_of(data)
    extra = frame_of(datasets.text_like(1000, seed=3), start=args.n)
    tmp = Path(tempfile.mkdtemp(prefix="bench_object_store_"))
    with running_s3() as s3:
        url = s3.new_url()
        local = Store(tmp / "local")
        remote = Store(url, storage_options=s3.options(), cache_dir=tmp / "writer-cache")
        seconds = {}
        for label, store in (("local", local), ("s3", remote)):
            t = time.perf_counter()
            ingest(frame, "bench/items", store=store, vector_col="embedding", primary_key="id")
            seconds[label] = time.perf_counter() - t

        t = time.perf_counter()
        reader = Store(url, storage_options=s3.options(), cache_dir=tmp / "reader-cache").open("bench/items")
        reader.search(queries[0], 10)
        cold = time.perf_counter() - t
        local_col = local.open("bench/items")
        qps(local_col, queries[:200], rounds=1)  # warm both before measuring
        qps(reader, queries[:200], rounds=1)
        warm = {"local": [], "s3": []}
        for _ in range(3):  # in turns, so a noisy neighbour hits both
            warm["local"].append(qps(local_col, queries, rounds=1))
            warm["s3"].append(qps(reader, queries, rounds=1))

        seen = []
        for i in range(5):
            ingest(
                extra.slice(i * 200, 200),
                "bench/items",
                store=remote,
                vector_col="embedding",
                primary_key="id",
            )
            published = time.perf_counter()
            target = remote.open("bench/items").generation
            while reader.generation != target:
                time.sleep(0.005)
            seen.append(time.perf_counter() - published)
        library = clients(s3, tmp)

    local_qps, s3_qps = statistics.median(warm["local"]), statistics.median(warm["s3"])
    lines = [
        "# Object storage",
        "",
        datasets.run_line(f"python benchmarks/bench_object_store.py --n {args.n} --queries {args.queries}", started),
        f"Collection: {args.n:,} x 384 text-like unit vectors (cosine, bf16, M=16, ef_construction=200) with three "
        "payload columns, ingested with precomputed vectors. The object store is moto's S3-compatible server on "
        "127.0.0.1 in its own process: the protocol's and the client's cost, without a network's latency.",
        "",
        "| measure | local directory | s3:// | s3 / local |",
        "|---|---|---|---|",
        f"| first ingest, s | {seconds['local']:.1f} | {seconds['s3']:.1f} | "
        f"{seconds['local'] / seconds['s3']:.2f}x speed (goal >= 0.7x) |",
        f"| warm single-query QPS, k=10 (median of 3 turns) | {local_qps:,.0f} | {s3_qps:,.0f} | "
        f"{s3_qps / local_qps:.2f}x (goal >= 0.95x) |",
        f"| cold open + first search, empty cache, s | | {cold:.2f} | |",
        "",
        f"A reader with the default refresh interval (1 s) saw each of 5 new generations after "
        f"{', '.join(f'{s:.2f}' for s in seen)} s (max {max(seen):.2f} s; goal <= 1.5 s).",
        "",
        "## Client libraries on the same server",
        "",
        "| client | upload 64 MB, MB/s | download 64 MB, MB/s | create-if-absent puts/s |",
        "|---|---|---|---|",
        *[f"| {name} | {up:,.0f} | {down:,.0f} | {puts:,.0f} |" for name, up, down, puts in library],
        "",
        "obstore does the store's I/O: conditional puts (create-if-absent, If-Match) are part of its API, "
        "it streams downloads in chunks without holding the object in memory, and it brings no SDK "
        "(botocore alone is 32 MB installed, obstore 16 MB with its compiled client). s3fs (fsspec) sits on "
        "aiobotocore and gained exclusive "
        "creates only recently; it was not installed here.",
    ]
    datasets.write_report(args.out, "\n".join(lines) + "\n")
    plot(args.out.with_suffix(".png"), seconds, local_qps, s3_qps, seen)


def plot(path: Path, seconds: dict[str, float], local_qps: float, s3_qps: float, seen: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    axes[0].bar(["local", "s3"], [seconds["local"], seconds["s3"]], color=["tab:blue", "tab:orange"])
    axes[0].set_title("first ingest (s)")
    axes[1].bar(["local", "s3"], [local_qps, s3_qps], color=["tab:blue", "tab:orange"])
    axes[1].set_title("warm QPS, k=10")
    axes[2].bar(range(1, len(seen) + 1), seen, color="tab:orange")
    axes[2].axhline(1.5, color="grey", linewidth=0.5)
    axes[2].set_title("s until a reader sees a generation")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
