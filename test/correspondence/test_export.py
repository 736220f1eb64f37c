"""ONNX export of the correspondence network: valid, dynamic where it should be, TensorRT-friendly,
reproducible, and loading checkpoints fails loudly on bad files."""
import copy
import dataclasses
import json

import pytest
import torch

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.correspondence import export
from pose_node.correspondence.network import CorrespondenceNet, CorrespondenceNetConfig

onnx = pytest.importorskip("onnx")

CONFIG = CorrespondenceNetConfig()
S, G = CONFIG.crop_size_px, CONFIG.grid_size


def save_checkpoint(net, path, **extra):
    torch.save({"state_dict": net.state_dict(), "net_config": dataclasses.asdict(net.config), "step": 3, "log": {"steps": []}, **extra}, path)
    return path


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CorrespondenceNet(CONFIG, pretrained_trunk=False).eval()


@pytest.fixture(scope="module")
def checkpoint(net, tmp_path_factory):
    return save_checkpoint(net, tmp_path_factory.mktemp("ckpt") / "correspondence.pt")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """The export made by the CLI, as a user would."""
    out = tmp_path_factory.mktemp("onnx")
    assert export.main(["--checkpoint", str(checkpoint), "--out-dir", str(out)]) == 0
    return out


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graphs_pass_the_checker_with_opset_17_and_dynamic_batch(exported):
    encoder = onnx.load(exported / export.ENCODER_FILE)
    head = onnx.load(exported / export.HEAD_FILE)
    for model in (encoder, head):
        onnx.checker.check_model(model, full_check=True)
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    D, F = CONFIG.descriptor_dim, CONFIG.feature_dim
    assert {v.name: dims(v) for v in list(encoder.graph.input) + list(encoder.graph.output)} == {
        "images": ["B", 3, S, S], "descriptors": ["B", D, G, G], "features": ["B", F, G, G]}
    assert {v.name: dims(v) for v in list(head.graph.input) + list(head.graph.output)} == {
        "crop_descriptors": ["B", D, G, G], "crop_features": ["B", F, G, G], "detection_mask": ["B", 1, G, G],
        "template_descriptors": ["B", "H", D, G, G], "template_xyz_norm": ["B", "H", 3, G, G],
        "template_mask": ["B", "H", 1, G, G], "xyz_norm": ["B", "H", G * G, 3], "weights": ["B", "H", G * G, 2],
        "mask_logit": ["B", G * G], "match_score": ["B", "H"]}


def test_same_padding_is_constant_and_there_is_no_control_flow(exported):
    for name in (export.ENCODER_FILE, export.HEAD_FILE):
        model = onnx.load(exported / name)
        initializers = {i.name for i in model.graph.initializer}
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"If", "Loop", "Scan", "NonZero", "Constant"}  # constants are folded into initializers
        pads = [n for n in model.graph.node if n.op_type == "Pad"]
        assert all(n.input[1] in initializers for n in pads)
        if name == export.ENCODER_FILE:
            assert len(pads) >= 10  # EfficientNet's stride-2 and 5x5 convolutions pad asymmetrically


def test_frozen_padding_gives_the_same_encoder_outputs(net):
    images = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(1))
    frozen = copy.deepcopy(net.encoder)
    assert export.freeze_same_padding(frozen, images) > 0
    with torch.no_grad():
        for a, b in zip(net.encoder(images), frozen(images)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_sidecar_names_config_opset_hashes_and_versions(exported, net):
    sidecar = json.loads((exported / export.SIDECAR_FILE).read_text())
    assert sidecar["net_config"] == dataclasses.asdict(CONFIG)
    assert sidecar["opset"] == 17 and sidecar["torch_version"] == torch.__version__
    assert sidecar["state_dict_sha256"] == export.state_dict_sha256(net.state_dict())
    for key, name in (("encoder", export.ENCODER_FILE), ("head", export.HEAD_FILE)):
        assert sidecar["files"][key]["sha256"] == export.file_sha256(exported / name)
    read, config = export.read_export(exported)
    assert read == sidecar and config == CONFIG


def test_reexport_is_byte_identical(exported, checkpoint, tmp_path):
    paths = export.export_onnx(export.load_checkpoint(checkpoint), tmp_path)
    for name in (export.ENCODER_FILE, export.HEAD_FILE, export.SIDECAR_FILE):
        assert (tmp_path / name).read_bytes() == (exported / name).read_bytes(), name
    assert set(paths) == {"encoder", "head", "sidecar"}


def test_export_leaves_the_callers_network_alone(tmp_path):
    torch.manual_seed(1)
    net = CorrespondenceNet(CONFIG, pretrained_trunk=False).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    export.export_onnx(net, tmp_path)
    assert net.training and type(net.encoder.trunk.stem[0]).__name__ == "Conv2dDynamicSamePadding"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_modified_export_is_detected(exported, tmp_path):
    for name in (export.ENCODER_FILE, export.HEAD_FILE, export.SIDECAR_FILE):
        (tmp_path / name).write_bytes((exported / name).read_bytes())
    with open(tmp_path / export.HEAD_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(InvalidInputError, match="sha256 differs"):
        export.read_export(tmp_path)
    with pytest.raises(StageUnavailableError, match="no ONNX export"):
        export.read_export(tmp_path / "nothing")


def test_opset_below_17_is_refused(net, tmp_path):
    with pytest.raises(InvalidInputError, match="opset"):
        export.export_onnx(net, tmp_path, opset=16)


def test_load_checkpoint_gives_eval_network_and_named_errors(checkpoint, net, tmp_path):
    loaded = export.load_checkpoint(checkpoint)
    assert not loaded.training and loaded.config == CONFIG
    assert export.state_dict_sha256(loaded.state_dict()) == export.state_dict_sha256(net.state_dict())

    missing = tmp_path / "missing.pt"
    with pytest.raises(StageUnavailableError, match="missing.pt"):
        export.load_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInputError, match="garbage.pt"):
        export.load_checkpoint(garbage)
    no_config = tmp_path / "no_config.pt"
    torch.save({"state_dict": net.state_dict()}, no_config)
    with pytest.raises(InvalidInputError, match=r"no_config.pt.*net_config"):
        export.load_checkpoint(no_config)
    unknown_field = save_checkpoint(net, tmp_path / "unknown.pt")
    data = torch.load(unknown_field, weights_only=False)
    data["net_config"]["colour"] = "red"
    torch.save(data, unknown_field)
    with pytest.raises(InvalidInputError, match=r"unknown.pt.*CorrespondenceNetConfig"):
        export.load_checkpoint(unknown_field)
    mismatch = tmp_path / "mismatch.pt"
    torch.save({"state_dict": net.state_dict(), "net_config": {**dataclasses.asdict(CONFIG), "descriptor_dim": 32}}, mismatch)
    with pytest.raises(InvalidInputError, match=r"mismatch.pt.*do not match"):
        export.load_checkpoint(mismatch)


def test_cli_reports_a_missing_checkpoint(tmp_path, caplog):
    assert export.main(["--checkpoint", str(tmp_path / "none.pt"), "--out-dir", str(tmp_path / "out")]) == 1
    assert "none.pt" in caplog.text
