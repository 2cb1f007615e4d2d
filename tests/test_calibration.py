"""Box calibration (facekp.calibration): framing a face box for the network, fitting the
calibration, matching boxes to faces, which calibration a detector gets, and how well the shipped
one frames real faces (faces68, where present).

The keypoint network is the tiny random model (its points are meaningless); what is checked is the
framing and the bookkeeping of coordinates.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from conftest import DATA, requires_faces68
from facekp import Detector
from facekp.calibration import BoxCalibration, default_calibration, fit_box_calibration, match_face, resolve_calibration
from facekp.config import DetectorConfig
from facekp.face_detection import HAAR_NAME, HaarFaceDetector
from facekp.geometry import CANONICAL_CENTER, CANONICAL_RMS, apply_affine, face_geometry
from facekp.images import load_gray
from facekp.weights import save_model


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


@requires_faces68
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
