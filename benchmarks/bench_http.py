"""Our HTTP server against brinicle's own server, side by side in one run, on the same data and params.

Both run on loopback: ours via ``brinicle-etl serve``; brinicle's ``brinicle.ref.api:app`` under uvicorn
with its data directory pointed at a temporary folder. For each server, on 100k x 128 vectors:

- ``/ingest/batch``: one request carrying every row (32-byte id + 128 float32), MB/s, in turns,
  best of two (each round into a fresh index);
- ``/finalize`` seconds (both build with M=16, ef_construction=200);
- ``/search.bin``: QPS and p50/p99 latency with several concurrent client processes, each with a
  persistent connection, for a fixed time; the servers are measured in turns, twice.

Then upsertion tasks: items per second of one task of N product texts (submit, embed with
all-MiniLM-L6-v2, upsert, until ``succeeded``) against ``ingest()`` called directly on the same
items in this process, in turns, best of two; both have the model loaded beforehand.

Usage: python benchmarks/bench_http.py [--n 100000] [--dim 128] [--clients 4] [--seconds 10] [--items 3000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

REPO = Path(__file__).resolve().parent.parent
BRINICLE_LAUNCH = """
import sys, uvicorn, brinicle.ref.api as api
api.store_dir = sys.argv[1].rstrip("/") + "/"
uvicorn.run(api.app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, data_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "ours":
        cmd = [sys.executable, "-m", "brinicle_etl.cli", "serve", "--store", str(data_dir), "--port", str(port)]
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-c", BRINICLE_LAUNCH, str(data_dir), str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.2)


def call(port: int, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    conn.request(method, path, body=body, headers={"Content-Type": ctype})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


def load(port: int, queries: np.ndarray, seconds: float, k: int, out: Any) -> None:
    """One client process: send queries back to back on one connection, record latencies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/search.bin?index_name=bench&k={k}&efs=64"
    bodies = [q.astype("<f4").tobytes() for q in queries]
    latencies = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        conn.request("POST", path, body=bodies[i % len(bodies)], headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - t)
        i += 1
    out.put(latencies)


def search_load(port: int, queries: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=load, args=(port, queries[i::clients], seconds, 10, out)) for i in range(clients)]
    for p in procs:
        p.start()
    latencies = np.concatenate([np.array(out.get()) for _ in procs])
    for p in procs:
        p.join()
    return {
        "qps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
    }


def task_items(n: int, round_: int) -> list[dict[str, Any]]:
    # A different prefix per round, so every round embeds and inserts all of its items.
    return [
        {"object_id": f"r{round_}-{i}", "payload": {"text": text}, "item_info": {"n": i}}
        for i, text in enumerate(datasets.product_texts(n))
    ]


def run_task(port: int, task_id: str, items: list[dict[str, Any]]) -> float:
    """Seconds from submitting a task to seeing it succeed."""
    body = json.dumps({"embedding_model_id": "all-MiniLM-L6-v2", "task_id": task_id, "items": items}).encode()
    t = time.perf_counter()
    call(port, "POST", "/internal/upsertion-tasks/run", body)
    while True:
        info = json.loads(call(port, "GET", f"/internal/upsertion-tasks/info?task_id={task_id}"))
        if info["status"] not in ("pending", "running"):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - t
    if info["status"] != "succeeded":
        raise RuntimeError(f"task {task_id} ended {info['status']}: {info.get('error')}")
    return seconds


def direct_ingest(store_dir: Path, items: list[dict[str, Any]]) -> float:
    """The same items through ``ingest()`` in this process: what the task path is measured against."""
    import polars as pl

    from brinicle_etl import Store, ingest

    frame = pl.DataFrame(
        {
            "object_id": [i["object_id"] for i in items],
            "text": [i["payload"]["text"] for i in items],
            "payload": [json.dumps(i["payload"], sort_keys=True) for i in items],
            "item_info": [json.dumps(i["item_info"], sort_keys=True) for i in items],
        }
    )
    t = time.perf_counter()
    result = ingest(
        frame,
        "direct",
        store=Store(store_dir),
        mode="upsert",
        on_conflict="update",
        primary_key="object_id",
        semantic_fields=["text"],
        model="all-MiniLM-L6-v2",
        wait=True,
    )
    seconds = time.perf_counter() - t
    assert result.rows_embedded == len(items), result
    return seconds


def task_throughput(tmp: Path, n_items: int) -> dict[str, float]:
    proc, port = start("ours", tmp / "tasks")
    try:
        run_task(port, "warmup", task_items(64, 99))  # loads the model in the server
        direct_ingest(tmp / "direct", task_items(64, 99))  # and here
        task_s, direct_s = [], []
        for round_ in range(2):
            items = task_items(n_items, round_)
            task_s.append(run_task(port, f"bench-{round_}", items))
            direct_s.append(direct_ingest(tmp / "direct", items))
            rates = n_items / task_s[-1], n_items / direct_s[-1]
            print(f"tasks {rates[0]:.0f} items/s, ingest() {rates[1]:.0f} items/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return {"task": n_items / min(task_s), "direct": n_items / min(direct_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "http.md")
    args = parser.parse_args()
    started = time.time()
    data = datasets.sift_like(args.n, args.dim, seed=1)
    queries = datasets.sift_like(2000, args.dim, seed=2)
    payload = b"".join(f"doc-{i}".encode().ljust(32, b"\0") + v.astype("<f4").tobytes() for i, v in enumerate(data))
    tmp = Path(tempfile.mkdtemp(prefix="bench_http_"))
    results: dict[str, dict[str, float]] = {}
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    for kind in ("brinicle", "ours"):
        servers[kind] = start(kind, tmp / kind)
        results[kind] = {"ingest_mb_s": 0.0}
    # /ingest/batch in turns, each round into a fresh index, best of two
    for round_ in range(2):
        for kind, (_proc, port) in servers.items():
            name = f"ingest{round_}"
            call(port, "POST", "/indexes", json.dumps({"index_name": name, "dim": args.dim}).encode())
            call(port, "POST", "/init", json.dumps({"index_name": name, "mode": "build"}).encode())
            t = time.perf_counter()
            call(port, "POST", f"/ingest/batch?index_name={name}", payload, "application/octet-stream")
            rate = len(payload) / 2**20 / (time.perf_counter() - t)
            results[kind]["ingest_mb_s"] = max(results[kind]["ingest_mb_s"], rate)
            print(f"{kind}: ingest {rate:.1f} MB/s", flush=True)
    for kind, (_proc, port) in servers.items():
        create = {
            "index_name": "bench",
            "dim": args.dim,
            "delta_ratio": 0.1,
            "params": {"M": 16, "ef_construction": 200, "ef_search": 64, "rng_seed": 0, "build_n_threads": 2},
        }
        call(port, "POST", "/indexes", json.dumps(create).encode())
        call(port, "POST", "/init", json.dumps({"index_name": "bench", "mode": "build"}).encode())
        call(port, "POST", "/ingest/batch?index_name=bench", payload, "application/octet-stream")
        t = time.perf_counter()
        call(port, "POST", "/finalize", json.dumps({"index_name": "bench"}).encode())
        results[kind]["finalize_s"] = time.perf_counter() - t
        print(f"{kind}: finalize {results[kind]['finalize_s']:.1f} s", flush=True)
    for _round in range(2):
        for kind, (_proc, port) in servers.items():
            measured = search_load(port, queries, args.clients, args.seconds)
            best = results[kind].get("qps", 0.0)
            if measured["qps"] > best:
                results[kind].update(measured)
            print(f"{kind}: {measured['qps']:.0f} QPS, p99 {measured['p99_ms']:.2f} ms", flush=True)
    for proc, _port in servers.values():
        proc.terminate()
        proc.wait()
    tasks = task_throughput(tmp, args.items)

    o, b = results["ours"], results["brinicle"]
    lines = [
        "# HTTP benchmark",
        "",
        datasets.run_line(
            f"python benchmarks/bench_http.py --n {args.n} --dim {args.dim} --clients {args.clients} "
            f"--seconds {args.seconds:g} --items {args.items}",
            started,
        )
        + " Both servers on 127.0.0.1, one process each, same data (SIFT-like 100k x 128, squared L2) and params "
        "(M=16, ef_construction=200, efs=64, k=10); clients are separate processes with one persistent "
        "connection each, sharing the machine's 2 cores with the server. Search: best of two rounds, taken in turns.",
        "",
        "| | brinicle 0.1.3 server | brinicle-etl | ours / theirs |",
        "|---|---|---|---|",
        f"| `/ingest/batch`, {len(payload) / 2**20:.0f} MB in one request (best of two) | "
        f"{b['ingest_mb_s']:.1f} MB/s | "
        f"{o['ingest_mb_s']:.1f} MB/s | {o['ingest_mb_s'] / b['ingest_mb_s']:.1f}x |",
        f"| `/finalize` (build) | {b['finalize_s']:.1f} s | {o['finalize_s']:.1f} s | "
        f"{b['finalize_s'] / o['finalize_s']:.1f}x faster |",
        f"| `/search.bin`, {args.clients} clients | {b['qps']:,.0f} QPS | {o['qps']:,.0f} QPS | "
        f"{o['qps'] / b['qps']:.2f}x |",
        f"| `/search.bin` p50 latency | {b['p50_ms']:.2f} ms | {o['p50_ms']:.2f} ms | |",
        f"| `/search.bin` p99 latency | {b['p99_ms']:.2f} ms | {o['p99_ms']:.2f} ms | |",
        "",
        "Goal: ahead of brinicle on `/search.bin` QPS and p99, and on `/ingest/batch` MB/s.",
        "",
        "## Upsertion tasks",
        "",
        f"One task of {args.items:,} product texts (submit, embed with all-MiniLM-L6-v2 on the CPU, upsert in "
        "batches of 512, poll until `succeeded`) against `ingest()` called directly on the same items; "
        "the model is loaded in both beforehand; best of two rounds, in turns.",
        "",
        "| | items/s | against `ingest()` |",
        "|---|---|---|",
        f"| `ingest()` in process | {tasks['direct']:,.0f} | |",
        f"| upsertion task over HTTP | {tasks['task']:,.0f} | {tasks['task'] / tasks['direct']:.2f}x (goal >= 0.8x) |",
        "",
    ]
    datasets.write_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
