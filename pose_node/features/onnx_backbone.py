"""Any ONNX feature model behind the :class:`~pose_node.features.backbones.Backbone` interface.

The contract a model file must follow (checked when it is loaded):

- One input named ``images``: (B, 3, H, W) float32, RGB, already normalized as
  ``(x - input_mean) / input_std`` for x in [0, 1]; this wrapper applies that normalization with
  ``BackboneConfig.input_mean`` / ``input_std``, which are therefore required. B, H and W may be
  dynamic or fixed; a model with a fixed batch size of 1 is run once per image.
- An output named ``descriptor``: (B, D) float32 with a fixed D, the global descriptor before L2
  normalization (the wrapper normalizes it).
- One or more outputs named ``features_stride{N}`` (e.g. ``features_stride8``): (B, C_N, H_N, W_N)
  float32 with a fixed C_N and H_N = ceil(H / N) or floor(H / N) (same for W), cell (i, j)
  covering pixels ``[N j, N j + N) x [N i, N i + N)``.
- Other outputs are ignored.

onnxruntime works on host memory, so this wrapper copies images to the CPU and the outputs to
``BackboneConfig.device``; that copy is the only device hop and happens in :meth:`OnnxBackbone._extract`.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.onnx_session import open_onnx_session
from pose_node.features.backbones import (
    Backbone,
    BackboneConfig,
    BackboneWeightsError,
    resolve_weights_file,
    stride_key,
)

INPUT_NAME = "images"
DESCRIPTOR_NAME = "descriptor"
_FEATURE_NAME = re.compile(r"^features_stride([1-9][0-9]*)$")


class OnnxBackbone(Backbone):
    """Runs an ONNX model that follows the module's contract with onnxruntime."""

    def __init__(self, config: BackboneConfig) -> None:
        import onnxruntime as ort

        device = config.torch_device()
        if config.dtype != "float32":
            raise InvalidInputError(f"BackboneConfig.dtype: the onnx backbone runs float32 only, got {config.dtype!r}")
        normalization = config.normalization(None)
        missing = [p for p in config.onnx_providers if p not in ort.get_available_providers()]
        if missing or not config.onnx_providers:
            raise InvalidInputError(
                f"BackboneConfig.onnx_providers: {missing or 'empty'} not available; have {ort.get_available_providers()}"
            )
        weights_file = resolve_weights_file(config)
        session = open_onnx_session(weights_file, config.onnx_providers, error=BackboneWeightsError,
                                    message=f"BackboneConfig.weights_path: cannot load ONNX model {weights_file}")

        def contract_error(detail: str) -> BackboneWeightsError:
            return BackboneWeightsError(
                f"BackboneConfig.weights_path: {weights_file} breaks the ONNX feature contract "
                f"(see pose_node.features.onnx_backbone): {detail}"
            )

        inputs = session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 4:
            raise contract_error(f"expected one rank-4 input {INPUT_NAME!r}, got {[(i.name, i.shape) for i in inputs]}")
        if inputs[0].type != "tensor(float)":
            raise contract_error(f"input {INPUT_NAME!r} must be float32, got {inputs[0].type}")
        outputs = {o.name: o for o in session.get_outputs()}
        descriptor = outputs.get(DESCRIPTOR_NAME)
        if descriptor is None or len(descriptor.shape) != 2 or not isinstance(descriptor.shape[1], int):
            raise contract_error(f"expected output {DESCRIPTOR_NAME!r} of shape (B, D) with a fixed D, got "
                                 f"{None if descriptor is None else descriptor.shape}")
        channels: dict[int, int] = {}
        for name, out in outputs.items():
            match = _FEATURE_NAME.match(name)
            if match is None:
                continue
            if len(out.shape) != 4 or not isinstance(out.shape[1], int):
                raise contract_error(f"output {name!r} must be (B, C, H_N, W_N) with a fixed C, got {out.shape}")
            channels[int(match.group(1))] = out.shape[1]
        if not channels:
            raise contract_error(f"no output named features_stride<N>; outputs are {sorted(outputs)}")
        super().__init__(
            name=config.name,
            descriptor_dim=descriptor.shape[1],
            channels_per_stride=channels,
            input_normalization=normalization,
            weights_file=weights_file,
            cache_options={"onnx": True},
        )
        self.session = session
        self._input_shape = inputs[0].shape  # ints where fixed, names or None where dynamic
        self._output_names = [DESCRIPTOR_NAME] + [f"features_stride{s}" for s in self.strides]
        self.to(device=device)
        self.eval()

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if self._input_shape[0] == 1 and x.shape[0] > 1:
            per_image = [self.session.run(self._output_names, {INPUT_NAME: x[i : i + 1]}) for i in range(x.shape[0])]
            return [np.concatenate(parts) for parts in zip(*per_image)]
        return self.session.run(self._output_names, {INPUT_NAME: x})

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        B, _, H, W = x.shape
        for axis, size in zip((2, 3), (H, W)):
            fixed = self._input_shape[axis]
            if isinstance(fixed, int) and fixed != size:
                raise InvalidInputError(
                    f"images: the ONNX model {self.weights_file.name} takes H x W = "
                    f"{self._input_shape[2]} x {self._input_shape[3]}, got {H} x {W}"
                )
        outputs = self._run(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
        descriptor = torch.from_numpy(outputs[0]).to(self.device)
        if descriptor.shape != (B, self.descriptor_dim):
            raise BackboneWeightsError(f"ONNX model {self.weights_file}: output {DESCRIPTOR_NAME!r} should be "
                                       f"({B}, {self.descriptor_dim}), got {tuple(descriptor.shape)}")
        maps = {}
        for stride, array in zip(self.strides, outputs[1:]):
            ok_h = array.shape[2] in (H // stride, math.ceil(H / stride))
            ok_w = array.shape[3] in (W // stride, math.ceil(W / stride))
            if array.shape[:2] != (B, self.channels_per_stride[stride]) or not (ok_h and ok_w):
                raise BackboneWeightsError(
                    f"ONNX model {self.weights_file}: output features_stride{stride} should be ({B}, "
                    f"{self.channels_per_stride[stride]}, H/{stride}, W/{stride}) for a {H} x {W} input, got {array.shape}"
                )
            maps[stride_key(stride)] = torch.from_numpy(array).to(self.device)
        return descriptor, maps
