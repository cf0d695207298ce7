"""A deterministic, dependency-free embedder: hashed word and character-trigram features.

Texts that share words get similar vectors, so it is good enough for tests, demos and
offline smoke runs; it is not a language model. Model ids ``hash-<dim>`` select it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from brinicle_etl.errors import ConfigError

__all__ = ["HashEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """Feature hashing of lower-cased words (weight 1) and their character trigrams (weight 0.5)."""

    def __init__(self, dim: int = 64, *, model_id: str | None = None):
        if dim < 2:
            raise ConfigError(f"HashEmbedder needs dim >= 2; got {dim}")
        self.dim = dim
        self.model_id = model_id or f"hash-{dim}"

    def _features(self, text: str) -> list[tuple[int, float]]:
        feats: list[tuple[int, float]] = []
        for word in _WORD.findall(text.lower()):
            feats.append((zlib.crc32(word.encode()), 1.0))
            padded = f"#{word}#"
            feats.extend((zlib.crc32(padded[i : i + 3].encode()) ^ 0x5BD1E995, 0.5) for i in range(len(padded) - 2))
        return feats

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for h, weight in self._features(text):
                sign = 1.0 if (h >> 31) & 1 else -1.0
                out[row, h % self.dim] += sign * weight
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        out[empty, 0] = 1.0  # an empty text still gets a valid unit vector
        norms[empty] = 1.0
        out /= norms
        return out
