"""ONNX export (dynamic batch, metadata, CLI) and the onnxruntime backend's equivalence with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_model, synthetic_face, to_uint8
from facekp import Detector, WeightsError
from facekp.cli import main
from facekp.config import DetectorConfig
from facekp.model import HourglassConfig, fuse_conv_bn
from facekp.weights import save_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from facekp.onnx import (  # noqa: E402
    INPUT_NAME,
    cache_dir,
    cached_onnx_bytes,
    calibration_inputs,
    export_onnx,
    onnx_bytes,
    quantize_int8,
    read_onnx_config,
)
from facekp.runtime import OnnxRunner  # noqa: E402

TOLERANCE_PX = 1e-3  # the bound for "same outputs" between backends


@pytest.fixture(scope="module")
def two_stack_dir(tmp_path_factory):
    """Two stacks (exercises the merge convolutions), depth 2, 16 channels."""
    config = DetectorConfig(hourglass=HourglassConfig(num_stacks=2, depth=2, channels=16))
    folder = tmp_path_factory.mktemp("two_stack")
    save_model(build_model(config.hourglass, seed=3), config, folder)
    return folder


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    return export_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx", tiny_model_dir)


@pytest.fixture(scope="module")
def faces():
    sizes = [(96, 96), (80, 64), (64, 90), (150, 120), (40, 40), (200, 310)]
    return [to_uint8(synthetic_face(w, h, seed=i)) for i, (w, h) in enumerate(sizes)]


def test_export_has_dynamic_batch_and_runs_any_batch(exported, detector):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    (inp,), outputs = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 96, 96]
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in outputs}
    assert shapes == {"heatmaps": ["batch", 15, 24, 24], "points": ["batch", 15, 2], "confidence": ["batch", 15]}
    backend = OnnxRunner(exported)
    assert backend.providers == ["CPUExecutionProvider"]
    for n in (1, 3, 17):
        x = torch.randn(n, 1, 96, 96, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            want = detector.model.predict_heatmaps(x)  # the unfused original
        got = backend.heatmaps(x).numpy()
        assert got.shape == (n, 15, 24, 24) and got.dtype == np.float32
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
        # The decode traced into the graph gives what the torch codec gives on the same heatmaps.
        points, confidence = (t.numpy() for t in backend.keypoints(x))
        want_points, want_confidence = detector.codec.decode(torch.from_numpy(got))
        assert points.shape == (n, 15, 2) and points.dtype == np.float32
        np.testing.assert_allclose(points, want_points.numpy(), atol=TOLERANCE_PX, rtol=0)
        np.testing.assert_allclose(confidence, want_confidence.numpy(), atol=1e-6)


def test_graph_without_decoded_outputs_is_refused(exported, tmp_path):
    from facekp import FacekpError

    proto = onnx.load(str(exported))
    del proto.graph.output[1:]  # heatmaps only, as an export from an older facekp
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    with pytest.raises(FacekpError, match="export it again"):
        OnnxRunner(old)


def test_metadata_holds_the_config(exported, tiny_config):
    assert read_onnx_config(exported) == tiny_config
    assert onnx.load(str(exported)).producer_name == "facekp"


def test_export_does_not_touch_the_model(make_model):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    onnx_bytes(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_export_refuses_to_overwrite(exported, tiny_model_dir):
    with pytest.raises(FileExistsError):
        export_onnx(exported, tiny_model_dir)
    assert export_onnx(exported, tiny_model_dir, overwrite=True) == exported


@pytest.mark.parametrize("flip_test", [False, True])
def test_onnx_backend_matches_torch(tiny_model_dir, two_stack_dir, faces, flip_test):
    for folder in (tiny_model_dir, two_stack_dir):
        torch_det = Detector(folder, device="cpu", flip_test=flip_test)
        onnx_det = Detector(folder, device="cpu", backend="onnx", flip_test=flip_test)
        assert onnx_det.backend == "onnx" and "backend=onnx" in repr(onnx_det)
        p_t, c_t = torch_det.predict_batch(faces, batch_size=4, return_confidence=True)
        p_o, c_o = onnx_det.predict_batch(faces, batch_size=4, return_confidence=True)
        assert p_o.dtype == np.float32 and p_o.shape == (len(faces), 15, 2)
        np.testing.assert_allclose(p_o, p_t, atol=TOLERANCE_PX, rtol=0)
        np.testing.assert_allclose(c_o, c_t, atol=1e-5)
        np.testing.assert_allclose(onnx_det.predict(faces[1]), p_t[1], atol=TOLERANCE_PX, rtol=0)


def test_onnx_backend_options_are_checked(tiny_model_dir):
    with pytest.raises(ValueError, match="fp32"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", precision="bf16")
    with pytest.raises(ValueError, match="backend"):
        Detector(tiny_model_dir, device="cpu", backend="tensorrt")
    assert Detector(tiny_model_dir, device="cpu", backend="onnx", precision="auto").precision == "fp32"


def test_onnx_backend_missing_onnxruntime_says_how_to_install(tiny_model_dir, no_onnxruntime):
    with pytest.raises(ImportError, match="pip install onnxruntime"):  # a facekp dependency, named alone
        Detector(tiny_model_dir, device="cpu", backend="onnx")


def test_fused_export_equals_unfused_model(make_model):
    model = make_model(seed=5)
    backend = OnnxRunner(onnx_bytes(model))
    x = torch.randn(5, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model.predict_heatmaps(x).numpy()
        fused = fuse_conv_bn(build_model(seed=5)).predict_heatmaps(x).numpy()
    np.testing.assert_allclose(backend.heatmaps(x).numpy(), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fused, want, atol=1e-4, rtol=1e-4)


def test_cli_export_onnx(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cli" / "model.onnx"
    assert main(["export-onnx", str(out), "--weights", str(tiny_model_dir), "--check"]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "onnxruntime vs torch" in err
    assert read_onnx_config(out).hourglass.channels == 16
    assert main(["export-onnx", str(out), "--weights", str(tiny_model_dir)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export-onnx", str(out), "--weights", str(tiny_model_dir), "--force", "--opset", "18"]) == 0
    assert max(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")) == 18


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_onnx_backend_cuda_matches_cpu(tiny_model_dir, faces):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    cpu = Detector(tiny_model_dir, device="cpu", backend="onnx").predict_batch(faces)
    gpu = Detector(tiny_model_dir, device="cuda", backend="onnx").predict_batch(faces)
    np.testing.assert_allclose(gpu, cpu, atol=1e-2)


def test_the_suite_caches_exports_in_its_temporary_folder(tmp_path_factory, monkeypatch):
    """conftest's private_cache: no test writes into the user's ~/.cache (nor $XDG_CACHE_HOME)."""
    base = tmp_path_factory.getbasetemp()
    assert base in cache_dir().parents
    monkeypatch.delenv("FACEKP_CACHE")
    assert base in cache_dir().parents  # the XDG fallback is private too


def test_export_cache_is_reused_and_keyed_by_weights(make_model, tiny_config, monkeypatch, tmp_path):
    monkeypatch.setenv("FACEKP_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "onnx"
    model = make_model(seed=7)
    first = cached_onnx_bytes(model, tiny_config)
    (cached,) = cache_dir().glob("*.onnx")
    assert cached.read_bytes() == first
    before = cached.stat()
    # The second call reads the file: an export again would replace it (a new file, atomically).
    assert cached_onnx_bytes(model, tiny_config) == first
    assert list(cache_dir().iterdir()) == [cached]
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    second = cached_onnx_bytes(make_model(seed=8), tiny_config)  # other weights: another file
    assert second != first
    assert sorted(p.read_bytes() for p in cache_dir().glob("*.onnx")) == sorted([first, second])


def test_corrupt_cache_file_is_exported_again(tiny_model_dir, faces, monkeypatch, tmp_path):
    monkeypatch.setenv("FACEKP_CACHE", str(tmp_path / "cache"))
    want = Detector(tiny_model_dir, device="cpu", backend="onnx").predict_batch(faces)
    (cached,) = cache_dir().glob("*.onnx")
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 2])  # e.g. a process killed mid-write by an older facekp, a full disk
    np.testing.assert_array_equal(Detector(tiny_model_dir, device="cpu", backend="onnx").predict_batch(faces), want)
    (repaired,) = cache_dir().glob("*.onnx")
    assert repaired.read_bytes() == good
    assert not list(cache_dir().glob("*.tmp"))


def test_unwritable_cache_is_not_an_error(make_model, tiny_config, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FACEKP_CACHE", str(blocker))
    model = make_model()
    assert cached_onnx_bytes(model, tiny_config) == onnx_bytes(model, tiny_config)
    assert blocker.read_text() == "not a folder"


def test_auto_backend_picks_onnx_on_cpu(tiny_model_dir, face_u8):
    det = Detector(tiny_model_dir, device="cpu", backend="auto")
    assert det.backend == "onnx"
    assert Detector(tiny_model_dir, device="cpu", backend="auto", precision="bf16").backend == "torch"
    np.testing.assert_allclose(det.predict(face_u8), Detector(tiny_model_dir, device="cpu").predict(face_u8), atol=TOLERANCE_PX)


@pytest.fixture(scope="module")
def int8_file(tiny_model_dir, tmp_path_factory):
    calibration = [to_uint8(synthetic_face(96, 96, seed=i)) for i in range(24)]
    return export_onnx(tmp_path_factory.mktemp("int8") / "int8.onnx", tiny_model_dir, int8_calibration=calibration)


def test_int8_export_runs_as_a_detector(int8_file, tiny_model_dir, faces):
    proto = onnx.load(str(int8_file))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["facekp_precision"] == "int8" and "facekp_config" in meta
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    det = Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=int8_file)
    assert det.precision == "int8" and "precision=int8" in repr(det)
    fp32 = Detector(tiny_model_dir, device="cpu", backend="onnx")
    x = calibration_inputs([to_uint8(synthetic_face(96, 96, seed=100 + i)) for i in range(6)])  # in-distribution
    x = torch.from_numpy(x)
    want, got = fp32.runner.heatmaps(x).numpy(), det.runner.heatmaps(x).numpy()
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.98  # int8 is coarse, but the same function
    # Only the network is quantized: the decode in the graph is the fp32 codec, applied to int8 heatmaps.
    assert not any(n.op_type == "QuantizeLinear" and n.name.startswith("/decode/") for n in proto.graph.node)
    points, _ = det.runner.keypoints(x)
    np.testing.assert_allclose(points, det.codec.decode(torch.from_numpy(got))[0].numpy(), atol=TOLERANCE_PX, rtol=0)
    points = det.predict_batch(faces)
    assert points.shape == (len(faces), 15, 2) and np.isfinite(points).all()


def test_int8_ranges_are_per_face_means_and_weights_fit_in_7_bits(make_model, tiny_config):
    faces = calibration_inputs([to_uint8(synthetic_face(96, 96, seed=i)) for i in range(8)])
    faces[0] *= 20.0  # one outlier face: with the extremes over all faces it would set the input's range
    model = onnx_bytes(make_model(), tiny_config)
    proto = onnx.load_from_string(quantize_int8(model, faces))
    quantize_input = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME)
    low = min(faces.min(axis=(1, 2, 3)).mean(), 0.0)
    high = max(faces.max(axis=(1, 2, 3)).mean(), 0.0)
    assert float(_constants(proto)[quantize_input.input[1]]) == pytest.approx((high - low) / 255, rel=1e-5)
    # 7-bit symmetric: |w| <= 64, so a pair of uint8 x int8 products (2 x 255 x 64) fits in int16.
    assert _largest_int8_weight(proto) == 64
    # 8 bits, for VNNI-only deployments, use the full range: the overflow the default guards against.
    assert _largest_int8_weight(onnx.load_from_string(quantize_int8(model, faces, weight_bits=8))) == 127
    with pytest.raises(ValueError, match="weight_bits must be 7 or 8"):
        quantize_int8(model, faces, weight_bits=4)


def _constants(proto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def _largest_int8_weight(proto) -> int:
    weights = [v for v in _constants(proto).values() if v.dtype == np.int8 and v.ndim == 4]
    assert weights
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)


def test_onnx_model_file_is_checked(int8_file, two_stack_dir, tiny_model_dir):
    with pytest.raises(WeightsError, match="architecture"):
        Detector(two_stack_dir, device="cpu", backend="onnx", onnx_model=int8_file)
    with pytest.raises(ValueError, match="onnx_model"):
        Detector(tiny_model_dir, device="cpu", backend="torch", onnx_model=int8_file)
    assert Detector(tiny_model_dir, device="cpu", onnx_model=int8_file).backend == "onnx"  # the graph picks the backend


def test_explicit_precision_must_match_the_onnx_model(int8_file, tiny_model_dir):
    with pytest.raises(WeightsError, match="precision='fp32'.*int8 graph"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", precision="fp32", onnx_model=int8_file)
    assert Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=int8_file).precision == "int8"  # auto


def test_missing_or_unreadable_onnx_model_file(tiny_model_dir, tmp_path, face_png):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=tmp_path / "missing.onnx")
    with pytest.raises(WeightsError, match="face.png.*not a readable ONNX graph"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=face_png)


def test_bundled_int8_graph_is_verified_and_chosen_by_precision(tiny_manifest, tiny_weights, int8_file, tmp_path, faces):
    import json

    from facekp import ChecksumError, WeightsError
    from facekp.weights import sha256_file

    entry = {"name": "tiny", "file": str(tiny_weights), "sha256": sha256_file(tiny_weights),
             "size": tiny_weights.stat().st_size, "config": json.loads((tiny_weights.parent / "config.json").read_text())}
    int8 = {"file": str(int8_file), "sha256": sha256_file(int8_file), "size": int8_file.stat().st_size, "metrics": {}}
    tiny_manifest([{**entry, "int8_onnx": int8}])
    det = Detector("tiny", device="cpu", backend="onnx", precision="int8")
    assert det.precision == "int8"
    direct = Detector(tiny_weights, device="cpu", backend="onnx", onnx_model=int8_file)
    np.testing.assert_array_equal(det.predict_batch(faces), direct.predict_batch(faces))
    assert Detector("tiny", device="cpu", backend="auto", precision="int8").precision == "int8"

    assert Detector("tiny", device="cpu", precision="int8").backend == "onnx"  # int8 alone picks the onnx backend
    with pytest.raises(ValueError, match="backend='onnx'"):
        Detector("tiny", device="cpu", backend="torch", precision="int8")  # the torch backend has no int8 path
    with pytest.raises(ValueError, match="bundle none"):
        Detector(tiny_weights, device="cpu", backend="onnx", precision="int8")  # a file, not a manifest model
    with pytest.raises(WeightsError, match="fp32 graph"):
        fp32 = export_onnx(tmp_path / "fp32.onnx", tiny_weights)
        Detector(tiny_weights, device="cpu", backend="onnx", precision="int8", onnx_model=fp32)
    tampered = tmp_path / "tampered.onnx"
    data = bytearray(int8_file.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    tiny_manifest([{**entry, "int8_onnx": {**int8, "file": str(tampered)}}])
    with pytest.raises(ChecksumError):
        Detector("tiny", device="cpu", backend="onnx", precision="int8")
    tiny_manifest([entry])
    with pytest.raises(WeightsError, match="ships no int8 graph"):
        Detector("tiny", device="cpu", backend="onnx", precision="int8")


def test_bundled_fp32_graph_is_the_cpu_default_and_verified(tiny_manifest, tiny_weights, tmp_path, faces):
    import json

    from facekp import ChecksumError
    from facekp.weights import sha256_file

    entry = {"name": "tiny", "file": str(tiny_weights), "sha256": sha256_file(tiny_weights),
             "size": tiny_weights.stat().st_size, "config": json.loads((tiny_weights.parent / "config.json").read_text())}
    graph = export_onnx(tmp_path / "tiny.onnx", tiny_weights)
    fp32 = {"file": str(graph), "sha256": sha256_file(graph), "size": graph.stat().st_size, "metrics": {}}
    tiny_manifest([{**entry, "fp32_onnx": fp32}])
    det = Detector("tiny", device="cpu")
    assert (det.backend, det.precision, det.runner.source) == ("onnx", "fp32", str(graph))
    for backend in ("auto", "onnx"):
        assert Detector("tiny", device="cpu", backend=backend).runner.source == str(graph)
    on_torch = Detector("tiny", device="cpu", backend="torch")
    np.testing.assert_allclose(det.predict_batch(faces), on_torch.predict_batch(faces), atol=1e-3)
    graph.write_bytes(graph.read_bytes()[:-1] + bytes([graph.read_bytes()[-1] ^ 1]))
    with pytest.raises(ChecksumError, match="bundled fp32 graph"):
        Detector("tiny", device="cpu")
    assert Detector("tiny", device="cpu", backend="torch").backend == "torch"  # torch never opens the graph
    tiny_manifest([entry])
    assert Detector("tiny", device="cpu").backend == "torch"  # no graph bundled: torch, as before


def test_cli_export_int8(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(8):
        Image.fromarray(to_uint8(synthetic_face(80, 90, seed=i))).save(crops / f"{i}.png")
    out = tmp_path / "int8.onnx"
    assert main(["export-onnx", str(out), "--weights", str(tiny_model_dir), "--int8", str(crops), "--check"]) == 0
    assert "int8 onnxruntime vs fp32 torch" in capsys.readouterr().err
    assert OnnxRunner(out).precision == "int8"
    assert main(["export-onnx", str(tmp_path / "x.onnx"), "--weights", str(tiny_model_dir), "--int8", str(tmp_path / "none")]) == 2
