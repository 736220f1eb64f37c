"""``pose_export``: the correspondence network as two ONNX graphs (encoder and head) plus a sidecar.

Examples::

    pose_export --checkpoint models/correspondence_effl0.pt --out-dir models/onnx
    pose_export --checkpoint models/correspondence_effl0.pt --out-dir /tmp/onnx --opset 18

Writes into ``--out-dir``:

- ``correspondence_encoder.onnx``: ``images`` (B, 3, S, S) float32 in [0, 1] ->
  ``descriptors`` (B, D, g, g), ``features`` (B, F, g, g) (:class:`CorrespondenceEncoder`).
- ``correspondence_head.onnx``: ``crop_descriptors`` (B, D, g, g), ``crop_features`` (B, F, g, g),
  ``detection_mask`` (B, 1, g, g), ``template_descriptors`` (B, H, D, g, g), ``template_xyz_norm``
  (B, H, 3, g, g), ``template_mask`` (B, H, 1, g, g) -> ``xyz_norm`` (B, H, N, 3), ``weights``
  (B, H, N, 2), ``mask_logit`` (B, N), ``match_score`` (B, H) (:class:`CorrespondenceHead`).
- ``correspondence_onnx.json``: the network config, opset, sha256 of each ONNX file and of the
  checkpoint's state dict (:func:`state_dict_sha256`), torch and onnx versions.

B (and H for the head) are dynamic; S, g, D, F are fixed by the checkpoint's config. The graphs are
traced with the TorchScript exporter (``dynamo=False``) at a fixed S, so EfficientNet's "SAME"
padding, which ``efficientnet_lite_pytorch`` computes from the input size at run time, becomes
constant ``Pad`` nodes; :func:`check_graph` verifies that and that no control flow (If/Loop/Scan)
is left, which is what TensorRT needs to build one engine for a range of batch sizes.

Reproducibility: the same weights, opset and torch/onnx versions give byte-identical files. The
exporter's output is deterministic for a given trace; the file is written with protobuf's
deterministic serialization and no timestamps, so the sha256 in the sidecar identifies the graph.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pose_node.core.errors import InvalidInputError, PoseNodeError, StageUnavailableError
from pose_node.correspondence.network import CorrespondenceNet, CorrespondenceNetConfig

logger = logging.getLogger(__name__)

ENCODER_FILE = "correspondence_encoder.onnx"
HEAD_FILE = "correspondence_head.onnx"
SIDECAR_FILE = "correspondence_onnx.json"
ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("descriptors", "features")
HEAD_INPUTS = ("crop_descriptors", "crop_features", "detection_mask", "template_descriptors", "template_xyz_norm", "template_mask")
HEAD_OUTPUTS = ("xyz_norm", "weights", "mask_logit", "match_score")
MIN_OPSET = 17
DEFAULT_OPSET = 17
#: Bumped when the file names, tensor names or sidecar fields change.
EXPORT_FORMAT_VERSION = 1
#: Ops that would make the graph data-dependent (TensorRT builds them poorly or not at all).
_CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique"})


class OnnxExportError(PoseNodeError):
    """The exported graph breaks a property the runtimes rely on (fixed pads, no control flow, ...)."""


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state dict's names, dtypes, shapes and values (independent of device,
    of the pickle format and of the rest of the checkpoint, e.g. the optimizer state)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        # uint8 view: the raw bytes of any dtype (numpy has no bfloat16)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> CorrespondenceNet:
    """Load a ``pose_train`` checkpoint into a :class:`CorrespondenceNet` in eval mode.

    Args:
        path: ``.pt`` file holding ``state_dict`` and ``net_config`` (see
            :mod:`pose_node.training.correspondence`).
        device: where the network's parameters go.
    Returns:
        The network on ``device``, eval mode.
    Raises:
        StageUnavailableError: the file does not exist.
        InvalidInputError: the file is unreadable, lacks ``state_dict``/``net_config``, or its
            weights do not fit its config (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise StageUnavailableError(f"correspondence checkpoint {path} not found (train one with pose_train)")
    checkpoint = _read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "net_config" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise InvalidInputError(f"correspondence checkpoint {path}: expected a dict with 'state_dict' and 'net_config', got {keys}")
    try:
        config = CorrespondenceNetConfig(**checkpoint["net_config"])
    except (TypeError, InvalidInputError) as err:
        raise InvalidInputError(f"correspondence checkpoint {path}: net_config {checkpoint['net_config']!r} "
                                f"does not fit CorrespondenceNetConfig: {err}") from err
    # The trunk's ImageNet weights are part of the state dict, so the packaged file is not read.
    net = CorrespondenceNet(config, pretrained_trunk=False)
    try:
        net.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise InvalidInputError(f"correspondence checkpoint {path}: weights do not match its net_config {config}: {err}") from err
    return net.to(device).eval()


def _read_checkpoint(path: Path) -> Any:
    # weights_only first (no code runs while unpickling); the project's own checkpoints only hold
    # tensors and plain containers. Older ones may hold other objects, and they are our own files.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        logger.debug("%s: not loadable with weights_only=True; loading it as a full pickle", path)
    except (EOFError, RuntimeError, OSError, zipfile.BadZipFile) as err:
        raise InvalidInputError(f"correspondence checkpoint {path} is unreadable (truncated or not a torch file): {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling can raise anything a pickled class raises
        raise InvalidInputError(f"correspondence checkpoint {path} is unreadable: {err}") from err


class _EncoderGraph(nn.Module):
    def __init__(self, net: CorrespondenceNet) -> None:
        super().__init__()
        self.encoder = net.encoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images)


class _HeadGraph(nn.Module):
    def __init__(self, net: CorrespondenceNet) -> None:
        super().__init__()
        self.head = net.head

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(*inputs)


class _ConstantPadConv2d(nn.Module):
    """A "SAME"-padded convolution with its pads computed once for a fixed input size."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv = conv
        self.pads = pads  # (left, right, top, bottom), python ints: traced as a constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if any(self.pads):
            x = nn.functional.pad(x, self.pads)
        return nn.functional.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


def _same_pads(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int, int, int]:
    # TensorFlow "SAME", as efficientnet_lite_pytorch.utils.Conv2dDynamicSamePadding computes it
    pads = []
    for size, k, s, d in zip((width, height), reversed(conv.weight.shape[-2:]), reversed(tuple(conv.stride)), reversed(tuple(conv.dilation))):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return (*pads[0], *pads[1])


def freeze_same_padding(module: nn.Module, example: torch.Tensor) -> int:
    """Replace every dynamic "SAME"-padding convolution of ``module`` (in place) by one with the
    pads it computes for ``example``'s size, so the traced graph pads by constants instead of
    by a Shape -> arithmetic -> Pad chain (which constant folding keeps when B is dynamic).

    Args:
        module: run once on ``example`` to record each convolution's input size.
        example: an input of the size the graph is exported for.
    Returns:
        How many convolutions were replaced.
    """
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.__setitem__(m, tuple(args[0].shape[-2:])))
             for m in module.modules() if isinstance(m, Conv2dDynamicSamePadding)]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    replaced = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if child in sizes:
                setattr(parent, child_name, _ConstantPadConv2d(child, _same_pads(child, *sizes[child])))
                replaced += 1
    return replaced


def example_inputs(config: CorrespondenceNetConfig, batch: int = 2, hypotheses: int = 3, seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """Random inputs of both graphs (CPU float32), from their own generator (the global RNG is left alone).

    Returns:
        ``{"encoder": (images (B, 3, S, S),), "head": (the six head inputs, module docstring)}``.
    """
    gen = torch.Generator().manual_seed(seed)
    B, H, S, g = batch, hypotheses, config.crop_size_px, config.grid_size
    D, Fd = config.descriptor_dim, config.feature_dim
    images = torch.rand(B, 3, S, S, generator=gen)
    desc = nn.functional.normalize(torch.randn(B, D, g, g, generator=gen), dim=1)
    feat = torch.randn(B, Fd, g, g, generator=gen)
    det = (torch.rand(B, 1, g, g, generator=gen) > 0.3).float()
    t_desc = nn.functional.normalize(torch.randn(B, H, D, g, g, generator=gen), dim=2)
    t_xyz = torch.randn(B, H, 3, g, g, generator=gen)
    t_mask = (torch.rand(B, H, 1, g, g, generator=gen) > 0.5).float()
    return {"encoder": (images,), "head": (desc, feat, det, t_desc, t_xyz, t_mask)}


def _export_graph(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: tuple[str, ...], output_names: tuple[str, ...],
                  dynamic_axes: dict[str, dict[int, str]], opset: int):
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is deprecated, and the tracer that sizes become
        # constants: intended, S and g are fixed.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, inputs, buffer, input_names=list(input_names), output_names=list(output_names),
            dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, export_params=True, dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = ""
    return model


def fold_constants(model):
    """Evaluate every node whose inputs are all constants and store its outputs as initializers.

    The TorchScript exporter's own folding only starts from initializers, so chains that begin at
    ``Constant``/``ConstantOfShape`` nodes (the pads of ``F.pad``, for one) survive it; TensorRT
    wants those as plain constants. Uses ONNX's reference evaluator, so it is exact and
    deterministic. Random ops and ops with subgraphs are never folded.

    Args:
        model: ``onnx.ModelProto``, modified in place.
    Returns:
        ``model``.
    """
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    constants: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    kept, produced = [], []
    for node in graph.node:
        foldable = (
            node.domain in ("", "ai.onnx") and "Random" not in node.op_type
            and not any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)
            and all(not name or name in constants for name in node.input)
        )
        if not foldable:
            kept.append(node)
            continue
        feeds = {name: constants[name] for name in node.input if name}
        values = ReferenceEvaluator(node, opsets={"": opsets.get("", DEFAULT_OPSET)}).run(None, feeds)
        for name, value in zip(node.output, values):
            constants[name] = value
            produced.append(name)
    needed = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    initializers = [i for i in graph.initializer if i.name in needed]
    initializers += [numpy_helper.from_array(constants[name], name) for name in produced if name in needed]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    # shapes of tensors that are now initializers or gone: stale once their nodes are removed
    live = {o for node in kept for o in node.output}
    value_info = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return model


def _declare_shapes(model, shapes: Mapping[str, tuple[int, ...]], dynamic: Mapping[str, Mapping[int, str]]) -> None:
    # The exporter's shape inference loses fixed channel counts behind some ops (it names them
    # e.g. "Divdescriptors_dim_1"); the real shapes are known from the traced run.
    for value in list(model.graph.input) + list(model.graph.output):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for axis, size in enumerate(shapes[value.name]):
            dim = shape.dim.add()
            if axis in dynamic.get(value.name, {}):
                dim.dim_param = dynamic[value.name][axis]
            else:
                dim.dim_value = size


def check_graph(model, name: str, dynamic: Mapping[str, Mapping[int, str]]) -> None:
    """Verify an exported graph: valid ONNX, the declared dims dynamic and the rest fixed, constant
    pads, no control flow.

    Raises:
        OnnxExportError: naming the graph and the offending node or input.
    """
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise OnnxExportError(f"{name}: onnx.checker rejects the exported graph: {err}") from err
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        if node.op_type in _CONTROL_FLOW_OPS:
            raise OnnxExportError(f"{name}: node {node.name} is {node.op_type} (data-dependent; TensorRT-unfriendly)")
        if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] not in constants:
            raise OnnxExportError(f"{name}: node {node.name} pads by a computed amount (expected constants at a fixed crop size)")
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        wanted = dynamic.get(value.name, {})
        for axis, dim in enumerate(dims):
            if axis in wanted and dim.dim_param != wanted[axis]:
                raise OnnxExportError(f"{name}: {value.name} axis {axis} should be dynamic {wanted[axis]!r}, got {dim}")
            if axis not in wanted and not dim.HasField("dim_value"):
                raise OnnxExportError(f"{name}: {value.name} axis {axis} should be fixed, got {dim}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def export_onnx(net: CorrespondenceNet, out_dir: str | Path, opset: int = DEFAULT_OPSET) -> dict[str, Path]:
    """Export the encoder and the head to ONNX, with the sidecar (module docstring).

    Args:
        net: the network (any device, any mode; it is not modified: a CPU copy in eval mode is
            traced).
        out_dir: created if missing; existing files of the same names are replaced.
        opset: ONNX opset, >= :data:`MIN_OPSET`.
    Returns:
        ``{"encoder": path, "head": path, "sidecar": path}``.
    Raises:
        InvalidInputError: ``opset`` < :data:`MIN_OPSET`.
        StageUnavailableError: the ``onnx`` package is not installed.
        OnnxExportError: a graph fails :func:`check_graph`.
    """
    if opset < MIN_OPSET:
        raise InvalidInputError(f"opset: >= {MIN_OPSET} (TensorRT 10 and LayerNormalization-era ops), got {opset}")
    try:
        import onnx
    except ImportError as err:
        raise StageUnavailableError("exporting ONNX needs the 'onnx' package (pip install -r requirements.txt)") from err
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = net.config
    # A copy: tracing on CPU in eval mode must not move or switch the caller's network.
    cpu_net = copy.deepcopy(net).to("cpu").float().eval()
    weights_sha256 = state_dict_sha256(cpu_net.state_dict())
    inputs = example_inputs(config)
    freeze_same_padding(cpu_net.encoder, inputs["encoder"][0])
    encoder_axes = {"images": {0: "B"}, "descriptors": {0: "B"}, "features": {0: "B"}}
    head_axes = {
        "crop_descriptors": {0: "B"}, "crop_features": {0: "B"}, "detection_mask": {0: "B"},
        "template_descriptors": {0: "B", 1: "H"}, "template_xyz_norm": {0: "B", 1: "H"}, "template_mask": {0: "B", 1: "H"},
        "xyz_norm": {0: "B", 1: "H"}, "weights": {0: "B", 1: "H"}, "mask_logit": {0: "B"}, "match_score": {0: "B", 1: "H"},
    }
    graphs = {
        "encoder": (ENCODER_FILE, _EncoderGraph(cpu_net), inputs["encoder"], ENCODER_INPUTS, ENCODER_OUTPUTS, encoder_axes),
        "head": (HEAD_FILE, _HeadGraph(cpu_net), inputs["head"], HEAD_INPUTS, HEAD_OUTPUTS, head_axes),
    }
    paths: dict[str, Path] = {}
    files: dict[str, dict] = {}
    for key, (file_name, module, example, in_names, out_names, axes) in graphs.items():
        model = fold_constants(_export_graph(module, example, in_names, out_names, axes, opset))
        with torch.no_grad():
            outputs = module(*example)
        shapes = {n: tuple(t.shape) for n, t in zip(in_names + out_names, example + tuple(outputs))}
        _declare_shapes(model, shapes, axes)
        check_graph(model, file_name, axes)
        data = model.SerializeToString(deterministic=True)
        path = out_dir / file_name
        _write_atomic(path, data)
        paths[key] = path
        files[key] = {"file": file_name, "sha256": hashlib.sha256(data).hexdigest(), "inputs": list(in_names), "outputs": list(out_names)}
    sidecar = {
        "format_version": EXPORT_FORMAT_VERSION,
        "net_config": dataclasses.asdict(config),
        "opset": opset,
        "files": files,
        "state_dict_sha256": weights_sha256,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }
    paths["sidecar"] = out_dir / SIDECAR_FILE
    _write_atomic(paths["sidecar"], (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    logger.info("exported %s and %s (opset %d) to %s", ENCODER_FILE, HEAD_FILE, opset, out_dir)
    return paths


def read_export(onnx_dir: str | Path, verify_hashes: bool = True) -> tuple[dict, CorrespondenceNetConfig]:
    """Read and check the sidecar of an export folder.

    Args:
        onnx_dir: folder written by :func:`export_onnx`.
        verify_hashes: also check each ONNX file's sha256 against the sidecar (reads the files).
    Returns:
        ``(sidecar dict, network config)``.
    Raises:
        StageUnavailableError: the folder, the sidecar or an ONNX file is missing.
        InvalidInputError: the sidecar is unreadable or of another format, or a file's hash differs
            (edited or half-written export).
    """
    onnx_dir = Path(onnx_dir)
    sidecar_path = onnx_dir / SIDECAR_FILE
    if not sidecar_path.is_file():
        raise StageUnavailableError(f"no ONNX export in {onnx_dir} ({SIDECAR_FILE} missing; run pose_export)")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        config = CorrespondenceNetConfig(**sidecar["net_config"])
        files = {k: sidecar["files"][k] for k in ("encoder", "head")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidInputError(f"{sidecar_path} is unreadable or incomplete: {err}") from err
    if sidecar.get("format_version") != EXPORT_FORMAT_VERSION:
        raise InvalidInputError(f"{sidecar_path}: export format {sidecar.get('format_version')}, this code reads "
                                f"{EXPORT_FORMAT_VERSION} (export again with pose_export)")
    for key, entry in files.items():
        path = onnx_dir / entry["file"]
        if not path.is_file():
            raise StageUnavailableError(f"{path} missing (listed in {sidecar_path})")
        if verify_hashes and file_sha256(path) != entry["sha256"]:
            raise InvalidInputError(f"{path}: sha256 differs from {sidecar_path} (modified or half-written; export again)")
    return sidecar, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="pose_train checkpoint (.pt)")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the ONNX files and the sidecar")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        net = load_checkpoint(args.checkpoint)
        paths = export_onnx(net, args.out_dir, args.opset)
    except PoseNodeError as err:
        logger.error("%s", err)
        return 1
    for key, path in paths.items():
        logger.info("%s: %s", key, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
