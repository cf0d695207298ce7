from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brinicle_etl import Collection, Store

# The embedding model must load from the installed package, never from a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


def build_one(path: Path, keys: np.ndarray, vectors: np.ndarray, config: Any, params: Any) -> Any:
    """One usearch graph of ``vectors`` under ``keys`` written to ``path`` (a SegmentInfo)."""
    from brinicle_etl.store.segment import SegmentBuilder

    builder = SegmentBuilder(config, params, directory=path.parent)
    builder.add(keys, vectors)
    return builder.save(path)


def clustered(n: int, dim: int, *, seed: int = 0, centers: int = 32, normalize: bool = True) -> np.ndarray:
    """Vectors around a few centres, like text embeddings (random i.i.d. data is useless for recall)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_knn(data: np.ndarray, queries: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    if metric == "l2sq":
        d = (queries**2).sum(1)[:, None] - 2 * queries @ data.T + (data**2).sum(1)[None, :]
    elif metric == "ip":
        d = 1 - queries @ data.T
    else:
        qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        dn = data / np.linalg.norm(data, axis=1, keepdims=True)
        d = 1 - qn @ dn.T
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def deferred(col: Collection, keys: list[str], vectors: np.ndarray, *, delete: list[str] = ()) -> None:
    """An upsert that leaves its vectors pending (``defer_index=True``), deleting ``delete`` too."""
    import pyarrow as pa

    with col.transaction("upsert", defer_index=True) as tx:
        tx.add(pa.array(keys, pa.string()), vectors)
        if delete:
            tx.delete(pa.array(delete, pa.string()))
        tx.commit()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


class CountingEmbedder:
    """The hashing embedder, counting every text it is asked to embed."""

    def __init__(self, dim: int = 32):
        from brinicle_etl.embed import HashEmbedder

        self._inner = HashEmbedder(dim, model_id=f"hash-{dim}")
        self.dim = dim
        self.model_id = self._inner.model_id
        self.calls: list[int] = []
        self.texts: list[str] = []

    def embed_batch(self, texts):  # type: ignore[no-untyped-def]
        self.calls.append(len(texts))
        self.texts.extend(texts)
        return self._inner.embed_batch(texts)


@pytest.fixture
def counting() -> CountingEmbedder:
    return CountingEmbedder()
