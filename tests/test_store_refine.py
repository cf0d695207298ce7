"""An i8 graph's vectors kept beside it: re-scored searches, exact lookups, lossless compaction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brinicle_etl import Collection, Store
from brinicle_etl.errors import CorruptCollectionError
from brinicle_etl.store.manifest import CollectionConfig, read_manifest
from brinicle_etl.store.refine import Refined, refined_name, write_refined
from brinicle_etl.types import NO_KEY, HnswParams
from tests.conftest import build_one, clustered, exact_knn

DIM = 16


def _keys(n: int) -> list[str]:
    return [f"k{i}" for i in range(n)]


def _recall(col: Collection, x: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    truth = exact_knn(x, queries, k, col.config.metric)
    found = [[int(h.id[1:]) for h in col.search(q, k, ef=64)] for q in queries]
    return float(np.mean([len(set(f) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]))


def test_the_file_holds_each_vector_under_its_key_sorted(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    keys = rng.permutation(50).astype(np.uint64) * 7
    vectors = rng.standard_normal((50, DIM)).astype(np.float32)
    # In three parts, as a build adds them.
    parts = [(keys[:20], vectors[:20]), (keys[20:21], vectors[20:21]), (keys[21:], vectors[21:])]
    write_refined(tmp_path / "v.f32", parts, DIM)
    refined = Refined(tmp_path / "v.f32", metric="cosine")
    assert refined.keys.tolist() == sorted(keys.tolist())
    assert np.array_equal(refined.get(keys[:5]), vectors[:5])
    assert refined.contains(np.array([keys[0], 1], dtype=np.uint64)).tolist() == [True, False]
    live_keys, live = refined.live(np.array([keys[0]], dtype=np.uint64))
    assert len(live_keys) == 49 and keys[0] not in live_keys
    assert np.array_equal(live, vectors[np.argsort(keys)][np.sort(keys) != keys[0]])
    with pytest.raises(KeyError, match=r"1 key\(s\) have no vector in v\.f32"):
        refined.get(np.array([1], dtype=np.uint64))


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2sq"])
def test_rescore_and_exact_scan_rank_by_true_distance(tmp_path: Path, metric: str) -> None:
    x = clustered(300, DIM, seed=2)
    keys = np.arange(300, dtype=np.uint64)
    write_refined(tmp_path / "v.f32", [(keys, x)], DIM)
    refined = Refined(tmp_path / "v.f32", metric=metric)
    q = clustered(5, DIM, seed=9)
    truth = exact_knn(x, q, 10, metric)
    nearest, dists = refined.nearest(q, 10)
    assert nearest.tolist() == truth.tolist()
    assert np.all(np.diff(dists, axis=1) >= 0)
    # Candidates in any order, padded: the true nearest among them come first.
    candidates = np.full((5, 40), NO_KEY, dtype=np.uint64)
    candidates[:, :30] = np.random.default_rng(0).permutation(exact_knn(x, q, 30, metric).T).T
    top, top_dists = refined.rescore(q, candidates, 10)
    assert top.tolist() == truth.tolist()
    assert np.allclose(top_dists, dists, atol=1e-5)
    short, short_dists = refined.rescore(q, candidates[:, 25:], 10)  # 5 real candidates each
    assert (short[:, 5:] == NO_KEY).all() and np.isinf(short_dists[:, 5:]).all()
    # One query's path: its valid candidates only, and a key not in the file dropped.
    for i in range(5):
        one, one_dists = refined.rescore_one(q[i], np.append(candidates[i, :30], np.uint64(999)), 10)
        assert one.tolist() == truth[i].tolist()
        assert np.allclose(one_dists, dists[i], atol=1e-5)
    few, few_dists = refined.rescore_one(q[0], candidates[0, :3], 10)
    assert len(few) == len(few_dists) == 3 and np.all(np.diff(few_dists) >= 0)
    # Distances to given keys (the joint search's), inf for a key not here.
    asked = np.append(truth[0][::-1], np.uint64(999))
    assert np.allclose(refined.distances(q[0], asked)[:-1], dists[0][::-1], atol=1e-5)
    assert np.isinf(refined.distances(q[0], asked)[-1])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-3], "is cut short or has bytes past its vectors"),
        (lambda raw: raw + b"\0", "is cut short or has bytes past its vectors"),
        (lambda raw: b"nonsense" + raw, "cannot read vectors file"),
    ],
)
def test_a_damaged_file_is_named(tmp_path: Path, damage: object, message: str) -> None:
    path = tmp_path / "v.f32"
    write_refined(path, [(np.arange(4, dtype=np.uint64), np.ones((4, DIM), np.float32))], DIM)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(CorruptCollectionError, match=message):
        Refined(path, metric="cosine")


def test_unsorted_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.f32"
    write_refined(path, [(np.array([3, 1], dtype=np.uint64), np.ones((2, DIM), np.float32))], DIM)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\n") + 1  # the keys' data follows the first header
    raw[at : at + 16] = np.array([3, 1], dtype="<u8").tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCollectionError, match="its keys are not sorted and unique"):
        Refined(path, metric="cosine")


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_an_i8_collection_keeps_its_vectors_and_finds_as_well_as_bf16(store: Store, metric: str) -> None:
    x = clustered(2000, DIM, seed=4)
    queries = clustered(50, DIM, seed=5)
    recalls = {}
    for dtype in ("i8", "bf16"):
        col = store.create(f"c_{dtype}", dim=DIM, dtype=dtype, metric=metric)  # type: ignore[arg-type]
        col.write(_keys(2000), x, mode="build")
        recalls[dtype] = _recall(col, x, queries)
    assert recalls["i8"] >= recalls["bf16"] - 0.01
    col = store.open("c_i8")
    # Exactly as given, not the 8-bit codes.
    assert np.array_equal(col.vectors(["k0", "k1999"]), x[[0, 1999]])
    m = read_manifest(col.directory)
    (main,) = m.main
    assert main.vectors == refined_name(main.file)
    assert json.loads((col.directory / "manifest.json").read_text())["format"] == 3


def test_upserts_deletes_and_a_rebuild_keep_the_vectors_as_given(store: Store) -> None:
    x = clustered(1200, DIM, seed=6)
    col = store.create("c", dim=DIM, dtype="i8")
    col.write(_keys(1000), x[:1000], mode="build")
    col.write(_keys(1200)[1000:], x[1000:], mode="insert")  # into the delta
    changed = x[:10][::-1].copy()
    col.write(_keys(10), changed, mode="upsert", delete=["k500"])
    m = read_manifest(col.directory)
    assert m.delta is not None and m.delta.vectors == refined_name(m.delta.file)
    assert np.array_equal(col.vectors(["k0", "k1100", "k999"]), np.stack([changed[0], x[1100], x[999]]))
    assert col.search(x[1100], 1)[0].id == "k1100"
    col.rebuild()
    m = read_manifest(col.directory)
    (main,) = m.main
    assert m.delta is None and main.count == 1199
    assert sorted(p.name for p in col.directory.iterdir() if p.suffix in (".usearch", ".f32")) == sorted(
        [main.file, refined_name(main.file)]
    )
    assert np.array_equal(col.vectors(["k0", "k1100", "k999"]), np.stack([changed[0], x[1100], x[999]]))
    assert [h.id for h in col.search(x[1100], 1)] == ["k1100"]


def test_an_i8_segment_written_before_vectors_files_still_reads_and_grows(store: Store) -> None:
    x = clustered(600, DIM, seed=7)
    col = store.create("c", dim=DIM, dtype="i8")
    col.write(_keys(500), x[:500], mode="build")
    # As an earlier version wrote it: no vectors file, format 1.
    path = col.directory / "manifest.json"
    data = json.loads(path.read_text())
    (col.directory / data["main"].pop("vectors")).unlink()
    data["format"] = 1
    path.write_text(json.dumps(data))
    old = store.open("c")
    assert old.search(x[3], 1)[0].id == "k3"
    old.write(_keys(600)[500:], x[500:], mode="insert")
    m = read_manifest(col.directory)
    assert [graph.vectors for graph in m.main] == [None]
    assert m.delta is not None and m.delta.vectors is not None
    assert store.open("c").search(x[550], 1)[0].id == "k550"


def test_distances_are_the_exact_ones_not_the_codes(store: Store) -> None:
    x = clustered(3000, DIM, seed=8)
    col = store.create("c", dim=DIM, dtype="i8")
    col.write(_keys(3000), x, mode="build")
    q = clustered(1, DIM, seed=11)[0]
    hits = col.search(q, 10, ef=200)
    exact = 1 - (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    assert np.allclose([h.distance for h in hits], exact[[int(h.id[1:]) for h in hits]], atol=1e-5)
    assert [h.id for h in hits] == [f"k{i}" for i in np.argsort(exact, kind="stable")[:10]]


def test_columns_past_a_querys_valid_count_are_never_rescored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # usearch leaves the columns past a query's count unwritten; they may hold real keys.
    from brinicle_etl.store import segment as segment_module

    x = clustered(400, DIM, seed=12)
    keys = np.arange(400, dtype=np.uint64)
    build_one(tmp_path / "s.usearch", keys, x, CollectionConfig(dim=DIM, dtype="i8"), HnswParams())
    seg = segment_module.Segment(tmp_path / "s.usearch", ef_search=64, vectors=tmp_path / "s.f32")
    real = segment_module._search_many
    q = x[[5]]

    def short(index: object, queries: np.ndarray, count: int, **kwargs: object) -> tuple[np.ndarray, ...]:
        found, dists, counts = real(index, queries, count, **kwargs)  # type: ignore[arg-type]
        found[:, 3:] = 399 - np.arange(found.shape[1] - 3)  # stale keys, some nearer than the three
        return found, dists, np.minimum(counts, 3)

    monkeypatch.setattr(segment_module, "_search_many", short)
    got, _, n = seg.search(q, 10, ef=None, exact=False, threads=1)
    assert n.tolist() == [3] and (got[0, 3:] == NO_KEY).all()
    one, _ = seg.search_one(q[0], 10, ef=None)
    assert one.tolist() == got[0, :3].tolist()


def test_a_build_leaves_no_scratch_file_and_a_crashed_ones_is_removed(store: Store) -> None:
    x = clustered(300, DIM, seed=13)
    col = store.create("c", dim=DIM, dtype="i8")
    col.write(_keys(300), x, mode="build")
    assert not list(col.directory.glob("spill-*"))
    (col.directory / "spill-00000000-deadbeef.f32").write_bytes(b"\0" * 64)  # as a killed build leaves it
    col.write(["extra"], x[:1], mode="insert")
    assert not list(col.directory.glob("spill-*"))


def test_a_manifest_with_vectors_null_reads_as_one_without(store: Store) -> None:
    x = clustered(200, DIM, seed=14)
    col = store.create("c", dim=DIM, dtype="bf16")
    col.write(_keys(200), x, mode="build")
    path = col.directory / "manifest.json"
    data = json.loads(path.read_text())
    assert "vectors" not in data["main"] and data["format"] == 1  # a bf16 collection's is as before
    data["main"]["vectors"] = None
    path.write_text(json.dumps(data))
    assert store.open("c").search(x[9], 1)[0].id == "k9"
    assert [graph.vectors for graph in read_manifest(col.directory).main] == [None]


def test_an_older_i8_delta_grows_a_vectors_file_from_its_codes(store: Store) -> None:
    x = clustered(700, DIM, seed=15)
    col = store.create("c", dim=DIM, dtype="i8")
    col.write(_keys(500), x[:500], mode="build")
    col.write(_keys(600)[500:], x[500:600], mode="insert")
    path = col.directory / "manifest.json"
    data = json.loads(path.read_text())
    for part in ("main", "delta"):
        (col.directory / data[part].pop("vectors")).unlink()
    data["format"] = 1
    path.write_text(json.dumps(data))
    old = store.open("c")
    old.write(_keys(700)[600:], x[600:], mode="insert")
    m = read_manifest(col.directory)
    assert m.delta is not None and m.delta.vectors is not None and m.delta.count == 200
    # The older rows' vectors are their codes decoded: close, not exact; the new ones exact.
    got = old.vectors(["k550", "k650"])
    assert np.array_equal(got[1], x[650]) and not np.array_equal(got[0], x[550])
    assert np.allclose(got[0] / np.linalg.norm(got[0]), x[550], atol=0.02)
    assert [h.id for h in store.open("c").search(x[550], 1)] == ["k550"]
