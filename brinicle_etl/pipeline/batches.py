"""What each pass of an ingest does with a batch of the source: its keys, what its row hash
covers, and which rows a shard's run keeps."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from brinicle_etl.embed import Embedder, parse_vectors, vector_digest
from brinicle_etl.errors import InputError
from brinicle_etl.pipeline.read import Batch
from brinicle_etl.pipeline.schema import TemplateSchema, render_text
from brinicle_etl.store.shards import shard_of

__all__ = ["KEEP_BYTES", "FirstPass", "ShardRows", "batch_keys", "hash_inputs", "where_selected"]


def _memory_limit() -> int | None:
    """The memory this process may use: its cgroup's limit (a container's), else the machine's."""
    for path, unlimited in (("/sys/fs/cgroup/memory.max", "max"), ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "")):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        # cgroup v1 spells "no limit" as a number near 2**63
        if text and text != unlimited and text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _keep_bytes() -> int:
    limit = _memory_limit()
    return 512 << 20 if limit is None else min(1 << 30, limit // 4)


KEEP_BYTES = _keep_bytes()
"""A source up to this size in memory (as polars holds it) is kept from the first pass for
the second, which then neither reads it again nor hashes its rows again; a larger one is
read twice, so a source larger than memory still streams. 1 GiB, or a quarter of the memory
the process may use (its container's limit) when that is less: 1M rows of 128-d float32
vectors take ~560 MB, and reading them twice cost ~2.5 s of a ~9 s upsert."""


@dataclass
class FirstPass:
    """The batches the first pass read, with their row and text hashes, while they fit in
    :data:`KEEP_BYTES`; ``batches`` is None once they did not."""

    batches: list[tuple[Batch, pa.Array, pa.Array | None]] | None = field(default_factory=list)
    size: int = 0

    def keep(self, batch: Batch, row_hash: pa.Array, text_hash: pa.Array | None) -> None:
        if self.batches is None:
            return
        self.size += int(batch.frame.estimated_size())
        if self.size > KEEP_BYTES:
            self.batches = None
        else:
            self.batches.append((batch, row_hash, text_hash))


class ShardRows:
    """One shard's rows of the source. The plan numbers them on their own (0, 1, ... over
    the shard's rows); the first pass records which source rows they are, for the second."""

    def __init__(self, count: int, index: int):
        self.count, self.index = count, index
        self._mine: list[np.ndarray] = []
        self._kept = 0
        self._position: np.ndarray | None = None  # source row -> plan position of the next kept row

    def keep(self, batch: Batch, keys: pa.Array) -> tuple[Batch, pa.Array]:
        """The batch narrowed to this shard's rows, numbered as the plan numbers them, and the mask."""
        mine = shard_of(keys.to_pylist(), self.count) == self.index
        self._mine.append(mine)
        picked = np.flatnonzero(mine)
        narrowed = Batch(batch.frame.filter(pl.Series(mine)), self._kept, batch.origin, batch.origin_offset, picked)
        self._kept += len(picked)
        return narrowed, pa.array(mine)

    def select(self, batch: Batch, write: np.ndarray) -> tuple[slice, np.ndarray, np.ndarray]:
        """For a batch of the second pass: its window of the plan, which rows of the window
        are written, and which of the batch's rows those are."""
        if self._position is None:
            mine = np.concatenate(self._mine) if self._mine else np.zeros(0, dtype=bool)
            self._mine = [mine]
            self._position = np.concatenate([[0], np.cumsum(mine)])
        end = batch.offset + len(batch.frame)
        mine = self._mine[0][batch.offset : end]
        window = slice(int(self._position[batch.offset]), int(self._position[end]))
        picked = write[window]
        selected = np.zeros(len(mine), dtype=bool)
        selected[np.flatnonzero(mine)[picked]] = True
        return window, picked, selected


def where_selected(batch: Batch, selected: np.ndarray) -> Callable[[int], str]:
    """Names row ``i`` of the selected rows of ``batch`` by its place in the source."""
    positions = np.flatnonzero(selected)
    return lambda i: batch.where(int(positions[i]))


def batch_keys(typed: pl.DataFrame, sch: TemplateSchema, row_hash: pa.Array | None, batch: Batch) -> pa.Array:
    if sch.primary_key is None:
        assert row_hash is not None
        return row_hash
    values = typed[sch.primary_key]
    if values.null_count():
        i = int(values.is_null().arg_max())  # type: ignore[arg-type]
        raise InputError(f"{batch.where(i)}: primary key {sch.primary_key!r} is missing")
    return values.cast(pl.String).to_arrow().cast(pa.string())


def hash_inputs(
    batch: Batch, typed: pl.DataFrame, sch: TemplateSchema, embedder: Embedder | None
) -> tuple[pl.DataFrame, list[str], pl.Series | None]:
    frame = typed
    columns = list(sch.columns)
    if sch.vector_col is not None:
        vectors = batch.frame[sch.vector_col]
        if vectors.dtype != pl.String:
            # Arrays of floats: hash their bytes rather than their printed form (and check them early).
            vectors = vector_digest(parse_vectors(vectors, dim=None, where=batch.where))
        frame = frame.with_columns(vectors.alias(sch.vector_col))
        columns.append(sch.vector_col)
    text = None
    if sch.vector_source == "generated":
        assert embedder is not None
        # The model is part of what was embedded: another model's vector is never carried over.
        # So is int8, the one path that does not pass the quality gate: it counts as another model.
        model = embedder.model_id + ("\x1fint8" if sch.precision == "int8" else "")
        text = (model + "\x1f") + render_text(typed, sch)
    return frame, columns, text
