"""Synthetic vectors shaped like real ones, cached under benchmarks/.cache (not committed).

Text embeddings sit near a low-dimensional manifold, in topical clusters; image
descriptors (SIFT) are non-negative and clustered too. Uniform random vectors are
neither and make every HNSW look bad, so the generators here draw points from a
mixture of Gaussians in a small latent space and project them up.

Also what every benchmark's results file shares: its opening line and how it is written.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"


def _latent_mixture(n: int, latent: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.standard_normal((clusters, latent)) * 1.0
    scales = rng.uniform(0.35, 0.9, clusters)
    which = rng.integers(0, clusters, n)
    return centers[which] + scales[which, None] * rng.standard_normal((n, latent))


class World:
    """Cluster centres and a projection; ``sample`` draws points (data or queries) from it."""

    def __init__(self, dim: int, *, latent: int, clusters: int, seed: int):
        rng = np.random.default_rng(seed)
        self.centers = rng.standard_normal((clusters, latent))
        self.scales = rng.uniform(0.4, 1.0, clusters)
        self.proj = rng.standard_normal((latent, dim)) / np.sqrt(latent)
        self.dim = dim

    def sample(self, n: int, *, seed: int, noise: float) -> np.ndarray:
        rng = np.random.default_rng(seed)
        which = rng.integers(0, len(self.centers), n)
        z = self.centers[which] + self.scales[which, None] * rng.standard_normal((n, self.centers.shape[1]))
        return z @ self.proj + noise * rng.standard_normal((n, self.dim))


def text_like(
    n: int,
    dim: int = 384,
    *,
    seed: int = 0,
    world_seed: int = 0,
    latent: int = 24,
    clusters: int = 1000,
    noise: float = 1.2,
) -> np.ndarray:
    """Unit vectors with a low intrinsic dimension and topical clusters, like sentence embeddings."""
    x = World(dim, latent=latent, clusters=clusters, seed=world_seed).sample(n, seed=seed, noise=noise)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def sift_like(
    n: int,
    dim: int = 128,
    *,
    seed: int = 0,
    world_seed: int = 0,
    latent: int = 24,
    clusters: int = 500,
    noise: float = 0.75,
) -> np.ndarray:
    """Non-negative, clustered, integer-valued vectors compared with squared L2, like SIFT descriptors."""
    x = World(dim, latent=latent, clusters=clusters, seed=world_seed).sample(n, seed=seed, noise=noise)
    return np.round(np.clip(25 * x + 20, 0, 255)).astype(np.float32)


def product_texts(n: int) -> list[str]:
    """Short product descriptions, varied enough that no two embed alike."""
    rng = np.random.default_rng(3)
    adjectives = ["waterproof", "lightweight", "insulated", "packable", "durable", "compact", "breathable", "warm"]
    things = ["hiking boots", "rain jacket", "tent", "sleeping bag", "water bottle", "headlamp", "daypack", "stove"]
    uses = ["for alpine routes", "for city commutes", "for rainy weekends", "for winter camping", "for long trails"]
    return [
        f"{rng.choice(adjectives)} {rng.choice(things)} {rng.choice(uses)}, item {i}. "
        f"Made to last, with {rng.choice(adjectives)} materials."
        for i in range(n)
    ]


def cached(name: str, make: callable, *args: object, **kwargs: object) -> np.ndarray:  # type: ignore[valid-type]
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}.npy"
    if not path.exists():
        np.save(path, make(*args, **kwargs))
    return np.load(path, mmap_mode="r")


def ground_truth(data: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact top-k by blocks of queries (float64 accumulation for stable ties)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    data64 = np.asarray(data, dtype=np.float32)
    sq = (data64.astype(np.float64) ** 2).sum(1)
    for start in range(0, len(queries), 256):
        q = np.asarray(queries[start : start + 256], dtype=np.float32)
        dots = q @ data64.T
        d = sq[None, :] - 2 * dots if metric == "l2sq" else -dots
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, 1).argsort(1, kind="stable")
        out[start : start + 256] = np.take_along_axis(part, order, 1)
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM).

    Not ``ru_maxrss``: on Linux that carries the parent's peak over fork and exec, so a
    fresh worker process would report its parent's memory.
    """
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def run_line(command: str, started: float) -> str:
    """How a results file opens: the command, this machine, the date and how long the run took."""
    return (
        f"`{command}` on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s in all."
    )


def write_report(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
