"""Where the correspondence network runs: PyTorch, ONNX Runtime or TensorRT, behind one interface.

:class:`CorrespondenceBackend` is what the estimator calls: :meth:`~CorrespondenceBackend.encode`
and :meth:`~CorrespondenceBackend.head` take and return torch tensors on the backend's ``device``
(shapes in :mod:`pose_node.correspondence.network`), whatever runs underneath:

- :class:`TorchBackend`: the checkpoint's :class:`CorrespondenceNet` (reference; any device).
- :class:`OnnxRuntimeBackend`: the exported graphs (:mod:`pose_node.correspondence.export`) in
  ONNX Runtime, CUDA execution provider on a CUDA device when available, else CPU.
- :class:`TensorRTBackend`: engines built from the exported graphs
  (:mod:`pose_node.correspondence.tensorrt_engine`), CUDA only; fp32 or fp16.

:func:`create_backend` picks one (``"auto"``: TensorRT, then ONNX Runtime, then PyTorch), exporting
the ONNX graphs from the checkpoint into a cache folder when none are given, and logs what it
picked and why it skipped the others.

Parity: every backend matches :class:`TorchBackend` on the same weights within
:func:`parity_tolerance` of its precision (``torch.testing.assert_close`` semantics:
``|a - b| <= atol + rtol |b|``, in the outputs' own units: normalized object coordinates,
unit descriptors, logits, weights).
"""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.onnx_session import OnnxSessionError, open_onnx_session
from pose_node.core.resources import shipped_file
from pose_node.correspondence.export import (
    ENCODER_FILE,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    HEAD_FILE,
    HEAD_INPUTS,
    HEAD_OUTPUTS,
    MIN_OPSET,
    OnnxExportError,
    export_onnx,
    load_checkpoint,
    read_export,
    state_dict_sha256,
)
from pose_node.correspondence.network import CorrespondenceNet, CorrespondenceNetConfig, HeadOutput
from pose_node.correspondence.tensorrt_engine import PRECISIONS, EngineBuildError, EngineConfig

logger = logging.getLogger(__name__)

#: fp32 runtimes (ONNX Runtime, TensorRT without TF32) vs PyTorch. Measured on CPU with random
#: weights: < 1e-6 absolute; the margin covers other kernels (CUDA, TensorRT tactics) and trained
#: weights with larger activations.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3
#: TensorRT fp16 vs PyTorch fp32 (10-bit mantissa; the correlation softmax amplifies errors).
PARITY_ATOL_FP16 = 3e-2
PARITY_RTOL_FP16 = 3e-2

BACKEND_KINDS = ("tensorrt", "onnxruntime", "torch")
DEFAULT_CHECKPOINT_NAME = "correspondence_effl0.pt"
CACHE_ENV_VAR = "POSE_NODE_CACHE"  # shared with pose_node.onboarding.cache
DEFAULT_CACHE_ROOT = Path("~/.cache/pose_node")


def parity_tolerance(precision: str = "fp32") -> tuple[float, float]:
    """``(atol, rtol)`` of a backend of ``precision`` against :class:`TorchBackend` (module docstring)."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision: one of {PRECISIONS}, got {precision!r}")
    return (PARITY_ATOL, PARITY_RTOL) if precision == "fp32" else (PARITY_ATOL_FP16, PARITY_RTOL_FP16)


def default_checkpoint() -> Path:
    """The shipped weights ``models/correspondence_effl0.pt`` (may not exist)."""
    return shipped_file(DEFAULT_CHECKPOINT_NAME)


def cache_root() -> Path:
    """``$POSE_NODE_CACHE`` if set and non-empty, else ``~/.cache/pose_node``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or str(DEFAULT_CACHE_ROOT)).expanduser()


class CorrespondenceBackend(ABC):
    """The correspondence network on some runtime (module docstring).

    Attributes:
        name: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        device: where inputs must be and outputs are.
        config: the network's architecture (S, g, D, F).
    """

    name: str
    device: torch.device
    config: CorrespondenceNetConfig

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Describe crops or templates.

        Args:
            images: (B, 3, S, S) float32 in [0, 1], on ``device``.
        Returns:
            ``(descriptors (B, D, g, g) unit norm over D, features (B, F, g, g))`` on ``device``.
        Raises:
            InvalidInputError: wrong shape, dtype or device (the message has the received one).
        """
        S = self.config.crop_size_px
        self._check("images", images, (None, 3, S, S))
        if images.shape[0] == 0:
            g = self.config.grid_size
            empty = images.new_empty
            return empty((0, self.config.descriptor_dim, g, g)), empty((0, self.config.feature_dim, g, g))
        return self._encode(images)

    def head(self, crop_descriptors: torch.Tensor, crop_features: torch.Tensor, detection_mask: torch.Tensor,
             template_descriptors: torch.Tensor, template_xyz_norm: torch.Tensor, template_mask: torch.Tensor) -> HeadOutput:
        """Match B crops with H template hypotheses each (:meth:`CorrespondenceHead.forward`).

        Args:
            crop_descriptors: (B, D, g, g) unit norm. crop_features: (B, F, g, g).
            detection_mask: (B, 1, g, g) in [0, 1].
            template_descriptors: (B, H, D, g, g) unit norm, H >= 1.
            template_xyz_norm: (B, H, 3, g, g) normalized object coordinates.
            template_mask: (B, H, 1, g, g) in [0, 1].
            All float32 on ``device``.
        Returns:
            :class:`HeadOutput` on ``device``: xyz_norm (B, H, N, 3), weights (B, H, N, 2),
            mask_logit (B, N), match_score (B, H).
        Raises:
            InvalidInputError: wrong shape, dtype or device, or H == 0.
        """
        c, g = self.config, self.config.grid_size
        self._check("crop_descriptors", crop_descriptors, (None, c.descriptor_dim, g, g))
        B = crop_descriptors.shape[0]
        self._check("crop_features", crop_features, (B, c.feature_dim, g, g))
        self._check("detection_mask", detection_mask, (B, 1, g, g))
        self._check("template_descriptors", template_descriptors, (B, None, c.descriptor_dim, g, g))
        H = template_descriptors.shape[1]
        self._check("template_xyz_norm", template_xyz_norm, (B, H, 3, g, g))
        self._check("template_mask", template_mask, (B, H, 1, g, g))
        if H == 0:
            raise InvalidInputError("template_descriptors: at least one hypothesis (H >= 1), got H = 0")
        if B == 0:
            N, empty = g * g, crop_descriptors.new_empty
            return HeadOutput(empty((0, H, N, 3)), empty((0, H, N, 2)), empty((0, N)), empty((0, H)))
        return HeadOutput(*self._head(crop_descriptors, crop_features, detection_mask, template_descriptors, template_xyz_norm, template_mask))

    def _check(self, name: str, tensor: torch.Tensor, shape: tuple[int | None, ...]) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise InvalidInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        ok = tensor.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
        if not ok:
            wanted = ", ".join("*" if s is None else str(s) for s in shape)
            raise InvalidInputError(f"{name}: expected shape ({wanted}), got {tuple(tensor.shape)}")
        if tensor.dtype != torch.float32:
            raise InvalidInputError(f"{name}: expected float32, got {tensor.dtype}")
        if tensor.device != self.device:
            raise InvalidInputError(f"{name}: on {tensor.device}, the {self.name} backend runs on {self.device}")

    @abstractmethod
    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` on validated, non-empty inputs."""

    @abstractmethod
    def _head(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`head` on validated, non-empty inputs; returns the four outputs in order."""


def _canonical_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class TorchBackend(CorrespondenceBackend):
    """The PyTorch network itself (the reference the other backends are checked against)."""

    name = "torch"

    def __init__(self, net: CorrespondenceNet, device: str | torch.device = "cpu") -> None:
        """Args: net: moved to ``device`` and switched to eval mode (the backend owns it from now on)."""
        self.device = _canonical_device(device)
        self.net = net.to(self.device).eval()
        self.config = net.config

    def _encode(self, images):
        with torch.no_grad():
            return self.net.encoder(images)

    def _head(self, *inputs):
        with torch.no_grad():
            return self.net.head(*inputs)


class OnnxExportError(InvalidInputError, OnnxSessionError):
    """ONNX Runtime cannot load an exported correspondence graph."""


class OnnxRuntimeBackend(CorrespondenceBackend):
    """The exported graphs in ONNX Runtime.

    Data path: inputs go to ONNX Runtime as numpy arrays and outputs come back as numpy arrays.
    On a CPU device that is free (``Tensor.numpy()`` and ``torch.from_numpy`` share memory). On a
    CUDA device every call copies the inputs to the host and the outputs back (and ONNX Runtime's
    CUDA provider copies them to and from the GPU again), so there the TensorRT backend is preferred.
    """

    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, device: str | torch.device = "cpu", intra_op_threads: int | None = None) -> None:
        """Args:
            onnx_dir: folder written by :func:`pose_node.correspondence.export.export_onnx`.
            device: CUDA devices use the CUDA execution provider when ONNX Runtime has it (else
                the CPU one, with a warning).
            intra_op_threads: ONNX Runtime CPU threads per call; None: ``torch.get_num_threads()``,
                so both CPU backends use the same share of a machine (1 on the shared dev machine).
        Raises:
            StageUnavailableError: onnxruntime is not installed or the export is missing.
            InvalidInputError: the export is corrupt (hash mismatch) or not loadable.
        """
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise StageUnavailableError("onnxruntime is not installed (pip install -r requirements.txt)") from err
        self.onnx_dir = Path(onnx_dir)
        self.sidecar, self.config = read_export(self.onnx_dir)
        self.device = _canonical_device(device)
        available = ort.get_available_providers()
        if self.device.type == "cuda" and "CUDAExecutionProvider" in available:
            providers: list = [("CUDAExecutionProvider", {"device_id": self.device.index or 0}), "CPUExecutionProvider"]
        else:
            if self.device.type == "cuda":
                logger.warning("onnxruntime has no CUDAExecutionProvider (has %s): running on the CPU, copying to %s", available, self.device)
            providers = ["CPUExecutionProvider"]
        threads = intra_op_threads if intra_op_threads is not None else torch.get_num_threads()
        self.sessions = {}
        for key, file_name, in_names, out_names in (("encoder", ENCODER_FILE, ENCODER_INPUTS, ENCODER_OUTPUTS),
                                                    ("head", HEAD_FILE, HEAD_INPUTS, HEAD_OUTPUTS)):
            path = self.onnx_dir / file_name
            session = open_onnx_session(path, providers, intra_op_threads=threads, error=OnnxExportError)
            got = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
            if got != (list(in_names), list(out_names)):
                raise InvalidInputError(f"{path}: inputs/outputs {got}, expected {(list(in_names), list(out_names))}")
            self.sessions[key] = session
        self.providers = self.sessions["encoder"].get_providers()

    def _run(self, key: str, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # The one host hop of this backend (class docstring).
        feeds = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, inputs)}
        return [torch.from_numpy(a).to(self.device) for a in self.sessions[key].run(None, feeds)]

    def _encode(self, images):
        return tuple(self._run("encoder", ENCODER_INPUTS, (images,)))

    def _head(self, *inputs):
        return tuple(self._run("head", HEAD_INPUTS, inputs))


class TensorRTBackend(CorrespondenceBackend):
    """Engines built from the exported graphs (CUDA only); batches above the engines' profile
    maximum (:class:`EngineConfig`) are split into several calls."""

    name = "tensorrt"

    def __init__(self, onnx_dir: str | Path, device: str | torch.device = "cuda", precision: str = "fp32",
                 engine_cache_dir: str | Path | None = None, engine_config: EngineConfig | None = None) -> None:
        """Args:
            onnx_dir: folder written by :func:`pose_node.correspondence.export.export_onnx`.
            device: a CUDA device.
            precision: ``"fp32"`` or ``"fp16"``.
            engine_cache_dir: engines and the timing cache; None: ``<cache_root()>/tensorrt``.
            engine_config: build profile; None: :class:`EngineConfig` defaults.
        Raises:
            StageUnavailableError: no TensorRT or no CUDA device; :class:`EngineBuildError` when
                an engine cannot be built.
        """
        from pose_node.correspondence.tensorrt_engine import load_engine_runner

        if precision not in PRECISIONS:
            raise InvalidInputError(f"precision: one of {PRECISIONS}, got {precision!r}")
        self.onnx_dir = Path(onnx_dir)
        self.sidecar, self.config = read_export(self.onnx_dir)
        self.device = _canonical_device(device)
        self.precision = precision
        self.engine_config = engine_config or EngineConfig()
        self.engine_cache_dir = Path(engine_cache_dir) if engine_cache_dir is not None else cache_root() / "tensorrt"
        runners, reused = {}, []
        for key, file_name in (("encoder", ENCODER_FILE), ("head", HEAD_FILE)):
            try:
                runners[key], was_reused = load_engine_runner(
                    self.onnx_dir / file_name, self.sidecar["files"][key]["sha256"], key, self.config, self.engine_config,
                    precision, self.device, self.engine_cache_dir)
            except RuntimeError as err:  # TensorRT's own failures (CUDA errors, allocation)
                raise EngineBuildError(f"TensorRT engine for {file_name}: {err}") from err
            reused.append(was_reused)
        self.encoder_runner, self.head_runner = runners["encoder"], runners["head"]
        #: True when both engines came from the cache (nothing was built).
        self.reused_engines = all(reused)

    def _encode(self, images):
        step = self.engine_config.encoder_batch[2]
        parts = [self.encoder_runner.run({"images": images[i:i + step]}) for i in range(0, images.shape[0], step)]
        return tuple(torch.cat([p[n] for p in parts]) for n in ENCODER_OUTPUTS)

    def _head(self, *inputs):
        B, H = inputs[3].shape[:2]
        b_step, h_step = self.engine_config.head_batch[2], self.engine_config.head_hypotheses[2]
        rows = []
        for b in range(0, B, b_step):
            per_crop = [x[b:b + b_step] for x in inputs[:3]]
            chunks = []
            for h in range(0, H, h_step):
                per_hyp = [x[b:b + b_step, h:h + h_step] for x in inputs[3:]]
                chunks.append(self.head_runner.run(dict(zip(HEAD_INPUTS, per_crop + per_hyp))))
            # mask_logit only depends on the crop: every H chunk computes the same one
            rows.append((torch.cat([c["xyz_norm"] for c in chunks], dim=1), torch.cat([c["weights"] for c in chunks], dim=1),
                         chunks[0]["mask_logit"], torch.cat([c["match_score"] for c in chunks], dim=1)))
        return tuple(torch.cat(parts) for parts in zip(*rows))


@dataclass
class _Sources:
    """What create_backend builds from, loaded lazily and at most once."""

    checkpoint: Path | None
    onnx_dir: Path | None
    onnx_cache_dir: Path
    _net: CorrespondenceNet | None = None
    _sha: str | None = None
    notes: list[str] = field(default_factory=list)

    def net(self) -> CorrespondenceNet:
        """The checkpoint's network on the CPU."""
        if self._net is None:
            if self.checkpoint is None:
                raise StageUnavailableError("no checkpoint given")
            self._net = load_checkpoint(self.checkpoint, "cpu")
        return self._net

    def weights_sha256(self) -> str:
        if self._sha is None:
            self._sha = state_dict_sha256(self.net().state_dict())
        return self._sha

    def resolve_onnx_dir(self) -> Path:
        """The given export (checked against the checkpoint), else a matching one next to the
        checkpoint (``<dir>/onnx``, where ``pose_export`` writes by default) or in the cache,
        else a fresh export into the cache."""
        have_checkpoint = self.checkpoint is not None and self.checkpoint.is_file()
        if self.onnx_dir is not None:
            sidecar, _ = read_export(self.onnx_dir)
            if have_checkpoint and sidecar.get("state_dict_sha256") != self.weights_sha256():
                raise StageUnavailableError(f"{self.onnx_dir} was exported from other weights than {self.checkpoint}; "
                                            f"export again with pose_export")
            return self.onnx_dir
        if not have_checkpoint:
            raise StageUnavailableError(f"no onnx_dir given and checkpoint {self.checkpoint} not found")
        sha = self.weights_sha256()
        exported = self.onnx_cache_dir / sha[:16]
        for candidate in (self.checkpoint.parent / "onnx", exported):
            try:
                sidecar, _ = read_export(candidate)
            except (StageUnavailableError, InvalidInputError) as err:
                logger.debug("ONNX export %s not usable: %s", candidate, err)
                continue
            if sidecar.get("state_dict_sha256") == sha and int(sidecar.get("opset", 0)) >= MIN_OPSET:
                return candidate
            logger.debug("ONNX export %s is of other weights than %s", candidate, self.checkpoint)
        try:
            export_onnx(self.net(), exported)
        except (OnnxExportError, OSError) as err:
            raise StageUnavailableError(f"cannot export {self.checkpoint} to ONNX in {exported}: {err}") from err
        self.notes.append(f"exported {self.checkpoint.name} to {exported}")
        return exported


def _make_tensorrt(src: _Sources, device: torch.device, precision: str, engine_cache_dir, engine_config, explicit: bool, **_):
    if device.type != "cuda":
        raise StageUnavailableError(f"TensorRT needs a CUDA device, got {device}")
    from pose_node.correspondence.tensorrt_engine import tensorrt_version

    if tensorrt_version() is None:
        raise StageUnavailableError("the tensorrt package is not importable (pip install 'pose_node[tensorrt]', or JetPack / an NGC image)")
    return TensorRTBackend(src.resolve_onnx_dir(), device, precision, engine_cache_dir, engine_config)


def _make_onnxruntime(src: _Sources, device: torch.device, intra_op_threads, explicit: bool, **_):
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise StageUnavailableError("onnxruntime is not installed") from err
    if device.type == "cuda" and not explicit and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise StageUnavailableError("onnxruntime has no CUDAExecutionProvider (PyTorch on the GPU beats ONNX Runtime on the CPU)")
    return OnnxRuntimeBackend(src.resolve_onnx_dir(), device, intra_op_threads)


def _make_torch(src: _Sources, device: torch.device, **_):
    if src.checkpoint is None or not src.checkpoint.is_file():
        raise StageUnavailableError(f"checkpoint {src.checkpoint} not found (PyTorch needs the weights file)")
    return TorchBackend(src.net(), device)


_MAKERS: dict[str, Callable[..., CorrespondenceBackend]] = {
    "tensorrt": _make_tensorrt, "onnxruntime": _make_onnxruntime, "torch": _make_torch,
}


def create_backend(
    kind: str = "auto", checkpoint: str | Path | None = None, onnx_dir: str | Path | None = None, device: str | torch.device = "cpu",
    precision: str = "fp32", engine_cache_dir: str | Path | None = None, *, intra_op_threads: int | None = None,
    onnx_cache_dir: str | Path | None = None, engine_config: EngineConfig | None = None,
) -> CorrespondenceBackend:
    """The correspondence network on the requested (or the fastest available) runtime.

    Args:
        kind: ``"auto"`` (TensorRT if ``device`` is CUDA and tensorrt imports, else ONNX Runtime
            (with its CUDA provider on a CUDA device; skipped there without it), else PyTorch),
            or one of :data:`BACKEND_KINDS`.
        checkpoint: ``pose_train`` weights; None: the shipped ``models/correspondence_effl0.pt``.
        onnx_dir: an export of ``checkpoint`` (checked by the state dict's sha256); None: one next to
            the checkpoint (``<dir>/onnx``) or in ``onnx_cache_dir``, exported there when missing.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: TensorRT's, ``"fp32"`` or ``"fp16"`` (the other backends run fp32).
        engine_cache_dir: TensorRT engines; None: ``<cache_root()>/tensorrt``.
        intra_op_threads: ONNX Runtime CPU threads (None: ``torch.get_num_threads()``).
        onnx_cache_dir: where exports are made; None: ``<cache_root()>/correspondence_onnx``.
        engine_config: TensorRT shape profiles; None: :class:`EngineConfig` defaults.
    Raises:
        InvalidInputError: unknown ``kind``/``precision``/``device``, or a corrupt checkpoint or export.
        StageUnavailableError: the requested backend (or, for ``"auto"``, every one) is unavailable;
            the message gives the reasons.
    """
    if kind != "auto" and kind not in BACKEND_KINDS:
        raise InvalidInputError(f"kind: 'auto' or one of {BACKEND_KINDS}, got {kind!r}")
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision: one of {PRECISIONS}, got {precision!r}")
    try:
        device = _canonical_device(device)
    except RuntimeError as err:
        raise InvalidInputError(f"device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageUnavailableError(f"device {device}: torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device: 'cpu' or 'cuda[:N]', got {device}")
    src = _Sources(
        checkpoint=Path(checkpoint) if checkpoint is not None else default_checkpoint(),
        onnx_dir=Path(onnx_dir) if onnx_dir is not None else None,
        onnx_cache_dir=Path(onnx_cache_dir) if onnx_cache_dir is not None else cache_root() / "correspondence_onnx",
    )
    explicit = kind != "auto"
    skipped: list[str] = []
    for name in (kind,) if explicit else BACKEND_KINDS:
        try:
            backend = _MAKERS[name](src, device=device, precision=precision, engine_cache_dir=engine_cache_dir,
                                    engine_config=engine_config, intra_op_threads=intra_op_threads, explicit=explicit)
        except (StageUnavailableError, InvalidInputError) as err:
            if explicit:
                if isinstance(err, StageUnavailableError):
                    raise StageUnavailableError(f"correspondence backend {name!r} unavailable: {err}") from err
                raise
            skipped.append(f"{name}: {err}")
            continue
        why = f"; skipped {'; '.join(skipped)}" if skipped else ""
        notes = f" ({'; '.join(src.notes)})" if src.notes else ""
        logger.info("correspondence backend: %s on %s%s%s", backend.name, device, notes, why)
        return backend
    raise StageUnavailableError(f"no correspondence backend available on {device}: {'; '.join(skipped)}")
