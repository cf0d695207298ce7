"""sentence-transformers models, loaded on first use and cached per process."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from brinicle_etl.errors import ConfigError, MissingExtraError

__all__ = ["SentenceTransformerEmbedder"]

_models: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def _load(name_or_path: str, device: str) -> Any:
    with _lock:
        key = (name_or_path, device)
        if key not in _models:
            # Never reach out to a model hub from a pipeline (models are local files), and keep
            # the loaders' progress bars out of pipeline and CLI output.
            for name, value in (
                ("HF_HUB_OFFLINE", "1"),
                ("TRANSFORMERS_OFFLINE", "1"),
                ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                ("TRANSFORMERS_VERBOSITY", "error"),
            ):
                os.environ.setdefault(name, value)
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MissingExtraError(
                    "embedding text needs sentence-transformers: pip install 'brinicle-etl[embed]'"
                ) from exc
            try:
                _models[key] = SentenceTransformer(name_or_path, device=device)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot load embedding model {name_or_path!r}: {exc}; check the model id or path"
                ) from exc
        return _models[key]


class SentenceTransformerEmbedder:
    """A sentence-transformers model; the model loads on the first ``embed_batch``."""

    def __init__(
        self,
        name_or_path: str,
        *,
        dim: int,
        model_id: str | None = None,
        normalize: bool = True,
        batch_size: int = 32,
        device: str = "cpu",
    ):
        self.name_or_path = name_or_path
        self.dim = dim
        self.model_id = model_id or name_or_path
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        model = _load(self.name_or_path, self.device)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
