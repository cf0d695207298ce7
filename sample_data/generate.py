"""Regenerate the sample data (deterministic): python sample_data/generate.py

Writes a product catalogue (products.csv), the next day's export of it
(products_day2.csv) and the catalogue with precomputed all-MiniLM-L6-v2 vectors
(products_vectors.parquet, needs the `embed` extra).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

CATALOGUE = {
    "footwear": [
        ("trail running shoes", "grippy lugged soles for muddy trails", ["mesh upper", "rock plate", "4 mm drop"]),
        (
            "waterproof hiking boots",
            "a waterproof membrane that keeps feet dry in rain and snow",
            ["full-grain leather", "ankle support", "Vibram outsole"],
        ),
        (
            "road running shoes",
            "light cushioning for daily miles on pavement",
            ["breathable knit", "foam midsole", "reflective heel"],
        ),
        ("approach shoes", "sticky rubber for scrambling over rock", ["suede upper", "climbing lacing", "toe rand"]),
        (
            "winter snow boots",
            "insulation rated to minus thirty degrees",
            ["faux fur lining", "rubber shell", "gaiter ring"],
        ),
        ("sport sandals", "quick-drying straps for rivers and beaches", ["adjustable straps", "contoured footbed"]),
        ("slip-on sneakers", "easy everyday comfort for city walks", ["canvas upper", "memory foam insole"]),
    ],
    "apparel": [
        ("rain jacket", "a packable shell that sheds heavy rain", ["taped seams", "adjustable hood", "pit zips"]),
        ("down jacket", "warm goose down for cold, dry days", ["800-fill down", "packs into its pocket"]),
        ("fleece pullover", "a soft mid layer for chilly mornings", ["recycled polyester", "quarter zip"]),
        (
            "merino base layer",
            "a wool layer that regulates temperature and resists odour",
            ["flatlock seams", "thumb loops"],
        ),
        ("hiking trousers", "stretchy trousers that convert to shorts", ["zip-off legs", "UPF 50 fabric"]),
        ("running tights", "compression tights for long runs", ["phone pocket", "reflective details"]),
        ("sun hoodie", "a light hoodie that blocks UV on hot trails", ["UPF 50", "cooling fabric"]),
        ("insulated gloves", "warm gloves with touchscreen fingertips", ["waterproof insert", "leather palm"]),
    ],
    "camping": [
        ("backpacking tent", "a two-person tent light enough for long treks", ["freestanding", "two doors", "1.4 kg"]),
        ("sleeping bag", "a mummy bag for three-season camping", ["synthetic fill", "rated to minus five"]),
        ("sleeping pad", "an inflatable pad that packs small", ["R-value 4.2", "quiet fabric"]),
        ("camping stove", "a compact gas stove that boils water fast", ["piezo ignition", "wind shield"]),
        ("headlamp", "a bright rechargeable lamp for night hikes", ["400 lumens", "red light mode", "USB-C"]),
        ("camp chair", "a folding chair that weighs under a kilo", ["aluminium frame", "carry bag"]),
        (
            "water filter",
            "a squeeze filter that makes stream water safe to drink",
            ["0.1 micron", "fits standard bottles"],
        ),
        ("cooler box", "an insulated cooler that keeps ice for days", ["rotomolded", "bear resistant"]),
    ],
    "packs": [
        ("daypack", "a 20 litre pack for day hikes", ["hydration sleeve", "hip belt pockets"]),
        ("backpacking pack", "a 60 litre pack for multi-day trips", ["adjustable torso", "rain cover"]),
        ("running vest", "a snug vest that carries water and gels", ["soft flasks", "stretch pockets"]),
        ("duffel bag", "a tough waterproof bag for travel and gear hauling", ["backpack straps", "lockable zips"]),
        ("camera sling", "a sling bag that keeps a camera within reach", ["padded dividers", "quick access"]),
    ],
    "kitchen": [
        (
            "insulated water bottle",
            "keeps drinks cold for 24 hours or hot for 12",
            ["stainless steel", "leakproof lid"],
        ),
        ("coffee grinder", "a burr grinder for consistent grounds", ["40 settings", "ceramic burrs"]),
        ("cast iron skillet", "a pre-seasoned pan that goes from stove to oven", ["12 inch", "helper handle"]),
        ("chef's knife", "a balanced knife for everyday chopping", ["high-carbon steel", "8 inch blade"]),
        ("french press", "brews rich coffee without paper filters", ["borosilicate glass", "double filter"]),
        ("lunch box", "keeps meals fresh with separate compartments", ["microwave safe", "leakproof"]),
    ],
    "electronics": [
        ("wireless earbuds", "noise cancelling earbuds with long battery life", ["8 hours playback", "IPX4"]),
        ("portable power bank", "charges a phone four times over", ["20000 mAh", "USB-C fast charge"]),
        ("gps watch", "tracks routes, pace and heart rate outdoors", ["solar charging", "offline maps"]),
        ("action camera", "records 4K video on bikes, boards and trails", ["waterproof to 10 m", "stabilisation"]),
        ("bluetooth speaker", "a rugged speaker for campsites and beaches", ["floats", "12 hours battery"]),
        ("e-reader", "a glare-free screen for reading in sunlight", ["warm light", "waterproof"]),
    ],
}

BRANDS = ["Northpeak", "Alder & Co", "Fjordline", "Summit Supply", "Kestrel", "Tidewater", "Granite Works", "Lumen"]
COLOURS = ["black", "slate blue", "forest green", "ember red", "sand", "charcoal", "ice grey", "sunflower"]
EXTRAS = [
    "Built to last for years of use.",
    "Backed by a two-year warranty.",
    "Made with recycled materials where possible.",
    "A favourite of our staff for weekend trips.",
    "Easy to clean and quick to dry.",
    "Tested on alpine routes and coastal paths.",
]
PRICE_RANGE = {
    "footwear": (59, 219),
    "apparel": (29, 349),
    "camping": (19, 499),
    "packs": (39, 289),
    "kitchen": (14, 169),
    "electronics": (39, 399),
}
COLUMNS = ["product_id", "title", "description", "category", "brand", "price", "in_stock"]


def make_catalogue(rng: random.Random, n: int) -> list[dict[str, object]]:
    rows = []
    seen = set()
    while len(rows) < n:
        category = rng.choice(list(CATALOGUE))
        name, purpose, features = rng.choice(CATALOGUE[category])
        brand, colour = rng.choice(BRANDS), rng.choice(COLOURS)
        title = f"{brand} {name.title()} ({colour})"
        if title in seen:
            continue
        seen.add(title)
        picked = rng.sample(features, k=min(len(features), rng.choice([1, 2])))
        description = f"{name.capitalize()}: {purpose}. Features: {', '.join(picked)}. {rng.choice(EXTRAS)}"
        low, high = PRICE_RANGE[category]
        rows.append(
            {
                "product_id": 1000 + len(rows) + 1,
                "title": title,
                "description": description,
                "category": category,
                "brand": brand,
                "price": round(rng.uniform(low, high)) - 0.01,
                "in_stock": rng.random() > 0.15,
            }
        )
    return rows


def next_day(rng: random.Random, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Tomorrow's export: some prices change, some descriptions change, some rows go, new ones come."""
    day2 = [dict(r) for r in rows]
    rng.shuffle(day2)
    day2 = day2[10:]  # ten products were discontinued
    for r in day2[:25]:  # price or stock changes: the row changes, its text does not
        r["price"] = round(float(r["price"]) * rng.choice([0.8, 0.9, 1.1]), 2)  # type: ignore[arg-type]
        r["in_stock"] = not r["in_stock"]
    for r in day2[25:40]:  # rewritten descriptions: re-embedded
        r["description"] = str(r["description"]).replace("Features:", "Now with") + " Updated for this season."
    fresh = make_catalogue(random.Random(99), 30)
    for i, r in enumerate(fresh):
        r["product_id"] = 2000 + i
    day2.extend(fresh)
    day2.sort(key=lambda r: int(r["product_id"]))  # type: ignore[call-overload]
    return day2


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "price": f"{float(r['price']):.2f}", "in_stock": str(r["in_stock"]).lower()})  # type: ignore[arg-type]


def write_vectors(path: Path, rows: list[dict[str, object]]) -> None:
    import os

    import polars as pl

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from brinicle_etl.embed import ModelRegistry

    embedder = ModelRegistry().embedder("all-MiniLM-L6-v2")
    texts = [f"{r['title']}\n{r['description']}" for r in rows]
    vectors = embedder.embed_batch(texts)
    frame = pl.DataFrame(
        {
            "product_id": [r["product_id"] for r in rows],
            "title": [r["title"] for r in rows],
            "category": [r["category"] for r in rows],
            "price": [float(r["price"]) for r in rows],  # type: ignore[arg-type]
            "embedding": pl.Series(vectors.tolist(), dtype=pl.Array(pl.Float32, vectors.shape[1])),
        }
    )
    frame.write_parquet(path)


def main() -> None:
    rng = random.Random(7)
    catalogue = make_catalogue(rng, 300)
    write_csv(HERE / "products.csv", catalogue)
    write_csv(HERE / "products_day2.csv", next_day(rng, catalogue))
    write_vectors(HERE / "products_vectors.parquet", catalogue)
    print("wrote products.csv, products_day2.csv, products_vectors.parquet")


if __name__ == "__main__":
    main()
