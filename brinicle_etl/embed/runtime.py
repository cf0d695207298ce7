"""Which path runs an embedding model: backend, precision and device, chosen once per model.

``auto`` (the default of each) takes the fastest path that passes the quality gate
(:mod:`brinicle_etl.embed.quality`) on the machine at hand:

- a CUDA GPU (when torch sees one): torch in fp16, else float32;
- a CPU with bf16 arithmetic (AVX512-BF16 or AMX): OpenVINO in bf16 (when the ``openvino``
  extra is installed), else torch in bf16, else float32;
- any other CPU: OpenVINO in float32 (when installed), else torch in float32.

``int8`` is never chosen by ``auto``; asked for, it runs and reports its measured quality.
Another path asked for explicitly runs only if it passes the gate, else the error says what
fell short. The gate's verdicts are kept beside the exported models in the user's cache
directory, so a machine measures each path once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brinicle_etl._fs import LocalFile, user_cache_dir
from brinicle_etl.embed.engines import EXPORT_VERSION, Engine, OnnxEngine, OpenVinoEngine, TorchEngine
from brinicle_etl.embed.quality import Quality, check_texts, measure
from brinicle_etl.errors import BrinicleError, ConfigError
from brinicle_etl.types import EmbedBackend, EmbedDevice, EmbedPrecision, check_choice

__all__ = ["REFERENCE", "Chosen", "EmbedOptions", "EmbedPath", "candidates", "choose", "cpu_has_bf16"]

log = logging.getLogger("brinicle_etl.embed")


@dataclass(frozen=True, kw_only=True)
class EmbedOptions:
    """What was asked for; each ``auto`` is decided by :func:`choose`."""

    backend: EmbedBackend = "auto"
    precision: EmbedPrecision = "auto"
    device: EmbedDevice = "auto"

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, EmbedBackend)
        check_choice("precision", self.precision, EmbedPrecision)
        check_choice("device", self.device, EmbedDevice)

    @property
    def explicit(self) -> bool:
        return self.backend != "auto" and self.precision != "auto"


@dataclass(frozen=True, kw_only=True)
class EmbedPath:
    """A concrete way of running a model."""

    backend: str
    precision: str
    device: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.precision}/{self.device}"


REFERENCE = EmbedPath(backend="torch", precision="f32", device="cpu")
"""What the gate compares with: ``SentenceTransformer.encode`` in float32 on the CPU."""


@dataclass(frozen=True)
class Chosen:
    """The path that runs a model, its engine, and its measured quality (None: float32)."""

    path: EmbedPath
    engine: Engine
    quality: Quality | None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU does bf16 arithmetic natively (x86 AVX512-BF16 or AMX; read on Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def candidates(options: EmbedOptions) -> list[EmbedPath]:
    """The paths ``options`` allows, fastest first."""
    device = options.device if options.device != "auto" else ("cuda" if _cuda() else "cpu")
    if device == "cuda":
        table = [("torch", "fp16"), ("torch", "bf16"), ("torch", "f32")]
    elif options.backend == "auto" and options.precision == "auto":
        table = [("openvino", "bf16"), ("torch", "bf16")] if cpu_has_bf16() else [("openvino", "f32")]
        table.append(("torch", "f32"))
    else:
        table = [("openvino", "bf16"), ("torch", "bf16"), ("openvino", "f32"), ("onnx", "f32"), ("torch", "f32")]
        table += [("onnx", "int8")] if options.precision == "int8" else []
    paths = [
        EmbedPath(backend=b, precision=p, device=device)
        for b, p in table
        if options.backend in ("auto", b) and options.precision in ("auto", p)
    ]
    if not paths:
        raise ConfigError(
            f"no embedding path runs backend={options.backend!r} with precision={options.precision!r} "
            f"on {device}; torch runs f32, bf16 and fp16, openvino f32 and bf16 (CPU), onnx f32 and int8 (CPU)"
        )
    return paths


def choose(model: Any, options: EmbedOptions, *, model_dir: Path, batch_size: int, normalize: bool) -> Chosen:
    """The first of :func:`candidates` that can run here and passes the gate (or, ``int8``,
    was asked for)."""
    verdicts = _Verdicts(model_dir)
    skipped: list[str] = []
    for path in candidates(options):
        try:
            engine = _engine(model, path, model_dir=model_dir, batch_size=batch_size, normalize=normalize)
        except Exception as exc:  # not installed, or an export or compile this model does not survive
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if options.backend != "auto":
                if isinstance(exc, BrinicleError):
                    raise
                raise ConfigError(
                    f"embedding path {path} cannot run this model: {reason}; "
                    "leave backend at 'auto' to use another path"
                ) from exc
            log.info("embedding path %s skipped: %s", path, reason)
            skipped.append(f"{path}: {reason}")
            continue
        if path.backend == "torch" and path.precision == "f32":
            return Chosen(path, engine, None)
        quality = verdicts.get(path, lambda: _reference(model, model_dir), engine)
        if path.precision == "int8" and options.precision == "int8":
            log.info("embedding path %s (asked for): %s", path, quality)
            return Chosen(path, engine, quality)
        if quality.passes():
            log.info("embedding path %s: %s", path, quality)
            return Chosen(path, engine, quality)
        if options.explicit:
            raise ConfigError(
                f"embedding path {path} fails the quality gate on this machine: {quality.why()}; "
                "leave backend and precision at 'auto' to use the fastest path that passes"
            )
        log.info("embedding path %s skipped: fails the quality gate (%s)", path, quality.why())
        skipped.append(f"{path}: fails the quality gate ({quality.why()})")
    raise ConfigError(
        f"no embedding path for backend={options.backend!r}, precision={options.precision!r} runs here: "
        + "; ".join(skipped)
    )


def _engine(model: Any, path: EmbedPath, *, model_dir: Path, batch_size: int, normalize: bool) -> Engine:
    if path.backend == "openvino":
        return OpenVinoEngine(
            model, precision=path.precision, cache_dir=model_dir, batch_size=batch_size, normalize=normalize
        )
    if path.backend == "onnx":
        return OnnxEngine(
            model, precision=path.precision, cache_dir=model_dir, batch_size=batch_size, normalize=normalize
        )
    if path.device == "cuda" and not _cuda():
        raise ConfigError("device='cuda' was asked for, but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    return TorchEngine(model, precision=path.precision, device=path.device, batch_size=batch_size, normalize=normalize)


def model_cache_dir(name_or_path: str) -> Path:
    """Where a model's exports and gate verdicts are kept: one folder per model files and
    library versions, under the user's cache directory."""
    import torch

    source = Path(name_or_path)
    stamp = [name_or_path, torch.__version__, f"export:{EXPORT_VERSION}"]
    if source.is_dir():
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            info = file.stat()
            stamp.append(f"{file.relative_to(source)}:{info.st_size}:{info.st_mtime_ns}")
    for module in ("openvino", "onnxruntime"):
        if _has(module):
            stamp.append(f"{module}:{importlib.import_module(module).__version__}")
    return user_cache_dir() / "models" / hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:16]


_references: dict[Path, np.ndarray] = {}
_references_lock = threading.Lock()


def _reference(model: Any, model_dir: Path) -> np.ndarray:
    """The model's float32 vectors of the check texts, computed once per process."""
    with _references_lock:
        if model_dir not in _references:
            engine = TorchEngine(model, precision="f32", device="cpu", batch_size=32, normalize=True)
            _references[model_dir] = engine.encode(check_texts())
        return _references[model_dir]


class _Verdicts:
    """Gate verdicts of one model on this machine (``gate.json`` in its cache folder)."""

    def __init__(self, model_dir: Path):
        self._file = LocalFile(model_dir / "gate.json")

    def get(self, path: EmbedPath, reference: Callable[[], np.ndarray], engine: Engine) -> Quality:
        key = f"{path}@{_machine()}"
        saved = self._read().get(key)
        if saved is not None:
            return Quality.from_dict(saved)
        quality = measure(reference(), engine.encode(check_texts()))

        def add(raw: bytes | None) -> bytes:
            return json.dumps({**_parse(raw), key: quality.to_dict()}, indent=2).encode()

        try:
            self._file.update(add)
        except OSError as exc:  # a cache that cannot be written: measured again next time
            log.warning("cannot keep the quality gate's verdict in %s: %s", self._file, exc)
        return quality

    def _read(self) -> dict[str, Any]:
        return _parse(self._file.read())


def _parse(raw: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}  # a damaged cache is measured again
    return data if isinstance(data, dict) else {}


@functools.cache
def _machine() -> str:
    """The CPU model: a verdict holds for the machine it was measured on."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "cpu")
    except OSError:
        return "cpu"
