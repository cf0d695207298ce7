"""The order a build inserts its vectors in: near ones one after another.

Each HNSW insert walks the graph around its vector and rewrites its neighbours' lists.
When the inserts before it landed in the same region, the nodes it reads are still in the
CPU's caches; in a random order, almost every node it reads comes from memory. So a build
sorts each batch it is given by region: every vector goes to the nearest of up to
:data:`CELLS` vectors sampled from the batch, the sampled vectors are chained so each
is followed by its nearest unvisited one, and the batch is inserted cell by cell along
the chain, in a seeded random order within a cell.

A random :data:`SKELETON` share of the batch goes first, in a random order. A graph built
from nothing region by region alone links each region mostly to the one before it on the
chain: the greedy descent from the entry point can then stall in the wrong region. At
100k x 32 vectors in 32 tight clusters (``tests/test_scale.py``'s data; single builds by
hand), recall@10 at ef 128 fell to 0.817 against 0.990 in a random order; with a random
tenth first, 0.987-0.991 (over three more data sets 0.973/0.978/0.982 against random's
0.959/0.975/0.992 and pure region order's 0.925/0.945/0.967), building in 5.5 s against
6.8 s random.

Measured side by side (``benchmarks/bench_graph.py --only batches``, results/graph_order.md:
1M x 128 text-like vectors, i8, M=16, ef_construction=200, two threads, batches of 50,000
as an ingest gives them): 319.4 s against 398.6 s in a random order, and the graph answered
at the same recall in less time (1.60 ms at recall@10 0.956 against 1.74 ms at 0.959).
"""

from __future__ import annotations

import numpy as np

from brinicle_etl.types import Metric

__all__ = ["CELLS", "SKELETON", "insert_order"]

CELLS = 1024
"""Regions a batch is sorted into, at most: ~0.1 s per 50,000 x 128 batch. In single runs
by hand at 1M x 128, 256 regions gained less and 4,096 no more."""
SKELETON = 0.1
"""The share of each batch inserted first, in a random order, before the rest region by
region: the long links the later regions are reached by."""
_ROWS_PER_CELL = 48
"""Fewer cells in a smaller batch, so each still holds a few dozen vectors; a batch of
fewer than two cells' worth is inserted in a random order (it fits in the caches anyway)."""
_ASSIGN_ROWS = 8192
"""Rows matched to the cells at a time: 32 MB of scores at 1,024 cells."""


def insert_order(vectors: np.ndarray, metric: Metric, seed: int) -> np.ndarray:
    """A permutation of ``range(len(vectors))``: a random :data:`SKELETON` share, then the
    rest region by region; the same vectors and seed give the same order."""
    n = len(vectors)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    cells = min(CELLS, n // _ROWS_PER_CELL)
    if cells < 2:
        return shuffled
    centres = np.asarray(vectors[np.sort(rng.choice(n, cells, replace=False))], dtype=np.float32)
    if metric == "cosine":
        # The nearest centre by angle: a row's own length does not change which one it is.
        lengths = np.linalg.norm(centres, axis=1, keepdims=True)
        centres = (centres / np.where(lengths > 0, lengths, 1)).astype(np.float32)
        offsets = np.zeros(cells, dtype=np.float32)
    else:
        # The nearest by Euclidean distance, |x - c|^2 = |x|^2 - 2 x.c + |c|^2, without |x|^2
        # (the same for every centre); a fair stand-in for inner product's regions too.
        offsets = (-0.5 * np.einsum("ij,ij->i", centres, centres)).astype(np.float32)
    places = np.empty(cells, dtype=np.int64)
    places[_chain(centres, offsets)] = np.arange(cells)
    cell = np.empty(n, dtype=np.int64)
    for start in range(0, n, _ASSIGN_ROWS):
        rows = np.asarray(vectors[start : start + _ASSIGN_ROWS], dtype=np.float32)
        cell[start : start + len(rows)] = np.argmax(rows @ centres.T + offsets, axis=1)
    head = int(n * SKELETON)
    rest = shuffled[head:]
    return np.concatenate([shuffled[:head], rest[np.argsort(places[cell[rest]], kind="stable")]])


def _chain(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The centres in an order where each is followed by its nearest one not yet taken."""
    closeness = centres @ centres.T + offsets[None, :]
    taken = np.zeros(len(centres), dtype=bool)
    order = np.empty(len(centres), dtype=np.int64)
    at = 0
    for step in range(len(centres)):
        order[step] = at
        taken[at] = True
        at = int(np.argmax(np.where(taken, -np.inf, closeness[at])))
    return order
