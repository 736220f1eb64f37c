"""TensorRT engines of the correspondence graphs: build, cache, run (TensorRT 10 Python API).

Engines are specific to the GPU, the TensorRT version, the precision and the shape profile they
were built for, so each one is stored under a key of exactly those ingredients plus the ONNX file's
sha256 (:class:`EngineCacheKey`): ``<graph>_<digest>.engine`` with a ``.json`` sidecar holding
the key. A cached engine is reused only when its sidecar holds the same key and TensorRT
deserializes it; otherwise it is rebuilt and the reason is logged (a stale engine is never
silently reused). TensorRT's timing cache (measured kernel timings) is kept next to the engines,
one file per GPU model and TensorRT version, which makes rebuilds much faster.

``tensorrt`` is imported inside functions only: this module imports without it (CPU machines),
and the cache logic is tested there with a fake builder.

Precision: ``fp32`` clears TensorRT's TF32 flag (on by default from Ampere on), so fp32 engines
match PyTorch to :data:`pose_node.correspondence.backends.PARITY_ATOL`; ``fp16`` lets TensorRT
pick half-precision kernels (inputs and outputs stay float32).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pose_node.core.errors import InvalidInputError, PoseNodeError, StageUnavailableError
from pose_node.correspondence.network import CorrespondenceNetConfig

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
#: Bumped when the engine file layout or the sidecar changes (old files are then rebuilt).
ENGINE_CACHE_FORMAT = 1


class EngineBuildError(StageUnavailableError):
    """TensorRT could not parse an ONNX graph or build an engine from it."""


@dataclass(frozen=True)
class EngineConfig:
    """How engines are built. Batch ranges are ``(min, opt, max)``: the engine accepts any size in
    [min, max] and is tuned for opt; larger batches are split by the backend.

    Attributes:
        encoder_batch: images per encoder call (crops, or templates at onboarding).
        head_batch: crops per head call.
        head_hypotheses: template hypotheses H per crop.
        workspace_mib: TensorRT's scratch memory limit, MiB.
        optimization_level: TensorRT builder optimization level 0-5 (3 is TensorRT's default;
            higher tries more kernels, builds slower).
    """

    encoder_batch: tuple[int, int, int] = (1, 8, 32)
    head_batch: tuple[int, int, int] = (1, 4, 32)
    head_hypotheses: tuple[int, int, int] = (1, 3, 8)
    workspace_mib: int = 1024
    optimization_level: int = 3

    def __post_init__(self) -> None:
        for name in ("encoder_batch", "head_batch", "head_hypotheses"):
            value = getattr(self, name)
            if len(value) != 3 or not 1 <= value[0] <= value[1] <= value[2]:
                raise InvalidInputError(f"EngineConfig.{name}: (min, opt, max) with 1 <= min <= opt <= max, got {value}")
        if self.workspace_mib < 1 or not 0 <= self.optimization_level <= 5:
            raise InvalidInputError(f"EngineConfig: workspace_mib >= 1 and optimization_level in 0..5, got "
                                    f"{self.workspace_mib}, {self.optimization_level}")


@dataclass(frozen=True)
class InputProfile:
    """Shape range of one network input (what ``IOptimizationProfile.set_shape`` takes)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def input_profiles(graph: str, net_config: CorrespondenceNetConfig, engine_config: EngineConfig) -> tuple[InputProfile, ...]:
    """The optimization profile of the ``"encoder"`` or ``"head"`` graph (shapes in
    :mod:`pose_node.correspondence.export`)."""
    S, g, D, Fd = net_config.crop_size_px, net_config.grid_size, net_config.descriptor_dim, net_config.feature_dim
    if graph == "encoder":
        return (InputProfile("images", *((b, 3, S, S) for b in engine_config.encoder_batch)),)
    if graph != "head":
        raise InvalidInputError(f"graph: 'encoder' or 'head', got {graph!r}")
    per_crop = {"crop_descriptors": (D, g, g), "crop_features": (Fd, g, g), "detection_mask": (1, g, g)}
    per_hypothesis = {"template_descriptors": (D, g, g), "template_xyz_norm": (3, g, g), "template_mask": (1, g, g)}
    bs, hs = engine_config.head_batch, engine_config.head_hypotheses
    profiles = [InputProfile(n, *((b, *rest) for b in bs)) for n, rest in per_crop.items()]
    profiles += [InputProfile(n, *((b, h, *rest) for b, h in zip(bs, hs))) for n, rest in per_hypothesis.items()]
    return tuple(profiles)


@dataclass(frozen=True)
class EngineCacheKey:
    """Everything a serialized engine depends on; :meth:`digest` names its file.

    Attributes:
        gpu_name: ``torch.cuda.get_device_name`` (e.g. "NVIDIA H100 80GB HBM3", "Orin").
        compute_capability: (major, minor).
        tensorrt_version: ``tensorrt.__version__``.
        precision: one of :data:`PRECISIONS`.
        profile: the inputs' shape ranges (:func:`input_profiles`).
        onnx_sha256: hex sha256 of the ONNX file the engine is built from.
    """

    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    precision: str
    profile: tuple[InputProfile, ...]
    onnx_sha256: str

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"EngineCacheKey.precision: one of {PRECISIONS}, got {self.precision!r}")

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (lists for tuples), as stored in the sidecar."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineCacheKey:
        """Inverse of :meth:`to_json`. Raises KeyError/TypeError/ValueError on a malformed dict."""
        profile = tuple(InputProfile(p["name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for p in data["profile"])
        return cls(str(data["gpu_name"]), tuple(data["compute_capability"]), str(data["tensorrt_version"]),
                   str(data["precision"]), profile, str(data["onnx_sha256"]))

    def digest(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of the key (and the cache format)."""
        text = json.dumps({"format": ENGINE_CACHE_FORMAT, **self.to_json()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: EngineCacheKey) -> list[str]:
        """Names of the fields where ``other`` differs (for log messages)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def tensorrt_version() -> str | None:
    """``tensorrt.__version__``, or None when TensorRT is not importable."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return str(trt.__version__)


def make_cache_key(onnx_sha256: str, graph: str, net_config: CorrespondenceNetConfig, engine_config: EngineConfig,
                   precision: str, device: torch.device, trt_version: str) -> EngineCacheKey:
    """The key of an engine for ``graph`` on ``device`` (a CUDA device)."""
    major, minor = torch.cuda.get_device_capability(device)
    return EngineCacheKey(torch.cuda.get_device_name(device), (major, minor), trt_version, precision,
                          input_profiles(graph, net_config, engine_config), onnx_sha256)


def timing_cache_path(cache_dir: Path, key: EngineCacheKey) -> Path:
    """One timing cache per GPU model and TensorRT version (what its measurements depend on)."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key.gpu_name).strip("-").lower()
    cc = "".join(str(c) for c in key.compute_capability)
    return cache_dir / f"timing_{gpu}_sm{cc}_trt{key.tensorrt_version}.cache"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _trt_logger():
    import tensorrt as trt

    class _Logger(trt.ILogger):
        """Routes TensorRT's messages to :mod:`logging`."""

        _LEVELS = {
            trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL, trt.ILogger.Severity.ERROR: logging.ERROR,
            trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.DEBUG,
            trt.ILogger.Severity.VERBOSE: logging.DEBUG,
        }

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:
            logger.log(self._LEVELS.get(severity, logging.DEBUG), "TensorRT: %s", msg)

    global _LOGGER
    if _LOGGER is None:  # TensorRT wants one logger for the process
        _LOGGER = _Logger()
    return _LOGGER


_LOGGER = None


def build_serialized_engine(onnx_path: Path, key: EngineCacheKey, engine_config: EngineConfig, timing_cache: Path) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine for ``key``'s precision and profile.

    Reads the timing cache if it exists and writes it back updated.

    Raises:
        EngineBuildError: the parser or the builder failed (their messages are included).
    """
    import tensorrt as trt

    trt_logger = _trt_logger()
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    profiled = {p.name for p in key.profile}
    if inputs != profiled:
        raise EngineBuildError(f"{onnx_path}: inputs {sorted(inputs)} differ from the shape profile's {sorted(profiled)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, engine_config.workspace_mib << 20)
    config.builder_optimization_level = engine_config.optimization_level
    if key.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would cost fp32 parity (10-bit mantissa)
    profile = builder.create_optimization_profile()
    for p in key.profile:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if timing_cache.is_file():
        cache_bytes = timing_cache.read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("timing cache %s does not fit this GPU/TensorRT; starting an empty one", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} ({key.precision}); see the TensorRT log above")
    try:
        _write_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    except OSError as err:
        logger.warning("cannot save the TensorRT timing cache %s: %s", timing_cache, err)
    return bytes(memoryview(serialized))


def load_or_build_engine(
    onnx_path: Path, key: EngineCacheKey, cache_dir: Path, engine_config: EngineConfig, deserialize: Callable[[bytes], Any],
) -> tuple[Any, Path, bool]:
    """A deserialized engine for ``key``: the cached one when it is valid, else a fresh build.

    Args:
        onnx_path: the graph (its sha256 is ``key.onnx_sha256``).
        key: what the engine must have been built for.
        cache_dir: engines, sidecars and timing caches (created if missing).
        engine_config: build settings (workspace, optimization level).
        deserialize: bytes -> engine; None or an exception means the bytes are unusable
            (``trt.Runtime.deserialize_cuda_engine`` in production, a fake in tests).
    Returns:
        ``(engine, engine file, reused)``; ``reused`` is False when it was (re)built.
    Raises:
        EngineBuildError: building failed, or a freshly built engine does not deserialize.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(onnx_path).stem}_{key.digest()}"
    engine_path, sidecar_path = cache_dir / f"{stem}.engine", cache_dir / f"{stem}.json"
    reason = _stale_reason(engine_path, sidecar_path, key)
    if reason is None:
        try:
            engine = _try_deserialize(deserialize, engine_path.read_bytes())
        except OSError as err:
            engine, reason = None, f"{engine_path.name} unreadable: {err}"
        if engine is not None:
            logger.info("TensorRT engine %s reused", engine_path.name)
            return engine, engine_path, True
        reason = reason or f"{engine_path.name} does not deserialize (corrupt, or built by another TensorRT)"
    if reason == "missing":
        reason = _why_missing(cache_dir, Path(onnx_path).stem, engine_path, key)
    logger.info("building TensorRT engine %s for %s (%s): %s", engine_path.name, Path(onnx_path).name, key.precision, reason)
    data = build_serialized_engine(Path(onnx_path), key, engine_config, timing_cache_path(cache_dir, key))
    engine = _try_deserialize(deserialize, data)
    if engine is None:
        raise EngineBuildError(f"a freshly built engine for {onnx_path} does not deserialize")
    # sidecar after the engine: a crash in between leaves an engine without a key, which is rebuilt
    try:
        _write_atomic(engine_path, data)
        _write_atomic(sidecar_path, (json.dumps(key.to_json(), indent=2, sort_keys=True) + "\n").encode())
    except OSError as err:  # a read-only cache costs a rebuild next time, not this run
        logger.warning("cannot cache TensorRT engine %s (%s); it will be rebuilt next time", engine_path, err)
    return engine, engine_path, False


def _stale_reason(engine_path: Path, sidecar_path: Path, key: EngineCacheKey) -> str | None:
    if not engine_path.is_file():
        return "missing"
    try:
        stored = EngineCacheKey.from_json(json.loads(sidecar_path.read_text()))
    except FileNotFoundError:
        return f"{sidecar_path.name} missing (interrupted build?)"
    except (OSError, ValueError, KeyError, TypeError, InvalidInputError) as err:
        return f"{sidecar_path.name} unreadable: {err}"
    if stored != key:
        return f"cache key mismatch in {sidecar_path.name}: {', '.join(key.differences(stored))} differ"
    return None


def _why_missing(cache_dir: Path, graph_stem: str, engine_path: Path, key: EngineCacheKey) -> str:
    # Engines of the same graph under other keys explain a rebuild (new ONNX, TensorRT, GPU,
    # precision); they are left in place, another configuration may still use them.
    others = []
    for sidecar in sorted(cache_dir.glob(f"{graph_stem}_*.json")):
        try:
            stored = EngineCacheKey.from_json(json.loads(sidecar.read_text()))
        except (OSError, ValueError, KeyError, TypeError, InvalidInputError):
            continue
        others.append(f"{sidecar.stem} differs in {', '.join(key.differences(stored)) or 'nothing (renamed?)'}")
    if not others:
        return "no cached engine"
    return f"no engine for this key; cached ones are stale ({'; '.join(others)})"


def _try_deserialize(deserialize: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return deserialize(data)
    except (PoseNodeError, RuntimeError, ValueError, TypeError) as err:
        logger.debug("engine deserialization failed: %s", err)
        return None


class EngineRunner:
    """One engine and its execution context, run on torch CUDA tensors (no host copies).

    Not thread-safe (one execution context); create one runner per thread.
    """

    def __init__(self, engine: Any, device: torch.device) -> None:
        import tensorrt as trt

        self.engine = engine
        self.device = torch.device(device)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineBuildError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on the current CUDA stream.

        Args:
            inputs: every input by name, on ``device``, shapes inside the engine's profile.
        Returns:
            Outputs by name, new tensors on ``device``, ordered on the current stream (later
            torch work on that stream sees them complete).
        """
        # Kept referenced until the call returns; the caching allocator orders any reuse of
        # their memory after this stream's work, so no synchronize is needed.
        held = {}
        for name in self.input_names:
            tensor = inputs[name].to(device=self.device, dtype=self._dtypes[name]).contiguous()
            held[name] = tensor
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise InvalidInputError(f"{name}: shape {tuple(tensor.shape)} outside the engine's profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        with torch.cuda.device(self.device):  # TensorRT launches on the current device
            ok = self.context.execute_async_v3(stream.cuda_stream)
        if not ok:
            raise EngineBuildError("TensorRT execute_async_v3 failed; see the TensorRT log")
        return outputs


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool}
    if dtype not in table:
        raise EngineBuildError(f"engine tensor dtype {dtype} not supported by this runner")
    return table[dtype]


def load_engine_runner(onnx_path: Path, onnx_sha256: str, graph: str, net_config: CorrespondenceNetConfig, engine_config: EngineConfig,
                       precision: str, device: torch.device, cache_dir: Path) -> tuple[EngineRunner, bool]:
    """Load (or build) the engine of ``graph`` for ``device`` and wrap it in a runner.

    Returns:
        ``(runner, reused)``.
    Raises:
        StageUnavailableError: TensorRT is not importable or ``device`` is not a CUDA device.
        EngineBuildError: building failed.
    """
    version = tensorrt_version()
    if version is None:
        raise StageUnavailableError("the tensorrt Python package is not importable")
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise StageUnavailableError(f"TensorRT needs a CUDA device, got {device} (cuda available: {torch.cuda.is_available()})")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    import tensorrt as trt

    key = make_cache_key(onnx_sha256, graph, net_config, engine_config, precision, device, version)
    with torch.cuda.device(device):
        runtime = trt.Runtime(_trt_logger())
        engine, _, reused = load_or_build_engine(onnx_path, key, cache_dir, engine_config, runtime.deserialize_cuda_engine)
        runner = EngineRunner(engine, device)
    runner.runtime = runtime  # the runtime must outlive its engines
    return runner, reused
