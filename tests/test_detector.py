"""Detector: input forms, devices, coordinates, batching, flip test, save/load round trips."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facekp import KEYPOINT_NAMES, DeviceError, Detector, InvalidImageError
from facekp.keypoints import FLIP_INDEX
from facekp.geometry import apply_affine, invert_affine, letterbox_transform, similarity_transform
from facekp.preprocess import warp
from facekp.weights import sha256_file

ATOL = 1e-3  # px: "the same points"


# -- input forms ----------------------------------------------------------------------------
def test_predict_output_types(detector, face_u8):
    points = detector.predict(face_u8)
    assert isinstance(points, np.ndarray) and points.dtype == np.float32 and points.shape == (15, 2)
    assert np.isfinite(points).all()
    points2, confidence = detector.predict(face_u8, return_confidence=True)
    np.testing.assert_array_equal(points, points2)
    assert confidence.dtype == np.float32 and confidence.shape == (15,)
    assert np.all((confidence >= 0) & (confidence <= 1))
    assert isinstance(detector.model, nn.Module)
    assert not detector.model.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in detector.model.modules()), "Detector.model should be unfused"
    assert len(KEYPOINT_NAMES) == 15
    assert "stacks=1" in repr(detector) and "channels=16" in repr(detector)


def test_all_input_forms_give_the_same_points(detector, face_u8, tmp_path):
    ref = detector.predict(face_u8)
    rgb = np.repeat(face_u8[..., None], 3, axis=2)
    Image.fromarray(face_u8).save(tmp_path / "face.png")
    Image.fromarray(rgb).save(tmp_path / "face_rgb.png")
    forms = {
        "numpy HxW": face_u8,
        "numpy HxWx1": face_u8[..., None],
        "numpy HxWx3 RGB": rgb,
        "numpy HxWx4": np.dstack([rgb, np.full_like(face_u8, 255)]),
        "float32 [0,1]": face_u8.astype(np.float32) / 255,
        "float64 RGB [0,1]": rgb / 255.0,
        "non-contiguous view": np.ascontiguousarray(rgb[:, ::-1])[:, ::-1],
        "PIL L": Image.fromarray(face_u8),
        "PIL RGB": Image.fromarray(rgb),
        "str path": str(tmp_path / "face.png"),
        "pathlib.Path": tmp_path / "face_rgb.png",
        "tensor HW": torch.from_numpy(face_u8),
        "tensor HWC": torch.from_numpy(rgb),
        "tensor CHW": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        "tensor CHW float": torch.from_numpy(rgb / 255.0).permute(2, 0, 1),
        "tensor 1HW": torch.from_numpy(face_u8)[None],
    }
    for name, img in forms.items():
        points = detector.predict(img)
        assert points.dtype == np.float32 and points.shape == (15, 2), name
        assert np.abs(points - ref).max() <= ATOL, name


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "auto", "cpu:0"])
def test_devices(tiny_model_dir, face_u8, detector, device):
    det = Detector(tiny_model_dir, device=device)
    expected = "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    assert det.device.type == expected
    points = det.predict(face_u8)
    assert points.shape == (15, 2) and np.isfinite(points).all()
    if expected == "cpu":  # (on CUDA, "auto" may also pick reduced precision: not comparable at 1e-3)
        assert np.abs(points - detector.predict(face_u8)).max() <= ATOL


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_cuda_raises_device_error(tiny_model_dir, device):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        Detector(tiny_model_dir, device=device)


@pytest.mark.parametrize(
    "device, match",
    [("gpu", "invalid device 'gpu'"), ("cuda:x", "invalid device"), ("meta", "not supported"), ("", "invalid device")],
)
def test_invalid_device_raises_device_error(tiny_model_dir, device, match):
    with pytest.raises(DeviceError, match=match):
        Detector(tiny_model_dir, device=device)


def test_nonexistent_cuda_index_raises_device_error(tiny_model_dir):
    with pytest.raises(DeviceError, match="CUDA|does not exist"):
        Detector(tiny_model_dir, device="cuda:99")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_invalid_batch_size(tiny_model_dir, bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        Detector(tiny_model_dir, device="cpu", batch_size=bad)


@pytest.mark.parametrize("bad", [0, -1, 2.0])
def test_batch_size_argument_must_be_a_positive_int(detector, face_u8, bad):
    gray = face_u8.astype(np.float32) / 255
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        detector.predict_batch([face_u8, face_u8], batch_size=bad)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        detector.predict_batch(np.zeros((2, 96, 96), np.uint8), batch_size=bad)  # the input-sized fast path
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        detector.predict_framed([gray], letterbox_transform(80, 64)[None], batch_size=bad)


# -- coordinates ----------------------------------------------------------------------------
@pytest.mark.parametrize("w, h", [(64, 64), (64, 52), (48, 60)])
def test_crop_resized_2_5x_gives_points_scaled_2_5x(detector, make_face, w, h):
    """End to end: points on a crop and on the same crop resized 2.5x (cv2.resize, INTER_LINEAR).

    Tolerance: the two letterboxed 96x96 network inputs are the same picture up to resampling
    error (the framing itself is exact, see test_images.test_letterbox_of_resized_crop_is_consistent
    and test_predict_framed_maps_crop_points_back_exactly below). A random network's heatmaps
    follow such small input changes smoothly, except that where two heatmap cells nearly tie for
    the maximum the point may jump by a cell (4 crop px). So: the median keypoint must agree within
    0.1 crop px and at least 12 of 15 within 0.25 crop px. Getting the pixel-centre convention
    wrong (x * 2.5 instead of (x + 0.5) * 2.5 - 0.5) would move every point by ~0.7 crop px.
    """
    small = make_face(w, h, seed=w + h).astype(np.float32)
    big = np.clip(cv2.resize(small, (round(2.5 * w), round(2.5 * h)), interpolation=cv2.INTER_LINEAR), 0, 1)
    p_small, p_big = detector.predict(small), detector.predict(big)
    err_crop = np.linalg.norm(p_big - ((p_small + 0.5) * 2.5 - 0.5), axis=1) * 96 / max(big.shape)
    assert np.median(err_crop) < 0.1, np.round(err_crop, 3)
    assert (err_crop < 0.25).sum() >= 12, np.round(err_crop, 3)


def _subpixel_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(dx, dy) with b(x) ~ a(x - d): one Lucas-Kanade least-squares step, accurate for smooth
    images and shifts well below a pixel."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    gy, gx = np.gradient(a)
    lhs = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
    return np.linalg.solve(lhs, [np.sum(gx * (a - b)), np.sum(gy * (a - b))])


@pytest.mark.parametrize("interp", [cv2.INTER_LINEAR, cv2.INTER_AREA])
def test_network_inputs_of_resized_crops_agree(make_face, interp):
    # What the network sees for a crop and for the same crop resized (down with INTER_AREA,
    # up with INTER_LINEAR) is the same picture: same content at the same sub-pixel place.
    if interp == cv2.INTER_AREA:
        big = make_face(160, 130, seed=3).astype(np.float32)
        small = cv2.resize(big, (64, 52), interpolation=cv2.INTER_AREA)
    else:
        small = make_face(64, 52, seed=3).astype(np.float32)
        big = cv2.resize(small, (160, 130), interpolation=cv2.INTER_LINEAR)
    crop_small = warp(small, letterbox_transform(64, 52), 96)
    crop_big = warp(big, letterbox_transform(160, 130), 96)
    inner = np.s_[24:72, 16:80]  # the face, away from the letterbox padding
    assert np.abs(crop_small[inner] - crop_big[inner]).max() < 0.02
    assert np.abs(_subpixel_shift(crop_small[inner], crop_big[inner])).max() < 0.03  # crop px
    # The estimator does see a shift of the size a convention error would cause.
    shifted = letterbox_transform(160, 130)
    shifted[:, 2] += 0.3
    d = _subpixel_shift(crop_small[inner], warp(big, shifted, 96)[inner])
    assert np.abs(d - 0.3).max() < 0.03


def test_predict_framed_maps_crop_points_back_exactly(detector, face_u8):
    gray = face_u8.astype(np.float32) / 255
    m = similarity_transform((41.3, 30.2), 1.7, angle_deg=23.0)
    points, confidence = detector.predict_framed([gray], m[None])
    crop = warp(gray, m, 96)
    crop_points, crop_conf = detector.predict_crops(crop[None], 1)
    np.testing.assert_allclose(points[0], apply_affine(invert_affine(m), crop_points[0]), atol=1e-4)
    np.testing.assert_array_equal(confidence, crop_conf)
    # And predict() is predict_framed() through the letterbox.
    lb = letterbox_transform(gray.shape[1], gray.shape[0])
    np.testing.assert_allclose(detector.predict(gray), detector.predict_framed([gray], lb[None])[0][0], atol=1e-6)


def test_predict_framed_needs_one_transform_per_image(detector, face_u8):
    gray = face_u8.astype(np.float32) / 255
    transforms = np.stack([letterbox_transform(80, 64)] * 2)
    with pytest.raises(ValueError, match="3 images but 2 transforms"):
        detector.predict_framed([gray] * 3, transforms)
    with pytest.raises(ValueError, match="1 images but 2 transforms"):
        detector.predict_framed([gray], transforms)


@pytest.mark.parametrize("w, h", [(96, 72), (48, 40), (40, 48)])
def test_flip_test_is_mirror_equivariant(tiny_model_dir, make_face, w, h):
    # With flip_test the heatmaps are averaged with those of the mirrored crop (left/right
    # keypoints swapped), which makes the detector exactly mirror-equivariant: keypoint i of the
    # mirrored image is keypoint FLIP_INDEX[i] of the original with x -> (W - 1) - x. The sizes
    # make the letterbox scale 1 or 2, so the warp itself is mirror-exact.
    img = make_face(w, h, seed=7).astype(np.float32)
    mirrored = np.ascontiguousarray(img[:, ::-1])
    det = Detector(tiny_model_dir, device="cpu", flip_test=True)
    p, p_m = det.predict(img), det.predict(mirrored)
    expected = p[list(FLIP_INDEX)].copy()
    expected[:, 0] = (w - 1) - expected[:, 0]
    assert np.abs(p_m - expected).max() <= ATOL
    # Without flip_test the random network is not symmetric, so the property above has teeth.
    plain = Detector(tiny_model_dir, device="cpu")
    q, q_m = plain.predict(img), plain.predict(mirrored)
    q_expected = q[list(FLIP_INDEX)].copy()
    q_expected[:, 0] = (w - 1) - q_expected[:, 0]
    assert np.abs(q_m - q_expected).max() > 0.1


# -- batching -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch_images(make_face):
    sizes = [(64, 64), (40, 52), (96, 70), (33, 33), (120, 90)]
    images = [make_face(w, h, seed=i).astype(np.float32) for i, (w, h) in enumerate(sizes)]
    images[1] = np.round(images[1] * 255).astype(np.uint8)  # mixed dtypes / forms too
    images[2] = Image.fromarray(np.round(images[2] * 255).astype(np.uint8))
    return images


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_predict_batch_equals_single_predictions(detector, batch_images, batch_size):
    single = np.stack([detector.predict(img) for img in batch_images])
    single_conf = np.stack([detector.predict(img, return_confidence=True)[1] for img in batch_images])
    points, confidence = detector.predict_batch(batch_images, batch_size=batch_size, return_confidence=True)
    assert points.shape == (5, 15, 2) and points.dtype == np.float32
    assert confidence.shape == (5, 15) and confidence.dtype == np.float32
    assert np.abs(points - single).max() <= ATOL
    assert np.abs(confidence - single_conf).max() <= 1e-4
    np.testing.assert_array_equal(detector.predict_batch(tuple(batch_images), batch_size=batch_size), points)


def test_predict_batch_detector_batch_size(tiny_model_dir, batch_images, detector):
    det = Detector(tiny_model_dir, device="cpu", batch_size=2)
    assert np.abs(det.predict_batch(batch_images) - detector.predict_batch(batch_images)).max() <= ATOL


def test_predict_batch_accepts_stacked_arrays(detector, make_face):
    stack = np.stack([make_face(48, 40, seed=s) for s in range(3)]).astype(np.float32)  # (N, H, W)
    single = np.stack([detector.predict(img) for img in stack])
    for name, batch in {
        "(N,H,W) array": stack,
        "(N,H,W,1) array": stack[..., None],
        "(N,H,W,3) array": np.repeat(stack[..., None], 3, axis=3),
        "(N,H,W) tensor": torch.from_numpy(stack),
        "(N,C,H,W) tensor": torch.from_numpy(stack)[:, None],
        "(N,C,H,W) array": stack[:, None],
        "(N,3,H,W) array": np.repeat(stack[:, None], 3, axis=1),
        "(N,3,H,W) tensor": torch.from_numpy(np.repeat(stack[:, None], 3, axis=1)),
    }.items():
        points = detector.predict_batch(batch)
        assert points.shape == (3, 15, 2), name
        assert np.abs(points - single).max() <= ATOL, name


def test_predict_batch_empty(detector):
    points = detector.predict_batch([])
    assert points.shape == (0, 15, 2) and points.dtype == np.float32
    points, confidence = detector.predict_batch([], return_confidence=True)
    assert confidence.shape == (0, 15)
    assert detector.predict_batch(np.zeros((0, 32, 32), np.float32)).shape == (0, 15, 2)


@pytest.mark.parametrize("bad", ["face.png", b"bytes", 3, (x for x in [])], ids=["str", "bytes", "int", "generator"])
def test_predict_batch_rejects_non_sequences(detector, bad):
    with pytest.raises(InvalidImageError, match="sequence of images"):
        detector.predict_batch(bad)


def test_predict_batch_reports_the_bad_image(detector, face_u8):
    with pytest.raises(InvalidImageError, match="NaN"):
        detector.predict_batch([face_u8, np.full((20, 20), np.nan)])


# -- save / load ----------------------------------------------------------------------------
def test_save_pretrained_round_trip(detector, tiny_model_dir, tmp_path, face_u8, make_face):
    images = [face_u8, make_face(50, 70, seed=2).astype(np.float32)]
    ref = detector.predict_batch(images)
    out = detector.save_pretrained(tmp_path / "saved")
    assert out == tmp_path / "saved"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    # The unfused model is saved, bit for bit what was loaded.
    assert sha256_file(out / "model.safetensors") == sha256_file(tiny_model_dir / "model.safetensors")
    for source in (out, str(out), out / "model.safetensors", str(out / "model.safetensors")):
        np.testing.assert_array_equal(Detector(source, device="cpu").predict_batch(images), ref)


def test_config_json_contents(detector, tmp_path):
    folder = detector.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["architecture"] == "stacked_hourglass"
    assert config["hourglass"]["num_stacks"] == 1 and config["hourglass"]["channels"] == 16
    assert config["hourglass"]["input_size"] == 96 and config["hourglass"]["heatmap_stride"] == 4
    assert config["keypoint_names"] == list(KEYPOINT_NAMES)
    assert config["normalization"] == "standardize"
    assert config["sigma"] == detector.config.sigma
    # The same config is embedded in the safetensors metadata (single-file loading).
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["facekp_config"]) == config


def test_save_pretrained_refuses_to_overwrite(detector, tmp_path):
    folder = detector.save_pretrained(tmp_path / "m")
    before = (folder / "model.safetensors").stat().st_mtime_ns, (folder / "config.json").read_text()
    (folder / "config.json").write_text("sentinel")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        detector.save_pretrained(folder)
    assert (folder / "config.json").read_text() == "sentinel"  # nothing was touched
    assert (folder / "model.safetensors").stat().st_mtime_ns == before[0]
    detector.save_pretrained(folder, overwrite=True)
    assert (folder / "config.json").read_text() == before[1]


def test_save_pretrained_refuses_when_only_one_file_exists(detector, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        detector.save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() == b"precious"
    assert not (folder / "config.json").exists()
