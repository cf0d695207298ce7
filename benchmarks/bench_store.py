"""The collection store against raw usearch, hnswlib and faiss, side by side in one run.

For each data set (by default 100k x 384 text-like unit vectors, cosine, and 100k x 128
SIFT-like, squared L2; ``--datasets`` names others as ``text<dim>`` or ``sift<dim>``)
and each engine, in a fresh process each so peak RSS is the engine's own:

- build: our ``finalize`` of a staged build against ``usearch.Index.add`` with the same
  params and dtype (goal: >= 0.9x), and hnswlib / faiss HNSW;
- search: recall@10 and single-thread QPS over an ef sweep; QPS at the smallest ef
  reaching recall@10 >= 0.95 (goal: ours >= 0.9x raw usearch; compared with hnswlib
  and faiss at the same recall); batch QPS on every core. Our i8 re-scores its candidates
  on the vectors kept beside the graph; raw usearch at i8 never reaches 0.95, so ours is
  compared with raw usearch's fastest dtype that does;
- for our default dtype (per metric, ``types.default_dtype``): inserting 1,000 rows into
  the 100k collection against a full rebuild (goal: < 5%).

Usage: python benchmarks/bench_store.py [--n 100000] [--queries 1000] [--datasets text64,text384]
       [--dtypes bf16,f16,i8] [--out F]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

EFS = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
M, EF_CONSTRUCTION = 16, 200
TARGET_RECALL = 0.95
DTYPES = "f32,bf16,f16,i8"
DATASETS = "text384,sift128"
OUT = Path(__file__).resolve().parent / "results" / "store.md"


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def kind(dataset: str) -> tuple[Any, int, str]:
    """A data set's generator, width and metric from its name: ``text<dim>`` (cosine) or
    ``sift<dim>`` (squared L2), e.g. ``text384``, ``text64``, ``sift128``."""
    match = re.fullmatch(r"(text|sift)(\d+)", dataset)
    if match is None:
        raise SystemExit(f"unknown data set {dataset!r}: name it text<dim> or sift<dim>, e.g. text64")
    if match[1] == "text":
        return datasets.text_like, int(match[2]), "cosine"
    return datasets.sift_like, int(match[2]), "l2sq"


def load(dataset: str, n: int, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    gen, dim, metric = kind(dataset)
    data = np.ascontiguousarray(datasets.cached(f"{dataset}-{n}", gen, n, dim, seed=1))
    queries = np.ascontiguousarray(datasets.cached(f"{dataset}-q{nq}", gen, nq, dim, seed=2))
    truth = datasets.cached(f"{dataset}-{n}-gt{nq}", datasets.ground_truth, data, queries, 10, metric)
    return data, queries, np.asarray(truth), metric


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))


class Engine:
    """One engine's build and search, in a uniform shape for the sweep."""

    def build(self, data: np.ndarray) -> None: ...
    def set_ef(self, ef: int) -> None: ...
    def search_one(self, q: np.ndarray) -> Any: ...
    def search_batch(self, qs: np.ndarray) -> None: ...

    def ids(self, found: Any) -> np.ndarray:
        return np.asarray(found)


class RawUsearch(Engine):
    def __init__(self, dtype: str, metric: str):
        from usearch.index import Index

        m = {"cosine": "cos", "l2sq": "l2sq"}[metric]
        self.index = Index(ndim=0, metric=m, dtype=dtype)
        self.make = lambda dim: Index(
            ndim=dim, metric=m, dtype=dtype, connectivity=M, expansion_add=EF_CONSTRUCTION, expansion_search=64
        )

    def build(self, data: np.ndarray) -> None:
        self.index = self.make(data.shape[1])
        self.index.add(np.arange(len(data), dtype=np.uint64), data, threads=0)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.search(q, 10, threads=1).keys

    def search_batch(self, qs: np.ndarray) -> None:
        self.index.search(qs, 10, threads=0)


class RerankedUsearch(RawUsearch):
    """An experiment, not a product path: i8 candidates (4k of them) re-ranked by exact float32 distances."""

    def __init__(self, metric: str):
        super().__init__("i8", metric)
        self.metric = metric

    def build(self, data: np.ndarray) -> None:
        super().build(data)
        self.data = data

    def search_one(self, q: np.ndarray) -> Any:
        keys = self.index.search(q, 40, threads=1).keys
        cand = self.data[keys]
        scores = cand @ q
        return keys[np.argsort(-scores)[:10]]

    def search_batch(self, qs: np.ndarray) -> None:
        for q in qs:
            self.search_one(q)


class SameFile(RawUsearch):
    """Raw usearch searching our collection's own main file: isolates the cost of our layer."""

    def __init__(self, path: Path, ef: int):
        from usearch.index import Index

        self.index = Index.restore(str(path), view=True)
        self.index.expansion_search = ef

    def build(self, data: np.ndarray) -> None:
        pass


class Ours(Engine):
    def __init__(self, dtype: str, metric: str, directory: Path):
        import brinicle_etl  # noqa: F401  (imported before the RSS baseline, like the others' modules)

        self.dtype, self.metric, self.directory = dtype, metric, directory
        self.ef = 64
        self.stage_seconds = 0.0

    def build(self, data: np.ndarray) -> None:
        from brinicle_etl import Collection, HnswParams

        self.col = Collection.create(
            self.directory / "c",
            dim=data.shape[1],
            metric=self.metric,  # type: ignore[arg-type]
            dtype=self.dtype,  # type: ignore[arg-type]
            params=HnswParams(M=M, ef_construction=EF_CONSTRUCTION),
        )
        self.keys = [f"doc-{i}" for i in range(len(data))]
        started = time.perf_counter()
        self.col.init("build")
        for s in range(0, len(data), 20_000):
            self.col.ingest_batch(self.keys[s : s + 20_000], data[s : s + 20_000])
        self.stage_seconds = time.perf_counter() - started
        # The timed part (the caller times build()) continues with finalize only.

    def finalize(self) -> None:
        self.col.finalize()

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def search_one(self, q: np.ndarray) -> Any:
        return self.col.search(q, 10, ef=self.ef)

    def ids(self, found: Any) -> np.ndarray:
        return np.array([int(h.id[4:]) for h in found])

    def search_batch(self, qs: np.ndarray) -> None:
        self.col.search_batch(qs, 10, ef=self.ef, threads=0)


class Hnswlib(Engine):
    def __init__(self, metric: str):
        import hnswlib  # noqa: F401

        self.space = {"cosine": "cosine", "l2sq": "l2"}[metric]

    def build(self, data: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space=self.space, dim=data.shape[1])
        self.index.init_index(max_elements=len(data), ef_construction=EF_CONSTRUCTION, M=M)
        self.index.add_items(data, np.arange(len(data)), num_threads=os.cpu_count() or 1)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search_one(self, q: np.ndarray) -> np.ndarray:
        return self.index.knn_query(q, k=10, num_threads=1)[0][0]

    def search_batch(self, qs: np.ndarray) -> None:
        self.index.knn_query(qs, k=10, num_threads=os.cpu_count() or 1)


class Faiss(Engine):
    def __init__(self, metric: str):
        import faiss  # noqa: F401

        self.metric = metric

    def build(self, data: np.ndarray) -> None:
        import faiss

        kind = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        self.index = faiss.IndexHNSWFlat(data.shape[1], M, kind)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(data)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search_one(self, q: np.ndarray) -> np.ndarray:
        import faiss

        faiss.omp_set_num_threads(1)
        return self.index.search(q.reshape(1, -1), 10)[1][0]

    def search_batch(self, qs: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        self.index.search(qs, 10)


def make_engine(config: dict[str, Any], metric: str, tmp: Path) -> Engine:
    kind, dtype = config["engine"], config.get("dtype", "f32")
    if kind == "ours":
        return Ours(dtype, metric, tmp / f"ours-{dtype}")
    if kind == "usearch":
        return RawUsearch(dtype, metric)
    if kind == "usearch-rerank":
        return RerankedUsearch(metric)
    if kind == "hnswlib":
        return Hnswlib(metric)
    return Faiss(metric)


def run_dataset(dataset: str, configs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Build every engine in this process, then measure their searches interleaved.

    The machine is shared and noisy: interleaving (and keeping the best of three rounds)
    makes each engine see the same conditions, so the ratios hold even when absolute
    numbers drift.
    """
    data, queries, truth, metric = load(dataset, args.n, args.queries)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    engines: list[tuple[dict[str, Any], Engine]] = []
    results: list[dict[str, Any]] = []
    for config in configs:
        engine = make_engine(config, metric, tmp)
        rss_before = rss_bytes()
        started = time.perf_counter()
        engine.build(data)
        if isinstance(engine, Ours):
            started = time.perf_counter()
            engine.finalize()
        out: dict[str, Any] = {**config, "build_seconds": time.perf_counter() - started, "sweep": []}
        out["rss_delta"] = rss_bytes() - rss_before
        if isinstance(engine, Ours):
            out["stage_seconds"] = engine.stage_seconds
            out["disk_bytes"] = engine.col.status().bytes_on_disk
        print(
            f"{dataset:8} {config['engine']:8} {config.get('dtype', 'f32'):5} built in {out['build_seconds']:.1f}s",
            flush=True,
        )
        engines.append((config, engine))
        results.append(out)
        if isinstance(engine, Ours) and config.get("insert_vs_rebuild"):
            main = next(engine.directory.glob("c/main-*.usearch"))
            same = {**config, "engine": "usearch on our file", "insert_vs_rebuild": False}
            engines.append((same, SameFile(main, 64)))
            results.append({**same, "build_seconds": 0.0, "sweep": []})

    active = list(range(len(engines)))
    for ef in EFS:
        if not active:
            break
        best = {i: 0.0 for i in active}
        found: dict[int, list[Any]] = {}
        for _round in range(3):
            for i in active:
                engine = engines[i][1]
                engine.set_ef(ef)
                for q in queries[:50]:
                    engine.search_one(q)
                t = time.perf_counter()
                found[i] = [engine.search_one(q) for q in queries]
                best[i] = max(best[i], len(queries) / (time.perf_counter() - t))
        for i in list(active):
            engine = engines[i][1]
            r = recall([engine.ids(f) for f in found[i]], truth)
            results[i]["sweep"].append({"ef": ef, "recall": r, "qps": best[i]})
            if r >= 0.99:
                active.remove(i)
    for _round in range(3):
        for i, (_config, engine) in enumerate(engines):
            engine.set_ef(at_target(results[i])["ef"])
            t = time.perf_counter()
            engine.search_batch(queries)
            results[i]["batch_qps"] = max(results[i].get("batch_qps", 0.0), len(queries) / (time.perf_counter() - t))

    for i, (config, engine) in enumerate(engines):
        if isinstance(engine, Ours) and config.get("insert_vs_rebuild"):
            gen, dim, _metric = kind(dataset)
            extra = gen(1000, dim, seed=3)
            t = time.perf_counter()
            engine.col.write([f"new-{j}" for j in range(1000)], extra, mode="insert")
            results[i]["insert_1000_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            engine.col.rebuild()
            results[i]["rebuild_seconds"] = time.perf_counter() - t
    return results


def peak_rss(config: dict[str, Any]) -> int:
    """Runs in a fresh process: build one engine and search it; the process's peak RSS."""
    data, queries, _truth, metric = load(config["dataset"], config["n"], config["queries"])
    engine = make_engine(config, metric, Path(tempfile.mkdtemp(prefix="bench_store_rss_")))
    engine.build(data)
    if isinstance(engine, Ours):
        engine.finalize()
    for q in queries:
        engine.search_one(q)
    return datasets.peak_rss_bytes()


def default_for(args: argparse.Namespace, dataset: str) -> str:
    """The dtype whose insert and memory are measured: ``--default-dtype``, else the default
    for the data set's metric."""
    from brinicle_etl.types import default_dtype

    return str(args.default_dtype or default_dtype(kind(dataset)[2]))


def at_target(result: dict[str, Any]) -> dict[str, Any]:
    return next((s for s in result["sweep"] if s["recall"] >= TARGET_RECALL), result["sweep"][-1])


def report(results: list[dict[str, Any]], args: argparse.Namespace, started: float) -> str:
    lines = [
        "# Store benchmark",
        "",
        datasets.run_line(
            f"python benchmarks/bench_store.py --n {args.n} --queries {args.queries}"
            + (f" --datasets {args.datasets}" if args.datasets != DATASETS else "")
            + (f" --dtypes {args.dtypes}" if args.dtypes != DTYPES else "")
            + (f" --default-dtype {args.default_dtype}" if args.default_dtype else "")
            + (f" --out {args.out}" if args.out != OUT else ""),
            started,
        )
        + f" HNSW M={M}, ef_construction={EF_CONSTRUCTION}; every engine built with all cores, "
        "searched one query at a time on one thread. All engines of a data set live in one process and are "
        "searched in turns, best of three rounds, so they share the machine's conditions.",
        "",
        "Data: synthetic, from `benchmarks/datasets.py`: `text<dim>` are unit vectors with topical clusters "
        "on a low-dimensional manifold (cosine), `sift<dim>` non-negative clustered integer vectors (squared L2). "
        "Queries are held out from the same distribution; recall@10 is against exact search.",
        "",
    ]
    lines += ["## Summary against the goals", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        dtype = default_for(args, dataset)
        ours = next((r for r in rows if r["engine"] == "ours" and r["dtype"] == dtype), None)
        if ours is None:
            continue
        raw = next(r for r in rows if r["engine"] == "usearch" and r["dtype"] == dtype)
        o = at_target(ours)
        same_ef = next(s for s in raw["sweep"] if s["ef"] == o["ef"])
        parts = [
            f"build {raw['build_seconds'] / ours['build_seconds']:.2f}x raw usearch (goal >= 0.9x)",
            f"QPS {o['qps'] / same_ef['qps']:.2f}x raw usearch at ef={o['ef']} (goal >= 0.9x)",
        ]
        if same_ef["recall"] < TARGET_RECALL:
            # Re-scored (i8): raw usearch at this dtype is faster at the same ef but never
            # reaches the target; the fair reference is raw usearch's fastest dtype that does.
            reaching = [(r, at_target(r)) for r in rows if r["engine"] == "usearch"]
            reached = [(r, t) for r, t in reaching if t["recall"] >= TARGET_RECALL]
            if not reached:
                parts[1] = f"no raw usearch dtype measured reaches recall {TARGET_RECALL}"
            else:
                best, b = max(reached, key=lambda p: p[1]["qps"])
                parts[1] = (
                    f"raw usearch {dtype} alone tops out at recall {max(s['recall'] for s in raw['sweep']):.3f}; "
                    f"QPS {o['qps'] / b['qps']:.2f}x raw usearch's fastest dtype reaching {TARGET_RECALL} "
                    f"({best['dtype']}, ef={b['ef']}, recall {b['recall']:.3f}; ours {o['recall']:.3f})"
                )
        mine = sorted(((r["dtype"], at_target(r)) for r in rows if r["engine"] == "ours"), key=lambda p: -p[1]["qps"])
        parts.append(
            f"ours by dtype at recall@10 >= {TARGET_RECALL}: "
            + ", ".join(f"{d} {t['qps']:,.0f} QPS ({t['recall']:.3f})" for d, t in mine)
        )
        same_file = next((r for r in rows if r["engine"] == "usearch on our file"), None)
        if same_file is not None:
            sf = next(s for s in same_file["sweep"] if s["ef"] == o["ef"])
            parts.append(f"{o['qps'] / sf['qps']:.2f}x raw usearch searching our own index file (our layer's cost)")
        for other in ("hnswlib", "faiss"):
            r = next((x for x in rows if x["engine"] == other), None)
            if r is not None:
                t = at_target(r)
                parts.append(
                    f"{o['qps'] / t['qps']:.2f}x {other}'s QPS "
                    f"(ours recall {o['recall']:.3f}, theirs {t['recall']:.3f})"
                )
        if "insert_1000_seconds" in ours:
            parts.append(f"insert of 1,000 = {ours['insert_1000_seconds'] / ours['rebuild_seconds']:.1%} of a rebuild")
        lines.append(f"- **{dataset}**, {dtype} (the default for its metric): " + "; ".join(parts) + ".")
    lines.append("")
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        raw = {r.get("dtype"): r for r in rows if r["engine"] == "usearch"}
        lines += [
            f"## {dataset} ({args.n:,} vectors)",
            "",
            "| engine | dtype | build s | vectors/s | build vs raw usearch | ef at recall>=0.95 | recall@10 | "
            "QPS 1 thread | QPS vs raw usearch | batch QPS | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            t = at_target(r)
            base = raw.get(r.get("dtype")) if r["engine"] == "ours" else None
            build_ratio = f"{base['build_seconds'] / r['build_seconds']:.2f}x" if base else ""
            qps_ratio = ""
            if base:
                same_ef = next((s for s in base["sweep"] if s["ef"] == t["ef"]), None)
                if same_ef:
                    qps_ratio = f"{t['qps'] / same_ef['qps']:.2f}x"
            peak = f"{r['peak_rss'] / 2**20:,.0f}" if "peak_rss" in r else ""
            build = f"{r['build_seconds']:.1f} | {args.n / r['build_seconds']:,.0f}" if r["build_seconds"] else " | "
            lines.append(
                f"| {r['engine']} | {r.get('dtype', 'f32')} | {build} | {build_ratio} | {t['ef']} | "
                f"{t['recall']:.3f} | {t['qps']:,.0f} | {qps_ratio} | {r['batch_qps']:,.0f} | {peak} |"
            )
        lines += ["", "Recall@10 / single-thread QPS by ef:", ""]
        lines += ["| engine | dtype | " + " | ".join(f"ef={ef}" for ef in EFS) + " |"]
        lines += ["|---|---|" + "---|" * len(EFS)]
        for r in rows:
            cells = {s["ef"]: f"{s['recall']:.3f} / {s['qps']:,.0f}" for s in r["sweep"]}
            lines.append(
                f"| {r['engine']} | {r.get('dtype', 'f32')} | " + " | ".join(cells.get(ef, "") for ef in EFS) + " |"
            )
        for r in rows:
            if "insert_1000_seconds" in r:
                share = r["insert_1000_seconds"] / r["rebuild_seconds"]
                lines += [
                    "",
                    f"Insert of 1,000 rows into the {args.n:,}-row collection ({r['dtype']}): "
                    f"{r['insert_1000_seconds']:.2f} s, against {r['rebuild_seconds']:.1f} s for a full rebuild "
                    f"= {share:.1%} of it (goal < 5%). Staging the build through `ingest_batch` took "
                    f"{r['stage_seconds']:.1f} s on top of the finalize; {r['disk_bytes'] / 2**20:.0f} MB on disk. "
                    "Peak RSS (VmHWM) is of a fresh process that builds and searches one engine alone; each "
                    f"holds the {args.n:,} source vectors in float32 "
                    f"({args.n * kind(dataset)[1] * 4 / 2**20:,.0f} MB) while it builds.",
                ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--datasets", default=DATASETS, help="text<dim> (cosine) or sift<dim> (l2sq), comma-separated")
    parser.add_argument("--dtypes", default=DTYPES)
    parser.add_argument(
        "--default-dtype", help="the dtype measured for insert and memory (default: the metric's, types.default_dtype)"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    started = time.time()
    configs = []
    for dataset in args.datasets.split(","):
        for dtype in args.dtypes.split(","):
            if dtype == "i8" and kind(dataset)[2] != "cosine":
                continue  # i8 suits cosine only; the store refuses it with l2sq
            base = {"dataset": dataset, "n": args.n, "queries": args.queries, "dtype": dtype}
            configs.append({**base, "engine": "usearch"})
            configs.append({**base, "engine": "ours", "insert_vs_rebuild": dtype == default_for(args, dataset)})
        for engine in ("hnswlib", "faiss"):
            configs.append({"dataset": dataset, "n": args.n, "queries": args.queries, "engine": engine})
        if kind(dataset)[2] == "cosine" and "i8" in args.dtypes:
            configs.append(
                {"dataset": dataset, "n": args.n, "queries": args.queries, "engine": "usearch-rerank", "dtype": "i8"}
            )
    # Generate the data and ground truth once, before anything is timed.
    for dataset in args.datasets.split(","):
        load(dataset, args.n, args.queries)
    results: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    for dataset in args.datasets.split(","):
        results += run_dataset(dataset, [c for c in configs if c["dataset"] == dataset], args)
        for r in results:
            if r["dataset"] != dataset or r["engine"] == "usearch-rerank":
                continue
            mine = default_for(args, dataset)
            if r.get("dtype", mine) == mine or r["engine"] in ("hnswlib", "faiss"):
                with ctx.Pool(1) as pool:
                    r["peak_rss"] = pool.apply(peak_rss, (r,))
    datasets.write_report(args.out, report(results, args, started))
    plot(results, args.out.with_suffix(".png"))


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Recall@10 against single-thread QPS over the ef sweep: one curve per engine and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 5), squeeze=False)
    styles = {"ours": "-", "usearch": "--", "usearch on our file": ":", "hnswlib": "-.", "faiss": "-."}
    for ax, dataset in zip(axes[0], sets, strict=True):
        for r in results:
            if r["dataset"] != dataset or not r["sweep"]:
                continue
            label = r["engine"] if r["engine"] in ("hnswlib", "faiss") else f"{r['engine']} {r.get('dtype', 'f32')}"
            ax.plot(
                [s["recall"] for s in r["sweep"]],
                [s["qps"] for s in r["sweep"]],
                styles.get(r["engine"], "-"),
                marker="o" if r["engine"] == "ours" else ".",
                linewidth=2.2 if r["engine"] == "ours" else 1.2,
                label=label,
            )
        ax.axvline(TARGET_RECALL, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries/s, one thread")
        ax.set_yscale("log")
        ax.set_title(f"{dataset}: recall against speed (up and right is better)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
