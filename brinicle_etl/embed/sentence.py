"""sentence-transformers models, run on the fastest path that keeps their quality.

The model loads, and its path is chosen (:func:`brinicle_etl.embed.runtime.choose`), on the
first ``embed_batch``; both are kept for the process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brinicle_etl.embed.engines import load_model
from brinicle_etl.embed.quality import Quality
from brinicle_etl.embed.runtime import Chosen, EmbedOptions, EmbedPath, candidates, choose, model_cache_dir

__all__ = ["SentenceTransformerEmbedder"]

_chosen: dict[tuple[str, EmbedOptions, int, bool, Path | None], Chosen] = {}
_locks: dict[tuple[str, EmbedOptions, int, bool, Path | None], threading.Lock] = {}
_lock = threading.Lock()


class SentenceTransformerEmbedder:
    """A sentence-transformers model; ``options`` say which backend, precision and device may
    run it (each ``auto`` by default)."""

    def __init__(
        self,
        name_or_path: str,
        *,
        dim: int,
        model_id: str | None = None,
        normalize: bool = True,
        batch_size: int = 32,
        options: EmbedOptions | None = None,
        cache_dir: Path | None = None,
    ):
        self.name_or_path = name_or_path
        self.dim = dim
        self.model_id = model_id or name_or_path
        self.normalize = normalize
        self.batch_size = batch_size
        self.options = options or EmbedOptions()
        self._cache_dir = cache_dir

    def _chosen(self) -> Chosen:
        key = (self.name_or_path, self.options, self.batch_size, self.normalize, self._cache_dir)
        chosen = _chosen.get(key)
        if chosen is not None:
            return chosen
        with _lock:
            # One lock per model and options: a first use exporting and measuring one model
            # (seconds) does not hold up the queries of another.
            key_lock = _locks.setdefault(key, threading.Lock())
        with key_lock:
            chosen = _chosen.get(key)
            if chosen is None:
                model = load_model(self.name_or_path, candidates(self.options)[0].device)
                chosen = _chosen[key] = choose(
                    model,
                    self.options,
                    model_dir=self._cache_dir or model_cache_dir(self.name_or_path),
                    batch_size=self.batch_size,
                    normalize=self.normalize,
                )
            return chosen

    @property
    def path(self) -> EmbedPath:
        """The backend, precision and device that run the model here (chosen on first use)."""
        return self._chosen().path

    @property
    def quality(self) -> Quality | None:
        """The chosen path's measured quality against float32 (None: it is float32)."""
        return self._chosen().quality

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self._chosen().engine.encode(list(texts))
