"""The quality gate: a fast embedding path is used only when its vectors match the f32 ones.

On a fixed set of check texts (short and long, made the same way in every process), a
path's vectors must have a mean cosine of at least :data:`COSINE_MIN` with the float32
vectors of the same model, and search over them must find at least :data:`RECALL_MIN` of
the neighbours that search over the float32 vectors finds (recall@10, every check text a
query against all the others).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["COSINE_MIN", "RECALL_MIN", "Quality", "check_texts", "measure"]

COSINE_MIN = 0.999
RECALL_MIN = 0.99
_K = 10

_VOCABULARY = (
    "waterproof hiking boots leather jacket wireless headphones noise cancelling stainless "
    "steel kitchen knife organic cotton shirt running shoes lightweight tent camping stove "
    "ceramic mug espresso machine grinder burr coffee beans dark roast green tea loose leaf "
    "kettle glass bottle insulated backpack laptop sleeve charger cable usb fast battery pack "
    "solar lantern flashlight wool socks merino thermal base layer rain coat umbrella compact "
    "travel pillow memory foam mattress queen bed sheets linen duvet cover blanket throw sofa "
    "cushion oak dining table chair desk lamp led bulb smart speaker voice assistant camera "
    "lens tripod drone remote control toy puzzle board game children book novel cookbook "
    "vegan recipes baking flour yeast sourdough pan cast iron skillet nonstick wok spatula "
    "cutting board bamboo towel bath robe shampoo soap sunscreen moisturizer face serum "
    "vitamin supplement protein powder yoga mat dumbbell bicycle helmet gloves scarf winter "
    "hat sunglasses watch strap ring necklace silver gold earrings garden hose shovel seeds "
    "tomato planter pot fertilizer lawn mower drill screwdriver hammer paint brush canvas "
    "pencil notebook fountain pen ink printer paper stapler folder shelf for with and the a "
    "in of to on by from red blue black white small large durable soft warm quiet portable "
    "adjustable washable recycled handmade premium budget classic modern vintage"
)


def check_texts() -> list[str]:
    """The gate's texts: 200 short (6-16 words) and 56 long (60-160 words), all distinct."""
    rng = random.Random(20261130)
    words = _VOCABULARY.split()
    texts: dict[str, None] = {}
    while len(texts) < 256:
        short = len(texts) < 200
        length = rng.randint(6, 16) if short else rng.randint(60, 160)
        texts[" ".join(rng.choice(words) for _ in range(length))] = None
    return list(texts)


@dataclass(frozen=True)
class Quality:
    """How close a path's vectors are to the float32 ones on the check texts."""

    cosine: float
    """Mean cosine similarity to the float32 vectors."""
    cosine_min: float
    recall_at_10: float
    """Share of the float32 search's 10 nearest neighbours that the path's vectors also find."""

    def passes(self) -> bool:
        return self.cosine >= COSINE_MIN and self.recall_at_10 >= RECALL_MIN

    def why(self) -> str:
        """What falls short, in words."""
        short = []
        if self.cosine < COSINE_MIN:
            short.append(f"mean cosine to f32 {self.cosine:.5f} (needs {COSINE_MIN})")
        if self.recall_at_10 < RECALL_MIN:
            short.append(f"recall@10 against f32 {self.recall_at_10:.3f} (needs {RECALL_MIN})")
        return ", ".join(short) or "passes"

    def __str__(self) -> str:
        return f"cosine {self.cosine:.5f}, recall@10 {self.recall_at_10:.3f}"

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quality:
        return cls(float(data["cosine"]), float(data["cosine_min"]), float(data["recall_at_10"]))


def measure(reference: np.ndarray, vectors: np.ndarray) -> Quality:
    """Compare ``vectors`` with the float32 ``reference`` of the same texts (one row each)."""
    ref = _unit(reference)
    got = _unit(vectors)
    cosine = np.sum(ref * got, axis=1)
    return Quality(float(cosine.mean()), float(cosine.min()), recall(ref, got))


def recall(reference: np.ndarray, vectors: np.ndarray, k: int = _K) -> float:
    """Recall@k of search over ``vectors`` against search over ``reference``: each row a query,
    the other rows the corpus, by cosine."""
    truth = _nearest(_unit(reference), k)
    found = _nearest(_unit(vectors), k)
    hits = sum(len(set(a) & set(b)) for a, b in zip(truth.tolist(), found.tolist(), strict=True))
    return hits / truth.size


def _nearest(vectors: np.ndarray, k: int) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1, norms)
