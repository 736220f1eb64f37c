"""The one ONNX Runtime session opener: it runs a model, and every loader's failure is one error type."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.onnx_session import OnnxSessionError, open_onnx_session
from pose_node.correspondence.backends import OnnxExportError
from pose_node.detection.proposals_rgb import OnnxProposalModelError
from pose_node.features.backbones import BackboneWeightsError


def _add_one_model(path):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_opens_and_runs_a_model(tmp_path):
    _add_one_model(tmp_path / "m.onnx")
    session = open_onnx_session(tmp_path / "m.onnx", ["CPUExecutionProvider"], intra_op_threads=1)
    (y,) = session.run(None, {"x": np.array([1.0, -2.0], np.float32)})
    np.testing.assert_array_equal(y, [2.0, -1.0])
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_unloadable_file_raises_the_requested_type_with_the_message(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OnnxSessionError, match="bad.onnx"):
        open_onnx_session(bad, ["CPUExecutionProvider"])
    with pytest.raises(OnnxProposalModelError, match=r"^model_path: cannot load x: "):
        open_onnx_session(bad, ["CPUExecutionProvider"], error=OnnxProposalModelError, message="model_path: cannot load x")


@pytest.mark.parametrize("loader_error, historical", [
    (OnnxExportError, InvalidInputError), (OnnxProposalModelError, StageUnavailableError),
    (BackboneWeightsError, StageUnavailableError),
])
def test_loader_errors_are_both_the_common_and_their_historical_type(loader_error, historical):
    assert issubclass(loader_error, OnnxSessionError) and issubclass(loader_error, historical)
