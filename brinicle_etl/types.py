"""Policies as ``Literal`` types, validated once at the edge, and small shared dataclasses."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from brinicle_etl.errors import ConfigError

__all__ = [
    "ConflictPolicy",
    "HnswParams",
    "Hit",
    "Metric",
    "VectorDType",
    "VectorSource",
    "WriteMode",
    "check_choice",
]

Metric = Literal["cosine", "ip", "l2sq"]
"""Distance: ``cosine`` is 1 - cos(a, b), ``ip`` is 1 - a.b, ``l2sq`` is the squared L2 norm of a - b."""

VectorDType = Literal["f32", "f16", "bf16", "i8"]
"""How vectors are stored in the index (queries are always float32)."""

WriteMode = Literal["build", "insert", "upsert"]
"""``build`` replaces everything, ``insert`` adds new keys only, ``upsert`` replaces or adds."""

ConflictPolicy = Literal["error", "update", "skip"]
"""What an ingest does with a row whose key already exists."""

VectorSource = Literal["generated", "precomputed", "none"]


def check_choice(name: str, value: object, allowed: Any) -> Any:
    """Return ``value`` if it is one of the ``Literal`` type's values, else raise ConfigError listing them."""
    choices: tuple[str, ...] = get_args(allowed)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {listed}; got {value!r}")
    return value


def _positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class HnswParams:
    """HNSW graph settings.

    ``M`` is the graph's connectivity, ``ef_construction`` the beam width while building,
    ``ef_search`` the default beam width while searching. ``rng_seed`` seeds the order in
    which a build inserts vectors, which decides every node's level: with
    ``build_n_threads=1`` the same seed gives the same graph. ``build_n_threads=0`` uses
    every core.
    """

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    rng_seed: int = 0
    build_n_threads: int = 0

    def __post_init__(self) -> None:
        _positive_int("M", self.M, minimum=2)
        _positive_int("ef_construction", self.ef_construction)
        _positive_int("ef_search", self.ef_search)
        _positive_int("rng_seed", self.rng_seed, minimum=0)
        _positive_int("build_n_threads", self.build_n_threads, minimum=0)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, base: HnswParams | None = None) -> HnswParams:
        """Params from a mapping; keys left out (or 0, brinicle's "keep") come from ``base``.

        Unknown keys are ignored, as brinicle's server does.
        """
        base = base or cls()
        if not data:
            return base
        fields = {f.name for f in dataclasses.fields(cls)}
        updates = {k: v for k, v in data.items() if k in fields and v is not None}
        # brinicle sends 0 to mean "the index's own value" for every field but the seed.
        updates = {k: v for k, v in updates.items() if not (v == 0 and k not in ("rng_seed", "build_n_threads"))}
        return dataclasses.replace(base, **updates)


def check_delta_ratio(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value <= 0.5) or math.isnan(value):
        raise ConfigError(f"delta_ratio must be in range (0, 0.5]; got {value!r}")
    return float(value)


class Hit(NamedTuple):
    """One search result: the row's key and its distance to the query (smaller is nearer)."""

    id: str
    distance: float
