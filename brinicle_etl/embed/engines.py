"""What runs a sentence-transformers model: torch (float32, or bf16 / fp16 under autocast),
OpenVINO (float32 or bf16) and ONNX Runtime (float32, or int8 weights), behind one ``encode``.

The exported models (an OpenVINO IR, an ONNX file) are the whole sentence-transformers
pipeline (transformer, pooling, normalisation) traced from the loaded model, so every
backend computes what ``SentenceTransformer.encode`` computes. They are written once per
model into a cache folder (see :func:`brinicle_etl.embed.runtime.model_cache_dir`), under a
file lock, so only the first run on a machine pays for the conversion.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from brinicle_etl._cpus import usable_cpus
from brinicle_etl._fs import exclusive
from brinicle_etl.errors import ConfigError, MissingExtraError

__all__ = ["EXPORT_VERSION", "Engine", "OnnxEngine", "OpenVinoEngine", "TorchEngine", "load_model"]

EXPORT_VERSION = 2
"""Part of the cache folder's name: a change to how models are exported makes new exports."""

_models: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


class Engine(Protocol):
    """One way of running one model: texts in, float32 vectors out (one row per text)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def load_model(name_or_path: str, device: str) -> Any:
    """The ``SentenceTransformer`` for a model directory or name, loaded once per process."""
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


class TorchEngine:
    """``SentenceTransformer.encode``; bf16 (CPU) or fp16 (CUDA) run under ``torch.autocast``."""

    def __init__(self, model: Any, *, precision: str, device: str, batch_size: int, normalize: bool):
        self._model, self._device = model, device
        self._batch_size, self._normalize = batch_size, normalize
        self._dtype: Any = None
        if precision in ("bf16", "fp16"):
            import torch

            self._dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not len(texts):
            return np.empty((0, _dimension(self._model)), dtype=np.float32)
        autocast: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if self._dtype is not None:
            autocast = torch.autocast(self._device, dtype=self._dtype)
        with autocast, torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=self._normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


class _Tokenized:
    """Texts tokenized as the model does, in one call, then cut into batches of texts of the
    same token count (sorted), padded to the longest in each: almost no padding is computed."""

    def __init__(self, model: Any, batch_size: int):
        self._tokenizer = model.tokenizer
        self._max_length = int(model.max_seq_length or 512)
        self._batch_size = batch_size
        self._pad = int(self._tokenizer.pad_token_id or 0)
        self.names: list[str] = list(self._tokenizer.model_input_names)

    def batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        if not len(texts):
            return
        encoded = self._tokenizer(list(texts), truncation=True, max_length=self._max_length)
        ids: list[list[int]] = encoded["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), self._batch_size):
            rows = order[start : start + self._batch_size]
            width = int(lengths[rows].max())
            feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in self.names}
            feed["input_ids"].fill(self._pad)
            for i, row in enumerate(rows.tolist()):
                n = int(lengths[row])
                feed["input_ids"][i, :n] = ids[row]
                if "attention_mask" in feed:
                    feed["attention_mask"][i, :n] = 1
                if "token_type_ids" in feed:
                    feed["token_type_ids"][i, :n] = encoded["token_type_ids"][row]
            yield rows, feed


def _unit(vectors: np.ndarray, normalize: bool) -> np.ndarray:
    if not normalize:
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


class OpenVinoEngine:
    """The model as an OpenVINO IR, compiled for the CPU at ``precision`` (bf16 uses AMX or
    AVX512-BF16 where the CPU has them) with the throughput hint: batches run in parallel
    streams while the next ones are tokenized."""

    def __init__(self, model: Any, *, precision: str, cache_dir: Path, batch_size: int, normalize: bool):
        ov = _import("openvino", "openvino")
        self._ov = ov
        self._tokens = _Tokenized(model, batch_size)
        self._dim = _dimension(model)
        self._normalize = normalize
        xml = _export(model, self._tokens.names, cache_dir / "openvino", _save_openvino, "model.xml")
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(cache_dir / "openvino" / "compiled")})
        self._compiled = core.compile_model(
            str(xml), "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "THROUGHPUT"}
        )
        # The conversion drops inputs the model ignores (BERT's token_type_ids, all zeros here).
        self._inputs = {name for port in self._compiled.inputs for name in port.get_names()}
        # Twice the streams' worth of requests in flight: a stream never waits for Python to
        # tokenize its next batch (measured: ~10% more texts/s on 2 cores than one per stream).
        self._jobs = 2 * int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not len(texts):
            return out
        requests = self._ov.AsyncInferQueue(self._compiled, self._jobs)

        def done(request: Any, rows: np.ndarray) -> None:
            out[rows] = request.get_output_tensor(0).data

        requests.set_callback(done)
        for rows, feed in self._tokens.batches(texts):
            requests.start_async({k: v for k, v in feed.items() if k in self._inputs}, userdata=rows)
        requests.wait_all()
        return _unit(out, self._normalize)


class OnnxEngine:
    """The model exported to ONNX, run by ONNX Runtime on the CPU; ``int8`` quantizes the
    weights (dynamic quantization, per channel)."""

    def __init__(self, model: Any, *, precision: str, cache_dir: Path, batch_size: int, normalize: bool):
        ort = _import("onnxruntime", "onnx")
        self._tokens = _Tokenized(model, batch_size)
        self._normalize = normalize
        path = _export(model, self._tokens.names, cache_dir / "onnx", _save_onnx, "model.onnx")
        if precision == "int8":
            path = _quantized(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = usable_cpus()
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._dim = _dimension(model)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for rows, feed in self._tokens.batches(texts):
            out[rows] = self._session.run(None, feed)[0]
        return _unit(out, self._normalize)


def _dimension(model: Any) -> int:
    # sentence-transformers 6 renamed the method; older releases have only the old name.
    method = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(method())


def _import(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"the {module} embedding backend needs {module}: pip install 'brinicle-etl[{extra}]'"
        ) from exc


_GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _graph(model: Any, names: list[str]) -> Any:
    """The whole sentence-transformers pipeline as a module of the tokenizer's inputs."""
    import torch

    unknown = set(names) - set(_GRAPH_INPUTS)
    if unknown:
        raise ConfigError(f"exporting a model whose tokenizer gives {sorted(unknown)} is not supported")

    class Sentence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.model(features)["sentence_embedding"]

    return Sentence().eval()


def _example(model: Any, names: list[str]) -> dict[str, Any]:
    encoded = model.tokenizer(["a short example", "and a somewhat longer one"], padding=True, return_tensors="pt")
    return {name: encoded[name] for name in names}


def _export(model: Any, names: list[str], folder: Path, save: Any, file: str) -> Path:
    """The exported model in ``folder``, made once (under a lock; written beside, then renamed)."""
    target = folder / file
    if target.exists():
        return target
    with exclusive(folder.parent / f".{folder.name}.lock"), warnings.catch_warnings():
        # Tracing notes values it fixes (the mask's length equals the tokens'), true for any input.
        warnings.simplefilter("ignore")
        if target.exists():
            return target
        partial = folder.with_name(f"{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save(model, names, partial / file)
        shutil.rmtree(folder, ignore_errors=True)  # a compiled cache without its model
        partial.rename(folder)
    return target


def _save_openvino(model: Any, names: list[str], path: Path) -> None:
    import openvino as ov
    import torch

    with torch.no_grad():  # dynamic batch and length: the converter's default for torch models
        converted = ov.convert_model(_graph(model, names), example_input=_example(model, names))
    ov.save_model(converted, str(path), compress_to_fp16=False)  # float32 weights: precision is chosen later


def _save_onnx(model: Any, names: list[str], path: Path) -> None:
    import torch

    ordered = [name for name in _GRAPH_INPUTS if name in names]  # as forward() takes them
    axes = {name: {0: "batch", 1: "tokens"} for name in ordered} | {"embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            _graph(model, names),
            (),
            str(path),
            kwargs=_example(model, names),
            input_names=ordered,
            output_names=["embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _quantized(path: Path) -> Path:
    target = path.with_name("model-int8.onnx")
    if target.exists():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with exclusive(path.with_name(".int8.lock")):
        if not target.exists():
            partial = path.with_name("model-int8.partial.onnx")
            quantize_dynamic(str(path), str(partial), per_channel=True, weight_type=QuantType.QInt8)
            partial.rename(target)
    return target
