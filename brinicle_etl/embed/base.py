"""The embedder interface: one method, ``embed_batch``, that turns texts into vectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from brinicle_etl.errors import ConfigError

__all__ = ["Embedder", "embed_unique"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. ``dim`` is the vector length; ``model_id`` names the model."""

    model_id: str
    dim: int

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """A (len(texts), dim) float32 matrix, one row per text, in order."""
        ...


def embed_unique(embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """Embed ``texts``, computing each distinct text once; returns the vectors and how many were computed."""
    index: dict[str, int] = {}
    positions = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))
    if not index:
        return np.empty((0, embedder.dim), dtype=np.float32), 0
    unique = embedder.embed_batch(list(index))
    vectors = np.asarray(unique, dtype=np.float32)
    if vectors.shape != (len(index), embedder.dim):
        raise ConfigError(
            f"embedder {embedder.model_id!r} returned shape {vectors.shape} for {len(index)} texts, "
            f"expected ({len(index)}, {embedder.dim}); its dim must match what embed_batch returns"
        )
    return vectors[positions], len(index)
