"""The manifest: the one file that says which files make up a collection's current generation.

A writer creates new files under fresh names, makes them durable, then atomically
replaces ``manifest.json``. Whatever instant a writer dies at, the manifest names
either the old generation's files or the new one's, all of which exist.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from brinicle_etl._fs import atomic_write_bytes
from brinicle_etl.errors import ConfigError, CorruptCollectionError
from brinicle_etl.types import DIM, HnswParams, Metric, VectorDType, check_choice, check_delta_ratio, default_dtype

__all__ = [
    "CollectionConfig",
    "ConfigSettings",
    "Manifest",
    "RowsFile",
    "SegmentInfo",
    "read_manifest",
    "write_manifest",
]

MANIFEST = "manifest.json"
FORMAT = 1
FORMAT_WITH_PENDING = 2
"""A manifest naming pending vectors is format 2, so a version that does not know them
refuses the collection instead of silently missing those rows; readers take both."""
FORMAT_WITH_VECTORS = 3
"""A manifest naming a segment's vectors file (an i8 graph's, see refine.py) is format 3:
a version that does not know those files would delete them as leftovers."""
FORMAT_WITH_GRAPHS = 4
"""A manifest whose main index is several graphs (see ``segment.GRAPH_ROWS``) is format 4:
a version that reads main as one graph would miss the others' rows."""
FORMATS = (FORMAT, FORMAT_WITH_PENDING, FORMAT_WITH_VECTORS, FORMAT_WITH_GRAPHS)


class ConfigSettings(TypedDict, total=False):
    """A :class:`CollectionConfig` as keyword arguments (``Store.create(name, dim=384, ...)``)."""

    dim: int
    metric: Metric
    dtype: VectorDType | None
    params: HnswParams | None
    delta_ratio: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CollectionConfig:
    """What a collection is created with; persisted and restored on open."""

    dim: int
    metric: Metric = "cosine"
    # None (left out) is the metric's default, types.default_dtype: set once, in __post_init__,
    # so every reader sees a dtype.
    dtype: VectorDType = None  # type: ignore[assignment]
    params: HnswParams = field(default_factory=HnswParams)
    delta_ratio: float = 0.10

    def __post_init__(self) -> None:
        DIM.check(self.dim)
        check_choice("metric", self.metric, Metric)
        if self.dtype is None:
            object.__setattr__(self, "dtype", default_dtype(self.metric))
        check_choice("dtype", self.dtype, VectorDType)
        check_delta_ratio(self.delta_ratio)
        if self.dtype == "i8" and self.metric == "l2sq":
            raise ConfigError("dtype 'i8' stores values in [-1, 1] and suits metric 'cosine' or 'ip', not 'l2sq'")

    @classmethod
    def of(cls, config: CollectionConfig | None, settings: ConfigSettings) -> CollectionConfig:
        """``config`` as given, or one built from keyword ``settings`` (left out: the defaults)."""
        if config is not None:
            if settings:
                raise ConfigError(f"give a config or its settings, not both: {sorted(settings)}")
            return config
        if "dim" not in settings:
            raise ConfigError("dim is needed to create a collection")
        return cls(**{k: v for k, v in settings.items() if v is not None})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "metric": self.metric,
            "dtype": self.dtype,
            "params": self.params.to_dict(),
            "delta_ratio": self.delta_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionConfig:
        return cls(
            dim=data["dim"],
            metric=data["metric"],
            dtype=data["dtype"],
            params=HnswParams(**data["params"]),
            delta_ratio=data["delta_ratio"],
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SegmentInfo:
    """One vector file (a usearch index, or the pending vectors): how many vectors it holds
    and how many of them are tombstoned."""

    file: str
    count: int
    dead: int = 0
    vectors: str | None = None
    """The file of the vectors as given, beside an i8 graph (see refine.py)."""

    @property
    def live(self) -> int:
        return self.count - self.dead

    @property
    def files(self) -> list[str]:
        return [self.file] if self.vectors is None else [self.file, self.vectors]


@dataclass(frozen=True, kw_only=True, slots=True)
class RowsFile:
    """One Parquet file of rows (``_row_id``, ``_key`` and the payload columns)."""

    file: str
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    config: CollectionConfig
    generation: int = 0
    next_row_id: int = 0
    main: tuple[SegmentInfo, ...] = ()
    """The graphs the last build or rebuild wrote (several for a large build), searched together."""
    delta: SegmentInfo | None = None
    pending: SegmentInfo | None = None
    """Vectors written but not indexed yet (see :mod:`brinicle_etl.store.flat`)."""
    rows: tuple[RowsFile, ...] = ()
    tombstones: str | None = None
    dead_rows: int = 0
    last_session: str | None = None
    incarnation: str = ""
    """Random at creation (object storage): tells a re-created collection from the one a cache
    still holds, which may have reached the same generation number."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(r.count for r in self.rows)

    @property
    def live_rows(self) -> int:
        return self.total_rows - self.dead_rows

    @property
    def needs_rebuild(self) -> bool:
        """Deletes since the last build, or live delta (and pending) vectors, reach
        ``delta_ratio`` of live rows."""
        live = self.live_rows
        delta_live = sum(s.live for s in (self.delta, self.pending) if s is not None)
        if live == 0:
            return self.dead_rows > 0
        threshold = self.config.delta_ratio * live
        return self.dead_rows >= threshold or delta_live >= threshold

    def files(self) -> list[str]:
        names = [r.file for r in self.rows]
        names += [name for s in (*self.main, self.delta, self.pending) if s is not None for name in s.files]
        if self.tombstones:
            names.append(self.tombstones)
        return names

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_dict()
        data["rows"] = [dataclasses.asdict(r) for r in self.rows]
        if len(self.main) > 1:
            form = FORMAT_WITH_GRAPHS
        elif any(s is not None and s.vectors for s in (*self.main, self.delta)):
            form = FORMAT_WITH_VECTORS
        else:
            form = FORMAT if self.pending is None else FORMAT_WITH_PENDING
        graphs = list(data["main"])
        # One graph is written as one segment, as before several: older versions read it.
        data["main"] = graphs if len(graphs) > 1 else (graphs[0] if graphs else None)
        for segment in [*graphs, data["delta"], data["pending"]]:
            if segment is not None and segment["vectors"] is None:
                del segment["vectors"]  # as written before vectors files: older versions read it
        return {"format": form, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        def segment(d: dict[str, Any] | None) -> SegmentInfo | None:
            return SegmentInfo(**d) if d else None

        main = data["main"]
        if isinstance(main, list):
            graphs = tuple(SegmentInfo(**d) for d in main)
        else:
            graphs = () if main is None else (SegmentInfo(**main),)

        return cls(
            config=CollectionConfig.from_dict(data["config"]),
            generation=data["generation"],
            next_row_id=data["next_row_id"],
            main=graphs,
            delta=segment(data["delta"]),
            pending=segment(data.get("pending")),
            rows=tuple(RowsFile(**r) for r in data["rows"]),
            tombstones=data["tombstones"],
            dead_rows=data["dead_rows"],
            last_session=data["last_session"],
            meta=data["meta"],
            incarnation=data.get("incarnation", ""),
        )


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptCollectionError(f"cannot read {path}: {exc}") from exc
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """A manifest from its bytes; ``where`` names it in errors (a path or an object's URL)."""
    try:
        data = json.loads(raw)
        if data.get("format") not in FORMATS:
            raise CorruptCollectionError(
                f"{where} has format {data.get('format')!r}; this version of brinicle_etl reads formats "
                f"{', '.join(map(str, FORMATS))}"
            )
        return Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptCollectionError(f"{where} is not a valid manifest: {exc}") from exc


def manifest_bytes(manifest: Manifest) -> bytes:
    return json.dumps(manifest.to_dict(), indent=1).encode()


def write_manifest(directory: Path, manifest: Manifest) -> None:
    atomic_write_bytes(directory / MANIFEST, manifest_bytes(manifest))
