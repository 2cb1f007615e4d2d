"""Runners (facekp.runtime): the torch and onnxruntime runners have one call shape and agree; the
rules of backend x precision; and the inference paths behind them agree: fused vs unfused,
channels-last vs contiguous, fp32 vs autocast, compile wiring, batch splitting, and the codec's
windowed DARK decode vs the full-map reference."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_face, to_uint8
from facekp import Detector
from facekp.codec import HeatmapCodec
from facekp.model import fuse_conv_bn
from facekp.preprocess import standardize
from facekp.keypoints import FLIP_INDEX
from facekp.runtime import OnnxRunner, Runner, TorchRunner, make_runner, resolve_backend, resolve_precision, run_crops
from facekp.train.evaluate import predict_crops

ATOL_PX = 1e-3


@pytest.fixture(scope="module")
def crops():
    """(8, 96, 96) float32 crops in [0, 1]."""
    return np.stack([synthetic_face(96, 96, seed=i).astype(np.float32) for i in range(8)])


def _inputs(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(standardize(crops))[:, None]


def test_fused_channels_last_equals_unfused(detector, crops):
    x = _inputs(crops)
    with torch.inference_mode():
        unfused = detector.model.predict_heatmaps(x)
        fused = fuse_conv_bn(copy.deepcopy(detector.model)).predict_heatmaps(x)
        fused_cl = detector.runner.net.predict_heatmaps(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.runner.net.modules())
    torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused_cl, unfused, atol=1e-4, rtol=1e-4)
    # and as points: the Detector path vs the training-side evaluation of the unfused model
    points, _ = detector.predict_crops(crops, batch_size=8)
    reference = predict_crops(detector.model, detector.codec, crops)
    np.testing.assert_allclose(points, reference, atol=ATOL_PX, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_splitting_does_not_change_results(detector, crops, batch_size):
    ref, ref_c = detector.predict_crops(crops, batch_size=8)
    points, conf = detector.predict_crops(crops, batch_size=batch_size)
    np.testing.assert_allclose(points, ref, atol=ATOL_PX, rtol=0)
    np.testing.assert_allclose(conf, ref_c, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_heatmaps_close_to_fp32(tiny_model_dir, crops, precision):
    fp32 = Detector(tiny_model_dir, device="cpu")
    low = Detector(tiny_model_dir, device="cpu", precision=precision)
    assert fp32.precision == "fp32" and low.precision == precision and f"precision={precision}" in repr(low)
    x = _inputs(crops)
    with torch.inference_mode():
        want, got = fp32.runner.heatmaps(x), low.runner.heatmaps(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # bf16 keeps 8 bits of mantissa, fp16 11: errors of a few percent of the heatmap range at most
    scale = float(want.abs().max())
    tol = {"bf16": 0.05, "fp16": 0.01}[precision] * scale
    assert float((got - want).abs().max()) <= tol
    points, conf = low.predict_batch([to_uint8(c) for c in crops], return_confidence=True)
    assert points.dtype == np.float32 and np.isfinite(points).all() and conf.dtype == np.float32


FACE_CROP = Path(__file__).resolve().parents[1] / "examples" / "face_crop.jpg"


def test_bf16_points_of_the_trained_model_close_to_fp32():
    """Autocast (bf16 on CPU) moves the bundled trained model's points on a real face by a few
    hundredths of a 96-px-frame pixel: measured 0.023 on average, 0.046 at most (the eyebrows).

    The bounds (0.1 mean, 0.2 max) leave room for other CPUs' bf16 kernels and are still a small
    fraction of the model's own error (validation RMSE ~1.5 frame px); heatmaps rounded to fp8
    (3 mantissa bits, against bf16's 8) already exceed them.
    """
    fp32 = Detector(device="cpu")
    bf16 = Detector(device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and bf16.backend == "torch"
    want, want_conf = fp32.predict(FACE_CROP, return_confidence=True)
    got, conf = bf16.predict(FACE_CROP, return_confidence=True)
    assert got.dtype == np.float32 and conf.dtype == np.float32
    height, width = np.asarray(Image.open(FACE_CROP)).shape[:2]
    frame_px = np.linalg.norm(got - want, axis=1) * 96 / max(width, height)  # letterboxed into 96 x 96
    assert frame_px.mean() < 0.1 and frame_px.max() < 0.2, frame_px
    assert not np.array_equal(got, want)  # the network really ran in bf16
    np.testing.assert_allclose(conf, want_conf, atol=0.05)


def test_decode_of_bf16_rounded_peaked_heatmaps():
    """Clear peaks (a trained model's heatmaps) rounded to bf16 decode within 0.05 crop px of fp32."""
    codec = HeatmapCodec()
    truth = torch.rand(8, 15, 2, generator=torch.Generator().manual_seed(0)) * 80 + 8
    heatmaps = 0.9 * codec.encode(truth) + 0.01
    want, _ = codec.decode(heatmaps)
    got, _ = codec.decode(heatmaps.bfloat16().float())
    assert float((want - truth).abs().max()) < 0.05
    assert float((got - want).abs().max()) < 0.05


def test_precision_and_backend_are_validated(tiny_model_dir):
    assert Detector(tiny_model_dir, device="cpu").precision == "fp32"  # "auto" on CPU
    with pytest.raises(ValueError, match="precision='int8' runs a quantized ONNX graph"):
        Detector(tiny_model_dir, device="cpu", backend="torch", precision="int8")  # torch has no int8 path
    with pytest.raises(ValueError, match="backend"):
        Detector(tiny_model_dir, device="cpu", backend="tflite")


@pytest.mark.parametrize("compile_arg, mode", [(True, None), ("max-autotune", "max-autotune")])
def test_compile_wraps_the_heatmap_function(tiny_model_dir, face_u8, monkeypatch, compile_arg, mode):
    calls = []

    def fake_compile(fn, mode=None, **kwargs):
        calls.append(mode)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    det = Detector(tiny_model_dir, device="cpu", compile=compile_arg)
    assert calls == [mode]
    np.testing.assert_allclose(det.predict(face_u8), Detector(tiny_model_dir, device="cpu").predict(face_u8), atol=ATOL_PX)


def test_compile_really_compiles(tiny_model_dir, face_u8, monkeypatch):
    """Detector(compile=True) through the real torch.compile, on an eager backend (no C++ build):
    the network runs as the graph dynamo captured, and gives the same points."""
    try:
        import torch._dynamo
    except Exception:  # pragma: no cover - platforms without dynamo
        pytest.skip("torch.compile is unavailable")
    real_compile = torch.compile
    graphs = []

    def eager_backend(gm, example_inputs):  # what backend="eager" does, counting the graphs
        graphs.append(gm)
        return gm.forward

    def compile_eagerly(fn, mode=None, **kwargs):
        assert mode is None and not kwargs
        return real_compile(fn, backend=eager_backend)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    torch._dynamo.reset()
    det = Detector(tiny_model_dir, device="cpu", compile=True)
    assert det.backend == "torch"
    assert not graphs  # compiled on the first call
    got = det.predict(face_u8)
    assert graphs and "conv2d" in graphs[0].code  # the network went through dynamo
    np.testing.assert_allclose(got, Detector(tiny_model_dir, device="cpu").predict(face_u8), atol=ATOL_PX)
    np.testing.assert_allclose(det.predict(face_u8), got, atol=0)  # the compiled function is reused
    torch._dynamo.reset()


def _reference_offsets(codec: HeatmapCodec, heatmaps: torch.Tensor) -> torch.Tensor:
    """Points decoded through the full-map _smoothed_log (the original DARK implementation)."""
    n, k, h, w = heatmaps.shape
    peak, index = heatmaps.reshape(n, k, h * w).max(-1)
    ix, iy = index % w, index // w
    logh = codec._smoothed_log(heatmaps).reshape(n, k, (h + 2) * (w + 2))

    def at(dx, dy):
        return logh.gather(-1, ((iy + 1 + dy) * (w + 2) + ix + 1 + dx).unsqueeze(-1)).squeeze(-1)

    return torch.stack([at(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1), ix, iy  # row-major 3x3


@pytest.mark.parametrize("sigma, blur", [(1.0, 5), (2.0, 5), (1.5, 3), (1.0, 7)])
def test_windowed_dark_equals_full_map_smoothing(sigma, blur, make_model):
    codec = HeatmapCodec(96, 4, sigma, blur)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(16, 15, 2, generator=g) * 97 - 0.5  # border peaks included
    clean = codec.encode(truth)
    with torch.inference_mode():
        net = make_model().predict_heatmaps(torch.randn(8, 1, 96, 96, generator=g))
    maps = [clean, (clean + 0.05 * torch.randn(clean.shape, generator=g)).clamp_min(0), net, torch.zeros(2, 15, 24, 24)]
    for hm in maps:
        ref, ix, iy = _reference_offsets(codec, hm)
        got = codec._peak_neighbourhood(hm, ix, iy)
        # equal up to a per-map constant (the rescaling that the finite differences cancel)
        diff = (got - ref) - (got - ref)[..., :1]
        flat = ref.std(-1) < 1e-6  # all-zero maps: no information, both give a zero offset
        if (~flat).any():
            assert float(diff[~flat].abs().amax()) < 1e-4
        assert (got[flat] == got[flat][..., :1]).all()
    # decoding as a whole: still recovers clean targets to < 0.05 heatmap px away from the border
    inner = ((truth > 8) & (truth < 88)).all(-1)
    points, _ = codec.decode(clean)
    assert float((points - truth)[inner].abs().max()) / 4 < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_matches_cpu(tiny_model_dir, crops, precision):
    cpu = Detector(tiny_model_dir, device="cpu")
    gpu = Detector(tiny_model_dir, device="cuda", precision=precision, batch_size=3)
    x = _inputs(crops)
    with torch.inference_mode():
        want, got = cpu.runner.heatmaps(x), gpu.runner.heatmaps(x.cuda()).cpu()
    tol = {"fp32": 1e-3, "fp16": 0.01, "bf16": 0.05}[precision] * float(want.abs().max())
    assert float((got - want).abs().max()) <= tol
    points, conf = gpu.predict_crops(crops, batch_size=3)
    assert points.shape == (8, 15, 2) and np.isfinite(points).all() and conf.dtype == np.float32
    if precision == "fp32":
        np.testing.assert_allclose(points, cpu.predict_crops(crops, 8)[0], atol=1e-2)


def test_auto_backend_resolution(monkeypatch):
    import importlib.util

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("torch", cpu) == "torch" and resolve_backend("onnx", cuda) == "onnx"
    assert resolve_backend("auto", cuda) == "torch"
    assert resolve_backend("auto", cpu, precision="bf16") == "torch"
    assert resolve_backend("auto", cpu, compile=True) == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert resolve_backend("auto", cpu) == "torch"  # onnxruntime not installed
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("openvino", cpu)


def test_auto_precision_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", cuda) == "fp16"
    assert resolve_precision("auto", cuda, backend="onnx") == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", cuda)


@pytest.mark.parametrize("form", ["uint8", "float32", "tensor", "uint16"])
def test_stack_of_input_sized_crops_takes_the_fast_path_with_the_same_points(detector, form):
    crops = np.stack([to_uint8(synthetic_face(96, 96, seed=i)) for i in range(5)])
    want = detector.predict_batch(list(crops))  # a list: the general load/warp path
    stack = {"uint8": crops, "float32": crops.astype(np.float32) / 255, "tensor": torch.from_numpy(crops),
             "uint16": crops.astype(np.uint16) * 257}[form]
    got = detector.predict_batch(stack, batch_size=2)
    np.testing.assert_allclose(got, want, atol=ATOL_PX if form != "uint16" else 2e-2, rtol=0)


def test_invalid_stacks_still_raise(detector):
    from facekp import InvalidImageError

    bad = np.full((2, 96, 96), 2.0, np.float32)
    with pytest.raises(InvalidImageError):
        detector.predict_batch(bad)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidImageError):
        detector.predict_batch(bad)


# -- both runners, one call shape ------------------------------------------------------------
@pytest.fixture(scope="module", params=["torch", "onnx"])
def runner(request, detector):
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    return make_runner(detector.model, detector.config, torch.device("cpu"), backend=request.param, precision="fp32")


def test_runners_share_one_call_shape(runner, detector, crops):
    assert isinstance(runner, Runner) and runner.backend in ("torch", "onnx") and runner.precision == "fp32"
    x = _inputs(crops)
    with torch.inference_mode():
        heatmaps = runner.heatmaps(x)
        points, confidence = runner.keypoints(x)
        want = detector.model.predict_heatmaps(x)  # the unfused original
    assert heatmaps.shape == (8, 15, 24, 24) and heatmaps.dtype == torch.float32
    torch.testing.assert_close(heatmaps, want, atol=1e-4, rtol=1e-4)
    assert points.shape == (8, 15, 2) and confidence.shape == (8, 15) and points.dtype == torch.float32
    want_points, want_confidence = detector.codec.decode(heatmaps)
    np.testing.assert_allclose(points, want_points, atol=ATOL_PX, rtol=0)
    np.testing.assert_allclose(confidence, want_confidence, atol=1e-6)


def test_flip_test_averages_the_mirrored_heatmaps(runner, detector, crops):
    x = _inputs(crops)
    with torch.inference_mode():
        heatmaps = runner.heatmaps(x)
        mirrored = runner.heatmaps(x.flip(-1)).flip(-1)[:, list(FLIP_INDEX)]
        want, _ = detector.codec.decode(0.5 * (heatmaps + mirrored))
        points, _ = runner.keypoints(x, flip_test=True)
    np.testing.assert_allclose(points, want, atol=ATOL_PX, rtol=0)
    assert np.abs(np.asarray(points) - np.asarray(runner.keypoints(x)[0])).max() > 1e-3  # it changed something


def test_run_crops_gives_each_runner_the_same_points(runner, detector, crops):
    reference = detector.predict_crops(crops)  # the detector's torch runner
    points, confidence = run_crops(runner, crops, batch_size=3)
    assert points.dtype == np.float32 and confidence.dtype == np.float32
    np.testing.assert_allclose(points, reference[0], atol=ATOL_PX, rtol=0)
    np.testing.assert_allclose(confidence, reference[1], atol=1e-5)


def test_the_onnx_runner_leaves_the_torch_network_alone(tiny_model_dir):
    pytest.importorskip("onnxruntime")
    det = Detector(tiny_model_dir, device="cpu", backend="onnx", threads=1)
    assert isinstance(det.runner, OnnxRunner) and det.backend == "onnx"
    assert not hasattr(det.runner, "net")  # no fused torch copy is made for onnx
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in det.model.modules())  # the original, unfused
    assert det.runner.threads == 1 and det.runner.session.get_session_options().intra_op_num_threads == 1


def test_the_torch_runner_runs_a_training_model_as_it_is(make_model, detector, crops):
    model = make_model()
    runner = TorchRunner(model, detector.codec, "cpu", fuse=False)
    assert runner.net is model  # no copy: evaluation during training sees the live weights
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        TorchRunner(model, detector.codec, "cpu", precision="int8")


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="torch", precision="int8"), "quantized ONNX graph on the CPU"),
    (dict(backend="onnx", precision="bf16"), "exported fp32 or int8 graph"),
    (dict(backend="onnx", compile=True), "exported fp32 or int8 graph"),
    (dict(backend="torch", onnx_model="model.onnx"), "onnx_model is run by backend='onnx'"),
    (dict(precision="int8"), "needs an int8 ONNX graph"),
])
def test_make_runner_refuses_combinations_that_cannot_run(detector, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_runner(detector.model, detector.config, torch.device("cpu"), **kwargs)

