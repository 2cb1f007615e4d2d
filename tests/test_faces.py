"""Faces in whole photos: the Haar face detector, box calibration and Detector.detect.

The keypoint network is the tiny random model (its points are meaningless); what is checked is
the face detection, the framing, the batching and the bookkeeping of coordinates. The real
data (faces68) is used only where present.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from facekp import Detector, Face
from facekp.calibration import BoxCalibration, default_calibration, fit_box_calibration, match_face, resolve_calibration
from facekp.config import DetectorConfig
from facekp.data import group_photo, sample_photo, sample_photo_path
from facekp.errors import InvalidImageError
from facekp.face_detection import HAAR_NAME, HaarFaceDetector, run_face_detector
from facekp.geometry import CANONICAL_CENTER, CANONICAL_RMS, apply_affine, face_geometry, similarity_transform
from facekp.images import load_gray
from facekp.preprocess import warp
from facekp.weights import save_model

DATA = Path(os.environ.get("FACEKP_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces68"))

# Where the cascade finds the sample portrait's face (x0, y0, x1, y1), found once by hand.
HOPPER_BOX = (154.5, 104.5, 376.5, 326.5)


@pytest.fixture(scope="module")
def haar() -> HaarFaceDetector:
    return HaarFaceDetector()


GROUP_SCALES = (0.5, 0.3, 0.2)


@pytest.fixture(scope="module")
def group():
    """The sample group photo, small: three faces of about 110, 65 and 45 px."""
    return group_photo(GROUP_SCALES, size=(580, 300))


@pytest.fixture(scope="module")
def group_faces(detector, group):
    return detector.detect(group[0])


def _centre(box):
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _side(box):
    return 0.5 * ((box[2] - box[0]) + (box[3] - box[1]))


# -- the cascade ----------------------------------------------------------------------------
def test_cascade_finds_the_sample_face(haar):
    boxes, votes, angles = haar(sample_photo())
    assert len(boxes) == 1 and votes[0] >= 10 and angles[0] == 0
    np.testing.assert_allclose(boxes[0], HOPPER_BOX, atol=3)


def test_cascade_takes_float_and_16_bit_images_like_load_gray(haar, small_photo):
    boxes = haar(small_photo)[0]
    assert len(boxes) == 1
    np.testing.assert_array_equal(haar(small_photo / 255.0)[0], boxes)
    np.testing.assert_array_equal(haar(small_photo.astype(np.uint16) * 257)[0], boxes)
    with pytest.raises(InvalidImageError, match=r"\[0, 1\]"):
        haar(small_photo.astype(np.float64))  # 0..255 floats


def test_cascade_rejects_a_file_that_is_not_a_cascade(tmp_path):
    bad = tmp_path / "cascade.xml"
    bad.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(ValueError, match="cascade classifier"):
        HaarFaceDetector(cascade=bad)
    with pytest.raises(FileNotFoundError):
        HaarFaceDetector(cascade=tmp_path / "missing.xml")


# -- Detector.detect ------------------------------------------------------------------------
def test_detect_on_the_sample_photo(detector):
    faces = detector.detect(sample_photo_path(), refine=0)
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, Face)
    np.testing.assert_allclose(face.box, HOPPER_BOX, atol=3)
    assert face.points.shape == (15, 2) and face.points.dtype == np.float32
    assert face.confidence.shape == (15,) and face.confidence.dtype == np.float32
    assert face.score >= 10
    # The points lie inside the face's canonical crop (96 px around the calibrated frame).
    m = default_calibration().frame(face.box)
    crop = apply_affine(m, face.points)
    assert (crop > -1).all() and (crop < 97).all()
    json.dumps(face.to_dict())  # JSON-ready


def test_detect_several_faces_largest_first(group, group_faces):
    image, regions = group
    assert len(group_faces) == 3
    areas = [f.area for f in group_faces]
    assert areas == sorted(areas, reverse=True)
    # Largest face first: the copies were pasted left to right at decreasing scales.
    for face, region, scale in zip(group_faces, regions, GROUP_SCALES):
        x0, y0 = region[0] + 0.5, region[1] + 0.5
        expected = np.array(HOPPER_BOX) * scale + [x0 - 0.5 * (1 - scale), y0 - 0.5 * (1 - scale)] * 2
        assert np.abs(_centre(face.box) - _centre(expected)).max() < 0.06 * _side(expected)
        assert abs(_side(face.box) / _side(expected) - 1) < 0.12


def test_all_faces_go_through_the_network_in_one_batch(detector, group, monkeypatch):
    calls = []
    original = detector.predict_framed

    def spy(grays, transforms, batch_size=None):
        calls.append(len(grays))
        return original(grays, transforms, batch_size)

    monkeypatch.setattr(detector, "predict_framed", spy)
    faces = detector.detect(group[0], refine=1)
    assert calls == [3, 3] and len(faces) == 3
    calls.clear()
    detector.detect(group[0], refine=0)
    assert calls == [3]


def test_refine_reframes_on_the_first_prediction(detector, small_photo, monkeypatch):
    seen = []
    original = detector.predict_framed

    def spy(grays, transforms, batch_size=None):
        points, confidence = original(grays, transforms, batch_size)
        seen.append((np.array(transforms), points))
        return points, confidence

    monkeypatch.setattr(detector, "predict_framed", spy)
    detector.detect(small_photo, refine=2)
    assert len(seen) == 3
    for (_, points), (transforms, _) in zip(seen[:-1], seen[1:]):
        # each pass frames the previous pass's points canonically (centroid -> 48, RMS -> 26)
        crop = apply_affine(transforms[0], points[0].astype(np.float64))
        c, rms = face_geometry(crop)
        np.testing.assert_allclose(c, [CANONICAL_CENTER] * 2, atol=1e-3)
        assert rms == pytest.approx(CANONICAL_RMS, rel=1e-4)
    with pytest.raises(ValueError):
        detector.detect(small_photo, refine=-1)


def test_no_face_gives_an_empty_list(detector):
    assert detector.detect(np.zeros((200, 300), np.uint8)) == []
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8)) == []
    smooth = cv2.resize(np.random.default_rng(0).uniform(0, 255, (6, 8)).astype(np.float32), (320, 240))
    assert detector.detect(smooth.clip(0, 255).astype(np.uint8)) == []


def test_tiny_images(detector):
    for side in (8, 16, 23, 30):
        assert detector.detect(np.full((side, side), 100, np.uint8)) == []
    with pytest.raises(InvalidImageError):
        detector.detect(np.zeros((5, 5), np.uint8))
    with pytest.raises(FileNotFoundError):
        detector.detect("no/such/photo.jpg")


def test_grayscale_float_and_rgb_inputs_agree(detector, small_photo):
    rgb = detector.detect(small_photo)
    import torch
    from PIL import Image

    gray_u8 = cv2.cvtColor(small_photo, cv2.COLOR_RGB2GRAY)
    tensor = torch.from_numpy(small_photo).permute(2, 0, 1).float() / 255.0  # (C, H, W), as torchvision has it
    for other in (gray_u8, gray_u8.astype(np.float32) / 255.0, gray_u8[:, :, None], Image.fromarray(small_photo), tensor):
        faces = detector.detect(other)
        assert len(faces) == len(rgb) == 1
        np.testing.assert_allclose(faces[0].box, rgb[0].box, atol=1.0)
        np.testing.assert_allclose(faces[0].points, rgb[0].points, atol=0.5)


def test_huge_photo(detector, small_photo):
    # A 4000x1200 photo with the portrait enlarged 4x (a face of about 480 px) at x = 2500.
    huge = np.full((1200, 4000, 3), 120, np.uint8)
    big = cv2.resize(small_photo, (1024, 1200), interpolation=cv2.INTER_LINEAR)
    huge[:, 2500:3524] = big
    small_faces = detector.detect(small_photo, refine=0)
    faces = detector.detect(huge, refine=0)  # the face detector sees it shrunk to max_side, the network does not
    assert len(faces) == 1 == len(small_faces)
    sx, sy = 1024 / 256, 1200 / 300
    x0, y0, x1, y1 = small_faces[0].box
    expected = ((x0 + 0.5) * sx - 0.5 + 2500, (y0 + 0.5) * sy - 0.5, (x1 + 0.5) * sx - 0.5 + 2500, (y1 + 0.5) * sy - 0.5)
    assert np.abs(_centre(faces[0].box) - _centre(expected)).max() < 0.05 * _side(expected)
    assert abs(_side(faces[0].box) / _side(expected) - 1) < 0.08
    # The network's crops of the face, from the huge photo and from the small one, look alike.
    cal = default_calibration()
    crop_huge = warp(load_gray(huge), cal.frame(faces[0].box))
    crop_small = warp(load_gray(small_photo), cal.frame(small_faces[0].box))
    assert np.corrcoef(crop_huge.ravel(), crop_small.ravel())[0, 1] > 0.8


def test_rotated_faces(detector, small_photo):
    h, w = small_photo.shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    upright = detector.detect(small_photo)[0]
    tilted_10 = cv2.warpAffine(small_photo, similarity_transform(centre, 1.0, 10, centre), (w, h),
                               borderMode=cv2.BORDER_REPLICATE)
    assert len(detector.detect(tilted_10)) == 1  # the cascade tolerates small tilts
    m = similarity_transform(centre, 1.0, 30, centre)
    tilted = cv2.warpAffine(small_photo, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    assert detector.detect(tilted) == []  # too tilted for the upright cascade...
    faces = detector.detect(tilted, face_detector=HaarFaceDetector(angles=(-30, 0, 30)))
    assert len(faces) == 1 and faces[0].angle == -30  # ...found by searching rotated copies
    expected_centre = apply_affine(m, _centre(upright.box)[None])[0]
    assert np.linalg.norm(_centre(faces[0].box) - expected_centre) < 0.1 * _side(upright.box)


def test_user_boxes(detector, small_photo):
    box = (70.0, 45.0, 190.0, 165.0)
    faces = detector.detect(small_photo, boxes=[box])
    assert len(faces) == 1 and faces[0].box == box and faces[0].score == 1.0
    faces = detector.detect(small_photo, boxes=np.array([[10, 10, 50, 50, 0.3], [*box, 0.9]]))
    assert [f.score for f in faces] == [0.9, 0.3]  # largest first
    assert detector.detect(small_photo, boxes=np.empty((0, 4))) == []
    for bad in ([[10, 10, 5, 50]], [[0, 0, 1]], [[0, 0, np.nan, 5]]):
        with pytest.raises(ValueError):
            detector.detect(small_photo, boxes=bad)


def test_custom_face_detector(detector, small_photo):
    seen = []

    def my_detector(rgb):
        seen.append((rgb.shape, rgb.dtype))
        return [[60.0, 40.0, 200.0, 180.0]], [0.75]

    faces = detector.detect(small_photo, face_detector=my_detector)
    assert seen == [(small_photo.shape, np.uint8)]
    assert len(faces) == 1 and faces[0].box == (60.0, 40.0, 200.0, 180.0) and faces[0].score == 0.75
    assert detector.detect(small_photo, face_detector=lambda rgb: np.empty((0, 4))) == []
    # A bare list of boxes is fine too, and a grayscale photo reaches it as RGB.
    faces = detector.detect(small_photo[:, :, 0], face_detector=lambda rgb: [[60, 40, 200, 180]] if rgb.ndim == 3 else [])
    assert len(faces) == 1


def test_max_faces(detector, group, group_faces):
    faces = detector.detect(group[0], max_faces=1)
    assert len(faces) == 1 and faces[0].box == group_faces[0].box  # the largest
    assert detector.detect(group[0], max_faces=0) == []
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="max_faces must be None or an integer >= 0"):
            detector.detect(group[0], max_faces=bad)


def test_concurrent_detect_matches_serial(detector, group, small_photo):
    # Threads share the default face detector (one OpenCV cascade).
    photos = [group[0], small_photo] * 12
    serial = [detector.detect(p, refine=0) for p in photos]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: detector.detect(p, refine=0), photos))
    assert [len(f) for f in parallel] == [len(f) for f in serial] == [3, 1] * 12
    for got, want in zip(parallel, serial):
        assert [f.box for f in got] == [f.box for f in want]
        np.testing.assert_allclose([f.points for f in got], [f.points for f in want], atol=1e-4)


# -- calibration ----------------------------------------------------------------------------
def test_calibration_frame_maps_the_expected_face_to_the_canonical_frame():
    cal = BoxCalibration(0.3, (0.05, -0.02))
    box = (100.0, 50.0, 300.0, 250.0)  # side 200, centre (200, 150)
    centroid, rms = cal.expected(box)
    np.testing.assert_allclose(centroid, [210.0, 146.0])
    assert rms == pytest.approx(60.0)
    m = cal.frame(box)
    np.testing.assert_allclose(apply_affine(m, centroid[None]), [[CANONICAL_CENTER] * 2])
    assert np.sqrt(abs(np.linalg.det(m[:, :2]))) == pytest.approx(CANONICAL_RMS / 60.0)
    # box_from_points inverts it (square boxes)
    pts = _points_with(centroid, rms, np.random.default_rng(0))
    np.testing.assert_allclose(cal.box_from_points(pts), box, atol=1e-6)
    # round trip through a dict (what config.json stores)
    again = BoxCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    with pytest.raises(ValueError):
        BoxCalibration.from_dict({"offset": [0, 0]})
    with pytest.raises(ValueError):
        BoxCalibration(-1.0)


def test_calibration_frame_with_an_angle_turns_the_face_upright():
    cal = BoxCalibration(0.3, (0.1, 0.0))
    box = (0.0, 0.0, 100.0, 100.0)
    m = cal.frame(box, angle=90)
    # the expected centroid still maps to the crop centre, and the offset turned with the face
    centroid, _ = cal.expected(box, angle=90)
    np.testing.assert_allclose(apply_affine(m, centroid[None]), [[48.0, 48.0]], atol=1e-9)
    assert np.linalg.norm(centroid - [50.0, 50.0]) == pytest.approx(10.0)


def _points_with(centroid, rms, rng):
    pts = rng.normal(0, 1, (15, 2))
    pts -= pts.mean(0)
    pts *= rms / np.sqrt((pts**2).sum(1).mean())
    return pts + centroid


def test_fit_box_calibration_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    true = BoxCalibration(0.28, (0.04, -0.03))
    samples = []
    for i in range(60):
        side = rng.uniform(60, 160)
        box = np.array([rng.uniform(0, 200), rng.uniform(0, 200)])
        box = (*box, *(box + side))
        centroid, rms = true.expected(box)
        centroid = centroid + rng.normal(0, 0.02 * side, 2)  # detector noise
        rms *= np.exp(rng.normal(0, 0.03))
        pts = _points_with(centroid, rms, rng)
        samples.append(SimpleNamespace(image=np.zeros((8, 8), np.uint8), points=pts, mask=np.ones(15, bool), box=box,
                                       missed=i % 10 == 0, wild=i % 15 == 1))
    it = iter(samples)

    def fake_detector(image):
        s = next(it)
        if s.missed:
            return np.empty((0, 4))
        boxes = [s.box, (900, 900, 960, 960)]  # the face, and a false detection elsewhere
        if s.wild:  # a bad box that still matches: an outlier for the robust fit
            x0, y0, x1, y1 = s.box
            boxes[0] = (x0 + 0.25 * (x1 - x0), y0, x1 + 0.25 * (x1 - x0), y1)
        return np.array(boxes, float), np.array([5.0, 3.0])

    fake_detector.name = "fake"
    fit = fit_box_calibration(samples, fake_detector)
    assert fit.detector == "fake"
    assert fit.scale == pytest.approx(true.scale, rel=0.02)
    np.testing.assert_allclose(fit.offset, true.offset, atol=0.01)
    assert fit.stats["photos"] == 60 and fit.stats["found"] == 54 and fit.stats["used"] <= 54
    with pytest.raises(ValueError, match="found only"):
        fit_box_calibration(samples[:2], lambda image: np.empty((0, 4)))


def test_match_face():
    pts = _points_with(np.array([100.0, 100.0]), 20.0, np.random.default_rng(0))
    boxes = np.array([[0, 0, 40, 40], [60, 60, 140, 140], [95, 95, 105, 105], [-200, -200, 400, 400]], float)
    assert match_face(boxes, pts) == 1
    assert match_face(boxes[[0, 2, 3]], pts) is None
    assert match_face(np.empty((0, 4)), pts) is None


def test_default_calibration_is_shipped_and_sane():
    cal = default_calibration()
    assert cal.detector == HAAR_NAME
    assert 0.2 < cal.scale < 0.35 and max(abs(v) for v in cal.offset) < 0.1
    assert cal.stats["photos"] > 1000


def test_model_config_calibration_takes_precedence(tmp_path, make_model, tiny_config, small_photo):
    own = {"detector": HAAR_NAME, "scale": 0.4, "offset": [0.1, 0.0]}
    config = DetectorConfig(hourglass=tiny_config.hourglass, box_to_frame=own)
    save_model(make_model(), config, tmp_path)
    det = Detector(tmp_path, device="cpu")
    assert resolve_calibration(det, HaarFaceDetector()).scale == 0.4
    assert resolve_calibration(det, None).scale == 0.4  # user boxes: the model's Haar calibration
    other = lambda image: []  # noqa: E731 - a detector of another name gets the default
    other.name = "mine"
    assert resolve_calibration(det, other) == default_calibration()
    other.calibration = {"detector": "mine", "scale": 0.2}
    assert resolve_calibration(det, other).scale == 0.2
    assert resolve_calibration(det, other, BoxCalibration(0.5)).scale == 0.5
    # detect() frames the box with the model's own calibration: its points are the network's
    # on that frame, and not those on the frame of the bundled default calibration.
    box = (60.0, 40.0, 200.0, 180.0)
    (face,) = det.detect(small_photo, boxes=[box], refine=0)
    gray = load_gray(small_photo)
    points, confidence = det.predict_framed([gray], BoxCalibration.from_dict(own).frame(box)[None])
    np.testing.assert_allclose(face.points, points[0], atol=1e-4)
    np.testing.assert_allclose(face.confidence, confidence[0], atol=1e-5)
    default_points, _ = det.predict_framed([gray], default_calibration().frame(box)[None])
    assert np.abs(face.points - default_points[0]).max() > 5  # the two frames differ by far more


def test_run_face_detector_normalises_answers():
    boxes, scores, angles = run_face_detector(lambda im: [[0, 0, 10, 10]], None)
    assert boxes.shape == (1, 4) and scores.tolist() == [1.0] and angles.tolist() == [0.0]
    boxes, scores, angles = run_face_detector(lambda im: ([[0, 0, 10, 10]], [2.0], [15.0]), None)
    assert scores.tolist() == [2.0] and angles.tolist() == [15.0]
    with pytest.raises(ValueError):
        run_face_detector(lambda im: ([[0, 0, 10, 10]], [1.0, 2.0]), None)


# -- real photos ----------------------------------------------------------------------------
@pytest.mark.skipif(not (DATA / "index.csv").exists(), reason="faces68 data not found (set FACEKP_DATA)")
def test_calibration_frames_real_validation_faces():
    import csv

    from facekp.train.data import map_68_to_15, read_pts, split_by_identity

    with (DATA / "index.csv").open(newline="") as f:
        rows = [SimpleNamespace(subset=r["subset"], identity=r["identity"], path=DATA / r["image"])
                for r in csv.DictReader(f) if r["subset"] == "helen"]
    _, val = split_by_identity(rows, 0.15, seed=0)  # the validation photos, as training splits them
    for s in val[:10]:
        s.image = cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE)
        s.points, s.mask = map_68_to_15(read_pts(s.path.with_suffix(".pts"))), np.ones(15, bool)
    val = val[:10]
    cal, haar = default_calibration(), HaarFaceDetector()
    found, errors = 0, []
    for s in val:
        boxes, _, _ = haar(s.image)
        i = match_face(boxes, s.points, s.mask)
        if i is None:
            continue
        found += 1
        centroid, rms = cal.expected(boxes[i])
        c, r = face_geometry(s.points, s.mask)
        errors.append((np.linalg.norm(centroid - c) / r, abs(np.log(rms / r))))
    assert found >= 0.75 * len(val)
    errors = np.array(errors)
    assert np.median(errors[:, 0]) < 0.2 and np.median(errors[:, 1]) < 0.12
