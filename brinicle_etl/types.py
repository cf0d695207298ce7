"""Policies as ``Literal`` types, validated once at the edge, and small shared dataclasses."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from brinicle_etl.errors import ConfigError

__all__ = [
    "BUILD_THREADS",
    "DELTA_RATIO_MIN",
    "DIM",
    "EF",
    "EF_CONSTRUCTION",
    "K",
    "M",
    "NAME_PATTERN",
    "NAME_RULE",
    "RNG_SEED",
    "shown",
    "is_name",
    "BuildProgress",
    "ConflictOn",
    "ConflictPolicy",
    "DuplicatePolicy",
    "EmbedBackend",
    "EmbedDevice",
    "EmbedPrecision",
    "NO_KEY",
    "Wait",
    "HnswParams",
    "Hit",
    "RowHit",
    "hits",
    "IntRange",
    "Seconds",
    "SYNC_WINDOW",
    "DEFAULT_SYNC_WINDOW",
    "default_dtype",
    "Metric",
    "VectorDType",
    "VectorSource",
    "WriteMode",
    "check_choice",
    "check_delta_ratio",
    "check_name",
]

Metric = Literal["cosine", "ip", "l2sq"]
"""Distance: ``cosine`` is 1 - cos(a, b), ``ip`` is 1 - a.b, ``l2sq`` is the squared L2 norm of a - b."""

VectorDType = Literal["f32", "f16", "bf16", "i8"]
"""How vectors are stored in the index (queries are always float32)."""


def default_dtype(metric: Metric) -> VectorDType:
    """A new collection's dtype when none is given: ``i8`` for ``cosine``, ``bf16`` for ``ip``
    and ``l2sq``.

    The fastest usearch setting at recall@10 >= 0.95 on the CPUs measured, side by side
    (benchmarks/results/store_dtypes.md, graph.md and store.md): an ``i8`` graph, its
    candidates re-scored on the vectors kept beside it (store/refine.py), builds 1.3-2x faster
    than ``bf16`` and answers faster at the same recall, with exact distances, on CPUs with
    bf16 instructions and without; it takes more disk (5 bytes per dimension against 2).
    usearch normalises vectors before coding them for ``cosine`` only: ``ip`` and ``l2sq``
    vectors can hold values past the codes' [-1, 1], so those keep ``bf16``, which also keeps
    float32's range (``f16`` builds as fast on CPUs without bf16 instructions, but turns values
    past 65,504 into infinities)."""
    return "i8" if metric == "cosine" else "bf16"


WriteMode = Literal["build", "insert", "upsert"]
"""``build`` replaces everything, ``insert`` adds new keys only, ``upsert`` replaces or adds."""

ConflictPolicy = Literal["error", "update", "skip"]
"""What an ingest does with a row whose key already exists."""

DuplicatePolicy = Literal["error", "keep_last"]
"""What an ingest does with a key repeated within its own source."""

EmbedBackend = Literal["auto", "torch", "openvino", "onnx"]
"""What runs an embedding model: ``auto`` picks the fastest that passes the quality gate."""

EmbedPrecision = Literal["auto", "f32", "bf16", "fp16", "int8"]
"""The arithmetic an embedding model runs in; ``int8`` is only used when asked for."""

EmbedDevice = Literal["auto", "cpu", "cuda"]
"""Where an embedding model runs; ``auto`` is a CUDA GPU when torch sees one, else the CPU."""

Wait = bool | float
"""For the writer lock: False fails at once if another writer holds it, True waits as long as
needed, a number waits at most that many seconds."""

BuildProgress = Callable[[int, int], None]
"""``progress(done, total)`` while an index is built."""

NO_KEY = np.uint64(2**64 - 1)
"""usearch's own tombstone key (what -1 becomes): never a row id, and "no hit" in results."""

ConflictOn = Literal["change", "key"]
"""What makes a row a conflict: ``change`` (the default) a stored row with the same key and
different content, so re-sending identical rows is always safe; ``key`` any stored row with
the same key, identical or not (the CSV endpoint's spec). Either way an identical row is
never rewritten or re-embedded: under ``key`` it is only counted and listed as a conflict."""

VectorSource = Literal["generated", "precomputed", "none"]

IndexTiming = Literal["now", "background"]
"""When a write into an existing collection links its new vectors into the index: ``now``
(the default: the write returns with everything indexed), or ``background`` (it returns once
rows and vectors are durable; the vectors are found at once by exact search and linked by a
background job of the writing process, which the interpreter waits for at exit). A write
too large for exact search to stay cheap links its vectors itself either way (see
``store.writer.PENDING_BYTES``); on object storage always ``now``. With ``background`` the
collection's generation moves on by one more when the job has linked them (the result
reports the write's own), and its status counts them as ``pending_count`` until then."""


def check_choice(name: str, value: object, allowed: Any) -> Any:
    """Return ``value`` if it is one of the ``Literal`` type's values, else raise ConfigError listing them."""
    choices: tuple[str, ...] = get_args(allowed)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {listed}; got {value!r}")
    return value


# ---- names that become paths ----------------------------------------------------------

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
NAME_RULE = "1-64 letters, digits, '_' or '-' (not starting with '-')"
"""The one rule for every name that becomes a file or directory name: collection parts,
template names, task ids. Nothing matching it can be ``.``, ``..``, hold a ``/`` or a NUL."""


DEFAULT_NAMESPACE = "default"
"""The namespace of a collection named by its database alone (``"shop"`` is ``"shop/default"``)."""

INDEX_PART_PATTERN = r"[A-Za-z0-9_]{1,64}"
_INDEX_PART = re.compile(INDEX_PART_PATTERN)
_NOT_INDEX_CHAR = re.compile(r"[^A-Za-z0-9_]")
INDEX_NAME_PATTERN = rf"^{INDEX_PART_PATTERN}(/{INDEX_PART_PATTERN})?$"
INDEX_NAME_RULE = (
    "index_name can contain A-Z|a-z|0-9 and underline(_) and should be <= 64 long (or db/namespace of those)"
)
"""brinicle's rule for index names, which its HTTP API keeps (and the CSV endpoint's names
are sanitized to): stricter than :data:`NAME_RULE`, so every index name is a collection name."""


def index_collection(index_name: object) -> str | None:
    """brinicle's index name (or ``db/namespace``) -> the collection it addresses; None if it
    breaks :data:`INDEX_NAME_RULE`."""
    if not isinstance(index_name, str):
        return None
    parts = index_name.split("/")
    if len(parts) > 2 or not all(_INDEX_PART.fullmatch(p) for p in parts):
        return None
    return index_name if len(parts) == 2 else f"{index_name}/{DEFAULT_NAMESPACE}"


def sanitize_index_part(value: str, *, what: str) -> str:
    """``value`` made to follow :data:`INDEX_NAME_RULE`: other characters become ``_``, at most 64."""
    cleaned = _NOT_INDEX_CHAR.sub("_", value.strip())[:64]
    if not cleaned.strip("_"):
        raise ConfigError(f"{what} {value!r} has no letters or digits")
    return cleaned


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: hostile input stays out of long messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 4] + "...'" if isinstance(value, str) else text[:limit] + "..."


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def check_name(value: object, what: str) -> str:
    """``value`` if it follows :data:`NAME_RULE`, else ConfigError naming ``what`` it was meant to be."""
    if not is_name(value):
        raise ConfigError(f"invalid {what} {shown(value)}: use {NAME_RULE}")
    assert isinstance(value, str)
    return value


# ---- numbers that reach usearch or numpy ------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntRange:
    """A documented, inclusive range for an integer setting; the HTTP models use the same bounds."""

    name: str
    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        return type(value) is int and self.low <= value <= self.high

    def check(self, value: object, *, name: str | None = None) -> int:
        """``value`` as an int if it is an integer in range, else ConfigError giving the range."""
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not self.low <= value <= self.high:
            raise ConfigError(
                f"{name or self.name} must be an integer between {self.low} and {self.high}; got {shown(value)}"
            )
        return int(value)


DIM = IntRange("dim", 1, 65_536)
M = IntRange("M", 2, 256)
EF_CONSTRUCTION = IntRange("ef_construction", 1, 16_384)
EF = IntRange("ef", 1, 16_384)
"""The search beam width: ``ef_search`` of a collection, ``ef``/``efs`` of one search."""
K = IntRange("k", 1, 10_000)
RNG_SEED = IntRange("rng_seed", 0, 2**32 - 1)
BUILD_THREADS = IntRange("build_n_threads", 0, 1024)


@dataclass(frozen=True, slots=True)
class Seconds:
    """A documented range of seconds (low exclusive, high inclusive) for a float setting."""

    name: str
    high: float

    def check(self, value: object) -> float:
        """``value`` as a float if it is a number of seconds in range, else ConfigError giving it."""
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not 0 < value <= self.high:
            raise ConfigError(f"{self.name} must be seconds above 0 and at most {self.high:g}; got {shown(value)}")
        return float(value)


SYNC_WINDOW = Seconds("sync_window", 60.0)
"""How long a grouped single-vector ingest may wait for its sync (see store/grouped.py)."""
DEFAULT_SYNC_WINDOW = 1.0
"""``VectorEngine``'s: its single ``ingest`` calls are on disk within a second."""
DELTA_RATIO_MIN = 1e-6
"""brinicle's range is (0, 0.5]; below 1e-6 a single delete asks for a rebuild in any
collection of under a million rows, so smaller values (5e-324...) are refused as typos."""


@dataclass(frozen=True, kw_only=True, slots=True)
class HnswParams:
    """HNSW graph settings.

    ``M`` is the graph's connectivity, ``ef_construction`` the beam width while building,
    ``ef_search`` the default beam width while searching. ``rng_seed`` seeds the order in
    which a build inserts vectors, which decides every node's level: with
    ``build_n_threads=1`` the same seed gives the same graph. ``build_n_threads=0`` uses
    every core this process may run on.
    """

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 64
    rng_seed: int = 0
    build_n_threads: int = 0

    def __post_init__(self) -> None:
        M.check(self.M)
        EF_CONSTRUCTION.check(self.ef_construction)
        EF.check(self.ef_search, name="ef_search")
        RNG_SEED.check(self.rng_seed)
        BUILD_THREADS.check(self.build_n_threads)

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
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or not (DELTA_RATIO_MIN <= value <= 0.5)
    ):
        raise ConfigError(f"delta_ratio must be in range (0, 0.5] (at least {DELTA_RATIO_MIN:g}); got {shown(value)}")
    return float(value)


class Hit(NamedTuple):
    """One search result: the row's key and its distance to the query (smaller is nearer)."""

    id: str
    distance: float


class RowHit(NamedTuple):
    """One search result with its row: the row's own columns (not the store's) as a dict."""

    id: str
    distance: float
    row: dict[str, Any]


def hits(keys: Iterable[str], distances: Any) -> list[Hit]:
    """Hits of parallel keys and distances (a float array or list), made in C: a NamedTuple's
    own constructor runs Python code per hit, a measurable share of a fast search."""
    if isinstance(distances, np.ndarray):
        distances = distances.tolist()
    return list(map(tuple.__new__, repeat(Hit), zip(keys, distances, strict=True)))
