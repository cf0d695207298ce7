"""Which nodes of a saved usearch graph no search can reach, read from the file itself.

usearch 2.x can strand a node when two threads link at once (unum-cloud/USearch#735): the
node is stored with its own edges, but no other node keeps an edge to it, so no search
finds it at any ``ef``. Searching every node for itself finds them too, but costs ~10% of
a build on hard data (1M x 128 text-like vectors: a pass at ef 4 misses 26% of the nodes
and the second pass at ef 64 costs twice the first). Walking the graph's edges from its
entry point costs one pass over the edges.

The layout read here is usearch's v2 dense file (usearch 2.x): the vectors matrix (rows
and columns as 32-bit integers, then the bytes), a 64-byte header starting with
``usearch``, then the graph: five 64-bit integers (nodes, connectivity, base connectivity,
top level, entry slot), a 16-bit level per node, and the nodes in slot order, each a
64-bit key, its 16-bit level, then per level from 0 up a 32-bit neighbour count and the
neighbour slots (32-bit; ``base connectivity`` of them at level 0, ``connectivity`` above;
only level 0 is read).
Whatever does not add up to exactly that (another version's layout) gives None, and the
caller falls back to searching.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FREE_KEY", "unreachable"]

FREE_KEY = np.uint64(2**64 - 1)
"""The key usearch writes in the slot of a removed node."""

_MAGIC = b"usearch"
_HEADER_BYTES = 64
_GRAPH_HEADER_BYTES = 40
_NODE_HEAD_BYTES = 10  # key (8) + level (2)
_CHUNK = 1 << 16


def unreachable(path: Path, *, edges_at_level_0: int) -> np.ndarray | None:
    """Keys of the nodes of the index file at ``path`` that no walk along level-0 edges
    from its entry point reaches (removed nodes aside), or None when the file's layout is
    not the one this module reads. ``edges_at_level_0`` (usearch's own count) checks the
    reading.

    Level 0 only: a search descends the upper levels greedily to one node and walks level
    0 from there, so an edge above level 0 does not make a node findable (measured: two
    nodes reachable only through upper edges, unfound by a search that may visit every node).
    The walk starts at the entry slot rather than where each search's descent ends; level-0
    edges go one way, so a node could in principle be reached from one and not the other
    (none was in 400 concurrent builds of 300 8-d vectors: every node found itself at an
    ``ef`` as large as the index). The other way round, a node a search reaches only through
    the upper levels is reported too, now and then (one in a few hundred such builds), and
    added again for nothing.
    """
    if path.stat().st_size < _HEADER_BYTES:
        return None
    data = np.memmap(path, dtype=np.uint8, mode="r")
    graph = _graph_start(data)
    if graph is None or len(data) < graph + _GRAPH_HEADER_BYTES:
        return None
    size, conn, base, _top, entry = (int(v) for v in np.frombuffer(data, "<u8", 5, graph))
    if size == 0:
        return np.empty(0, dtype=np.uint64)
    first_node = graph + _GRAPH_HEADER_BYTES + 2 * size
    if entry >= size or len(data) < first_node:
        return None
    levels = np.frombuffer(data, "<i2", size, graph + _GRAPH_HEADER_BYTES).astype(np.int64)
    if levels.min() < 0:
        return None
    base_bytes, upper_bytes = 4 + 4 * base, 4 + 4 * conn
    node_bytes = _NODE_HEAD_BYTES + base_bytes + upper_bytes * levels
    ends = first_node + np.cumsum(node_bytes)
    if int(ends[-1]) != len(data):
        return None
    starts = ends - node_bytes

    keys = _gather(data, starts, 8).view("<u8").reshape(-1)
    if not (_gather(data, starts + 8, 2).view("<i2").reshape(-1) == levels).all():
        return None
    lists_at = starts + _NODE_HEAD_BYTES
    counts = _gather(data, lists_at, 4).view("<u4").reshape(-1).astype(np.int64)
    if counts.max() > base or int(counts.sum()) != edges_at_level_0:
        return None

    # Each node's list is read from the file when the walk first reaches it, a frontier
    # chunk at a time: all the lists at once would be ~1.3 GB at 10M nodes.
    span = np.arange(base)
    reached = np.zeros(size, dtype=bool)
    reached[entry] = True
    frontier = np.array([entry], dtype=np.int64)
    while len(frontier):
        fresh = np.zeros(size, dtype=bool)
        for at in range(0, len(frontier), _CHUNK):
            nodes = frontier[at : at + _CHUNK]
            slots = _gather(data, lists_at[nodes] + 4, 4 * base).view("<u4")
            near = slots[span[None, :] < counts[nodes][:, None]]
            if len(near) and int(near.max()) >= size:
                return None
            fresh[near] = True
        fresh &= ~reached
        reached |= fresh
        frontier = np.flatnonzero(fresh)
    lost = keys[~reached]
    return np.asarray(lost[lost != FREE_KEY], dtype=np.uint64)


def _graph_start(data: np.ndarray) -> int | None:
    """Where the graph begins: past the vectors matrix and the 64-byte header."""
    rows, cols = (int(v) for v in np.frombuffer(data, "<u4", 2, 0))
    header = 8 + rows * cols
    if len(data) < header + _HEADER_BYTES or bytes(data[header : header + len(_MAGIC)]) != _MAGIC:
        return None
    return header + _HEADER_BYTES


def _gather(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each offset in ``starts``, as a (len(starts), width) array, read in
    chunks so the index array stays small."""
    out = np.empty((len(starts), width), dtype=np.uint8)
    span = np.arange(width, dtype=np.int64)
    for at in range(0, len(starts), _CHUNK):
        out[at : at + _CHUNK] = data[starts[at : at + _CHUNK, None] + span[None, :]]
    return out
