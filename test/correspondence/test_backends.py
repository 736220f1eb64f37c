"""Correspondence backends: parity with PyTorch, selection, errors, and the TensorRT engine cache
(the cache logic with a fake builder; the real engine only where TensorRT and a GPU exist)."""
import dataclasses
import importlib.util
import json
import logging
import re
import sys

import numpy as np
import pytest
import torch

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.correspondence import backends, export, tensorrt_engine
from pose_node.correspondence.backends import (
    OnnxRuntimeBackend,
    TorchBackend,
    create_backend,
    parity_tolerance,
)
from pose_node.correspondence.network import CorrespondenceNet, CorrespondenceNetConfig, HeadOutput
from pose_node.correspondence.tensorrt_engine import EngineCacheKey, EngineConfig, InputProfile, input_profiles

CONFIG = CorrespondenceNetConfig()
S, G, N = CONFIG.crop_size_px, CONFIG.grid_size, CONFIG.grid_size ** 2
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="needs onnx and onnxruntime (requirements.txt)")
HAS_TRT_GPU = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def save_checkpoint(net, path):
    torch.save({"state_dict": net.state_dict(), "net_config": dataclasses.asdict(net.config), "step": 0, "log": {}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = CorrespondenceNet(CONFIG, pretrained_trunk=False)
    return save_checkpoint(net, tmp_path_factory.mktemp("ckpt") / "correspondence.pt")


@pytest.fixture(scope="module")
def onnx_dir(checkpoint, tmp_path_factory):
    if not HAS_ORT:
        pytest.skip("needs onnx and onnxruntime")
    out = tmp_path_factory.mktemp("onnx")
    export.export_onnx(export.load_checkpoint(checkpoint), out)
    return out


@pytest.fixture(scope="module")
def torch_backend(checkpoint):
    return TorchBackend(export.load_checkpoint(checkpoint), "cpu")


@pytest.fixture(scope="module")
def ort_backend(onnx_dir):
    return OnnxRuntimeBackend(onnx_dir, "cpu", intra_op_threads=1)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """create_backend's default caches go to the test's folder, never to ~/.cache."""
    monkeypatch.setenv(backends.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def assert_parity(reference: HeadOutput | tuple, other: HeadOutput | tuple, precision: str = "fp32") -> None:
    atol, rtol = parity_tolerance(precision)
    if isinstance(reference, HeadOutput):
        reference, other = dataclasses.astuple(reference), dataclasses.astuple(other)
    for a, b in zip(reference, other):
        assert b.device == a.device and b.dtype == a.dtype
        torch.testing.assert_close(b, a, atol=atol, rtol=rtol)


# --- ONNX Runtime vs PyTorch ------------------------------------------------------------------


@needs_ort
@pytest.mark.parametrize("B,H", [(2, 3), (1, 1)])
def test_onnxruntime_matches_torch(torch_backend, ort_backend, B, H):
    inputs = export.example_inputs(CONFIG, B, H, seed=10 * B + H)
    (images,), head_inputs = inputs["encoder"], inputs["head"]
    desc, feat = ort_backend.encode(images)
    assert desc.shape == (B, CONFIG.descriptor_dim, G, G) and feat.shape == (B, CONFIG.feature_dim, G, G)
    assert_parity(torch_backend.encode(images), (desc, feat))
    out = ort_backend.head(*head_inputs)
    assert out.xyz_norm.shape == (B, H, N, 3) and out.weights.shape == (B, H, N, 2)
    assert out.mask_logit.shape == (B, N) and out.match_score.shape == (B, H)
    assert_parity(torch_backend.head(*head_inputs), out)


@needs_ort
def test_backends_validate_inputs_and_handle_empty_batches(ort_backend, torch_backend):
    for backend in (ort_backend, torch_backend):
        with pytest.raises(InvalidInputError, match=r"images: expected shape \(\*, 3, 128, 128\), got \(2, 3, 64, 64\)"):
            backend.encode(torch.rand(2, 3, 64, 64))
        with pytest.raises(InvalidInputError, match="images: expected a torch.Tensor, got ndarray"):
            backend.encode(np.zeros((1, 3, S, S), np.float32))
        with pytest.raises(InvalidInputError, match="float32"):
            backend.encode(torch.rand(1, 3, S, S, dtype=torch.float64))
        desc, feat = backend.encode(torch.rand(0, 3, S, S))
        assert desc.shape == (0, CONFIG.descriptor_dim, G, G) and feat.shape == (0, CONFIG.feature_dim, G, G)
        head_inputs = list(export.example_inputs(CONFIG, 2, 3)["head"])
        bad = head_inputs.copy()
        bad[4] = bad[4][:, :2]
        with pytest.raises(InvalidInputError, match=r"template_xyz_norm: expected shape \(2, 3, 3, 16, 16\), got \(2, 2, 3, 16, 16\)"):
            backend.head(*bad)
        with pytest.raises(InvalidInputError, match="H >= 1"):
            backend.head(*head_inputs[:3], *(x[:, :0] for x in head_inputs[3:]))
        empty = backend.head(*(x[:0] for x in head_inputs))
        assert empty.xyz_norm.shape == (0, 3, N, 3) and empty.mask_logit.shape == (0, N) and empty.match_score.shape == (0, 3)


# --- create_backend ---------------------------------------------------------------------------


@needs_ort
def test_auto_on_cpu_picks_onnxruntime_exporting_into_the_cache(checkpoint, isolated_cache, caplog):
    caplog.set_level(logging.INFO, logger="pose_node.correspondence")
    backend = create_backend("auto", checkpoint=checkpoint, device="cpu", intra_op_threads=1)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.name == "onnxruntime"
    assert backend.device == torch.device("cpu") and backend.config == CONFIG
    assert backend.onnx_dir.parent == isolated_cache / "correspondence_onnx"
    assert "correspondence backend: onnxruntime on cpu" in caplog.text and "skipped tensorrt: TensorRT needs a CUDA device" in caplog.text
    assert "exported correspondence.pt" in caplog.text
    caplog.clear()
    again = create_backend("auto", checkpoint=checkpoint, device="cpu", intra_op_threads=1)
    assert again.onnx_dir == backend.onnx_dir and "exported" not in caplog.text  # the cached export is reused


@needs_ort
def test_an_export_next_to_the_checkpoint_is_used_when_it_matches(checkpoint, onnx_dir, tmp_path, isolated_cache):
    local = tmp_path / "models"
    (local / "onnx").mkdir(parents=True)
    (local / "correspondence.pt").write_bytes(checkpoint.read_bytes())
    for name in (export.ENCODER_FILE, export.HEAD_FILE, export.SIDECAR_FILE):
        (local / "onnx" / name).write_bytes((onnx_dir / name).read_bytes())
    backend = create_backend("onnxruntime", checkpoint=local / "correspondence.pt", intra_op_threads=1)
    assert backend.onnx_dir == local / "onnx" and not isolated_cache.exists()


def test_torch_when_told_and_when_onnxruntime_is_missing(checkpoint, isolated_cache, monkeypatch, caplog):
    backend = create_backend("torch", checkpoint=checkpoint)
    assert isinstance(backend, TorchBackend) and backend.name == "torch" and not backend.net.training
    desc, _ = backend.encode(torch.rand(1, 3, S, S))
    assert desc.device == torch.device("cpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    caplog.set_level(logging.INFO, logger="pose_node.correspondence")
    assert isinstance(create_backend("auto", checkpoint=checkpoint), TorchBackend)
    assert "skipped tensorrt: TensorRT needs a CUDA device" in caplog.text and "onnxruntime: onnxruntime is not installed" in caplog.text
    with pytest.raises(StageUnavailableError, match="'onnxruntime' unavailable: onnxruntime is not installed"):
        create_backend("onnxruntime", checkpoint=checkpoint)


def test_unavailable_explicit_kinds_raise_with_the_reason(checkpoint, tmp_path, isolated_cache):
    with pytest.raises(StageUnavailableError, match="'tensorrt' unavailable: TensorRT needs a CUDA device, got cpu"):
        create_backend("tensorrt", checkpoint=checkpoint, device="cpu")
    with pytest.raises(StageUnavailableError, match=r"'torch' unavailable: checkpoint .*none.pt not found"):
        create_backend("torch", checkpoint=tmp_path / "none.pt")
    with pytest.raises(StageUnavailableError, match=r"no correspondence backend available on cpu: tensorrt: .*; onnxruntime: .*; torch: "):
        create_backend("auto", checkpoint=tmp_path / "none.pt")
    with pytest.raises(InvalidInputError, match="kind"):
        create_backend("tflite", checkpoint=checkpoint)
    with pytest.raises(InvalidInputError, match="precision"):
        create_backend("torch", checkpoint=checkpoint, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(StageUnavailableError, match="cuda"):
            create_backend("torch", checkpoint=checkpoint, device="cuda")


@needs_ort
def test_an_export_of_other_weights_is_refused(checkpoint, onnx_dir, tmp_path, isolated_cache):
    torch.manual_seed(1)
    other = save_checkpoint(CorrespondenceNet(CONFIG, pretrained_trunk=False), tmp_path / "other.pt")
    with pytest.raises(StageUnavailableError, match="exported from other weights"):
        create_backend("onnxruntime", checkpoint=other, onnx_dir=onnx_dir)
    # without a checkpoint the export stands on its own (its sidecar has the config)
    assert create_backend("onnxruntime", checkpoint=tmp_path / "absent.pt", onnx_dir=onnx_dir, intra_op_threads=1).config == CONFIG


# --- TensorRT engine cache key ----------------------------------------------------------------


def base_key(**changes) -> EngineCacheKey:
    fields = dict(gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), tensorrt_version="10.3.0", precision="fp32",
                  profile=input_profiles("head", CONFIG, EngineConfig()), onnx_sha256="ab" * 32)
    return EngineCacheKey(**{**fields, **changes})


CHANGED = {
    "gpu_name": "Orin", "compute_capability": (8, 7), "tensorrt_version": "10.4.0", "precision": "fp16",
    "profile": input_profiles("head", CONFIG, EngineConfig(head_batch=(1, 4, 16))), "onnx_sha256": "cd" * 32,
}


def test_every_key_field_is_covered():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(EngineCacheKey)}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_digest_changes_with_every_ingredient(field):
    assert base_key(**{field: CHANGED[field]}).digest() != base_key().digest()
    assert base_key().differences(base_key(**{field: CHANGED[field]})) == [field]


def test_digest_is_stable_and_survives_the_sidecar_round_trip():
    key = base_key()
    assert key.digest() == base_key().digest() and len(key.digest()) == 16
    assert EngineCacheKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    assert EngineCacheKey.from_json(key.to_json()).digest() == key.digest()


def test_profiles_follow_the_engine_config():
    (images,) = input_profiles("encoder", CONFIG, EngineConfig())
    assert images == InputProfile("images", (1, 3, S, S), (8, 3, S, S), (32, 3, S, S))
    head = {p.name: p for p in input_profiles("head", CONFIG, EngineConfig())}
    assert head["crop_features"] == InputProfile("crop_features", (1, 64, G, G), (4, 64, G, G), (32, 64, G, G))
    assert head["template_mask"] == InputProfile("template_mask", (1, 1, 1, G, G), (4, 3, 1, G, G), (32, 8, 1, G, G))
    with pytest.raises(InvalidInputError, match="head_hypotheses"):
        EngineConfig(head_hypotheses=(3, 1, 8))


# --- stale engines, with a fake builder (no TensorRT needed) ----------------------------------


class FakeTensorRT:
    """Stands in for the builder and the runtime: an "engine" is bytes naming its key."""

    def __init__(self) -> None:
        self.builds: list[str] = []

    def build(self, onnx_path, key, engine_config, timing_cache):
        self.builds.append(key.digest())
        timing_cache.write_bytes(b"timings")
        return f"engine:{key.digest()}".encode()

    def deserialize(self, data: bytes):
        return data.decode() if data.startswith(b"engine:") else None  # TensorRT returns None on bad bytes


@pytest.fixture
def fake_trt(monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(tensorrt_engine, "build_serialized_engine", fake.build)
    return fake


def load(fake, tmp_path, key):
    onnx_path = tmp_path / "correspondence_head.onnx"
    onnx_path.write_bytes(b"graph")
    return tensorrt_engine.load_or_build_engine(onnx_path, key, tmp_path / "engines", EngineConfig(), fake.deserialize)


def test_engine_is_built_once_then_reused(fake_trt, tmp_path):
    key = base_key()
    engine, path, reused = load(fake_trt, tmp_path, key)
    assert engine == f"engine:{key.digest()}" and not reused and path.name == f"correspondence_head_{key.digest()}.engine"
    assert EngineCacheKey.from_json(json.loads(path.with_suffix(".json").read_text())) == key
    assert tensorrt_engine.timing_cache_path(path.parent, key).read_bytes() == b"timings"
    assert load(fake_trt, tmp_path, key)[2] and fake_trt.builds == [key.digest()]


def stale_by_sidecar_key(path):
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(base_key(precision="fp16").to_json()))


@pytest.mark.parametrize("spoil,reason", [
    (stale_by_sidecar_key, "cache key mismatch in .*: precision differ"),
    (lambda path: path.write_bytes(b"truncated"), "does not deserialize"),
    (lambda path: path.with_suffix(".json").unlink(), "missing"),
    (lambda path: path.with_suffix(".json").write_text("{not json"), "unreadable"),
])
def test_stale_engines_are_rebuilt_with_a_logged_reason(fake_trt, tmp_path, caplog, spoil, reason):
    key = base_key()
    _, path, _ = load(fake_trt, tmp_path, key)
    spoil(path)
    caplog.set_level(logging.INFO, logger="pose_node.correspondence.tensorrt_engine")
    engine, _, reused = load(fake_trt, tmp_path, key)
    assert not reused and engine == f"engine:{key.digest()}" and len(fake_trt.builds) == 2
    assert any("building TensorRT engine" in r.message and re.search(reason, r.message) for r in caplog.records), caplog.text
    assert load(fake_trt, tmp_path, key)[2]  # repaired: reused from now on


def test_a_new_key_builds_a_new_engine_and_says_what_changed(fake_trt, tmp_path, caplog):
    load(fake_trt, tmp_path, base_key())
    caplog.set_level(logging.INFO, logger="pose_node.correspondence.tensorrt_engine")
    new = base_key(onnx_sha256="ef" * 32)
    _, path, reused = load(fake_trt, tmp_path, new)
    assert not reused and new.digest() in path.name and len(fake_trt.builds) == 2
    assert "cached ones are stale" in caplog.text and "differs in onnx_sha256" in caplog.text


# --- the real TensorRT engine -----------------------------------------------------------------


@pytest.mark.skipif(not HAS_TRT_GPU, reason="needs tensorrt and a CUDA GPU (not installable here; runs on a robot / JetPack / NGC image)")
def test_tensorrt_matches_torch_and_reuses_its_engines(checkpoint, onnx_dir, tmp_path):
    engines = tmp_path / "engines"
    backend = create_backend("tensorrt", checkpoint=checkpoint, onnx_dir=onnx_dir, device="cuda", engine_cache_dir=engines)
    assert backend.name == "tensorrt" and not backend.reused_engines
    reference = create_backend("torch", checkpoint=checkpoint, device="cuda")
    for B, H in ((2, 3), (1, 1), (35, 9)):  # the last one exceeds the profiles: split into several runs
        inputs = export.example_inputs(CONFIG, B, H, seed=B)
        images = inputs["encoder"][0].cuda()
        head_inputs = [x.cuda() for x in inputs["head"]]
        assert_parity(reference.encode(images), backend.encode(images))
        assert_parity(reference.head(*head_inputs), backend.head(*head_inputs))
    again = create_backend("auto", checkpoint=checkpoint, onnx_dir=onnx_dir, device="cuda", engine_cache_dir=engines)
    assert again.name == "tensorrt" and again.reused_engines
