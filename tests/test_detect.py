"""Detector.detect end to end: faces in whole photos, found, framed, batched through the network and
mapped back to the photo.

The keypoint network is the tiny random model (its points are meaningless); what is checked is
the face detection, the framing, the batching and the bookkeeping of coordinates.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from conftest import HOPPER_BOX
from facekp import Detector, Face
from facekp.calibration import default_calibration
from facekp.data import group_photo, sample_photo, sample_photo_path
from facekp.errors import InvalidImageError
from facekp.face_detection import HaarFaceDetector
from facekp.geometry import CANONICAL_CENTER, CANONICAL_RMS, apply_affine, face_geometry, similarity_transform
from facekp.images import load_gray
from facekp.preprocess import warp

GROUP_SCALES = (0.5, 0.3, 0.2)


@pytest.fixture(scope="module")
def group():
    """The sample group photo, small: three faces of about 110, 65 and 45 px."""
    return group_photo(GROUP_SCALES, size=(580, 300))


@pytest.fixture(scope="module")
def group_faces(detector, group):
    return detector.detect(group[0], face_detector="haar")


def _centre(box):
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _side(box):
    return 0.5 * ((box[2] - box[0]) + (box[3] - box[1]))


def test_detect_on_the_sample_photo(detector):
    faces = detector.detect(sample_photo_path(), refine=0, face_detector="haar")
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
    original = detector.points_of_crops

    def spy(crops, transforms, batch_size=None):
        calls.append(len(crops))
        return original(crops, transforms, batch_size)

    monkeypatch.setattr(detector, "points_of_crops", spy)
    faces = detector.detect(group[0], refine=1, face_detector="haar")
    assert calls == [3, 3] and len(faces) == 3
    calls.clear()
    detector.detect(group[0], refine=0, face_detector="haar")
    assert calls == [3]


def test_refine_reframes_on_the_first_prediction(detector, small_photo, monkeypatch):
    seen = []
    original = detector.points_of_crops

    def spy(crops, transforms, batch_size=None):
        points, confidence = original(crops, transforms, batch_size)
        seen.append((np.array(transforms), points))
        return points, confidence

    monkeypatch.setattr(detector, "points_of_crops", spy)
    detector.detect(small_photo, refine=2, face_detector="haar")
    assert len(seen) == 3
    for (_, points), (transforms, _) in zip(seen[:-1], seen[1:]):
        # each pass frames the previous pass's points canonically (centroid -> 48, RMS -> 26)
        crop = apply_affine(transforms[0], points[0].astype(np.float64))
        c, rms = face_geometry(crop)
        np.testing.assert_allclose(c, [CANONICAL_CENTER] * 2, atol=1e-3)
        assert rms == pytest.approx(CANONICAL_RMS, rel=1e-4)
    with pytest.raises(ValueError):
        detector.detect(small_photo, refine=-1, face_detector="haar")


def test_no_face_gives_an_empty_list(detector):
    assert detector.detect(np.zeros((200, 300), np.uint8), face_detector="haar") == []
    assert detector.detect(np.full((120, 160, 3), 128, np.uint8), face_detector="haar") == []
    smooth = cv2.resize(np.random.default_rng(0).uniform(0, 255, (6, 8)).astype(np.float32), (320, 240))
    assert detector.detect(smooth.clip(0, 255).astype(np.uint8), face_detector="haar") == []


def test_tiny_images(detector):
    for side in (8, 16, 23, 30):
        assert detector.detect(np.full((side, side), 100, np.uint8), face_detector="haar") == []
    with pytest.raises(InvalidImageError):
        detector.detect(np.zeros((5, 5), np.uint8), face_detector="haar")
    with pytest.raises(FileNotFoundError):
        detector.detect("no/such/photo.jpg", face_detector="haar")


def test_grayscale_float_and_rgb_inputs_agree(detector, small_photo):
    rgb = detector.detect(small_photo, face_detector="haar")
    import torch
    from PIL import Image

    gray_u8 = cv2.cvtColor(small_photo, cv2.COLOR_RGB2GRAY)
    tensor = torch.from_numpy(small_photo).permute(2, 0, 1).float() / 255.0  # (C, H, W), as torchvision has it
    for other in (gray_u8, gray_u8.astype(np.float32) / 255.0, gray_u8[:, :, None], Image.fromarray(small_photo), tensor):
        faces = detector.detect(other, face_detector="haar")
        assert len(faces) == len(rgb) == 1
        np.testing.assert_allclose(faces[0].box, rgb[0].box, atol=1.0)
        np.testing.assert_allclose(faces[0].points, rgb[0].points, atol=0.5)


def test_huge_photo(detector, small_photo):
    # A 4000x1200 photo with the portrait enlarged 4x (a face of about 480 px) at x = 2500.
    huge = np.full((1200, 4000, 3), 120, np.uint8)
    big = cv2.resize(small_photo, (1024, 1200), interpolation=cv2.INTER_LINEAR)
    huge[:, 2500:3524] = big
    small_faces = detector.detect(small_photo, refine=0, face_detector="haar")
    faces = detector.detect(huge, refine=0, face_detector="haar")  # the face detector sees it shrunk to max_side, the network does not
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
    upright = detector.detect(small_photo, face_detector="haar")[0]
    tilted_10 = cv2.warpAffine(small_photo, similarity_transform(centre, 1.0, 10, centre), (w, h),
                               borderMode=cv2.BORDER_REPLICATE)
    assert len(detector.detect(tilted_10, face_detector="haar")) == 1  # the cascade tolerates small tilts
    m = similarity_transform(centre, 1.0, 30, centre)
    tilted = cv2.warpAffine(small_photo, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    assert detector.detect(tilted, face_detector="haar") == []  # too tilted for the upright cascade...
    faces = detector.detect(tilted, face_detector=HaarFaceDetector(angles=(-30, 0, 30)), refine=0)
    assert len(faces) == 1 and faces[0].angle == -30  # ...found by searching rotated copies (the angle unrefined)
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
    faces = detector.detect(group[0], max_faces=1, face_detector="haar")
    assert len(faces) == 1 and faces[0].box == group_faces[0].box  # the largest
    assert detector.detect(group[0], max_faces=0, face_detector="haar") == []
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="max_faces must be None or an integer >= 0"):
            detector.detect(group[0], max_faces=bad, face_detector="haar")


def test_concurrent_detect_matches_serial(detector, group, small_photo):
    # Threads share the default face detector (one OpenCV cascade).
    photos = [group[0], small_photo] * 12
    serial = [detector.detect(p, refine=0, face_detector="haar") for p in photos]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: detector.detect(p, refine=0, face_detector="haar"), photos))
    assert [len(f) for f in parallel] == [len(f) for f in serial] == [3, 1] * 12
    for got, want in zip(parallel, serial):
        assert [f.box for f in got] == [f.box for f in want]
        np.testing.assert_allclose([f.points for f in got], [f.points for f in want], atol=1e-4)



def test_refine_turns_each_face_upright_on_its_own_points():
    """A face detector's angle only starts the framing: the refine pass frames the face on the
    angle of its predicted points, so a guess 35 degrees off still ends upright, and Face.angle is
    the measured angle."""
    from facekp.geometry import face_angle

    detector = Detector(device="cpu")
    photo = sample_photo()
    upright = detector.detect(photo, face_detector="haar")[0]
    h, w = photo.shape[:2]
    centre = ((w - 1) / 2, (h - 1) / 2)
    m = similarity_transform(centre, 1.0, -40, centre)  # shown turned 40 degrees clockwise
    turned = cv2.warpAffine(photo, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    box = np.array(upright.box).reshape(2, 2).mean(axis=0)
    side = upright.box[2] - upright.box[0]
    c = apply_affine(m, box[None])[0]
    boxes = [[c[0] - side / 2, c[1] - side / 2, c[0] + side / 2, c[1] + side / 2]]

    def guessing(angle):
        return lambda image: (np.array(boxes), np.ones(1), np.array([angle]))

    expected = apply_affine(m, upright.points)
    iod = np.linalg.norm(upright.points[0] - upright.points[1])
    for guess, refine in ((40.0, 1), (5.0, 1), (5.0, 2)):
        (face,) = detector.detect(turned, face_detector=guessing(guess), refine=refine, min_presence=0)
        assert face.angle == pytest.approx(face_angle(face.points))
        assert abs(face.angle - upright.angle - 40) < 8
        assert np.linalg.norm(face.points - expected, axis=1).mean() < 0.08 * iod
    (unrefined,) = detector.detect(turned, face_detector=guessing(5.0), refine=0, min_presence=0)
    assert unrefined.angle == 5.0


def test_refining_from_a_given_first_pass_skips_it_and_gives_the_same_points(detector, small_photo, monkeypatch):
    gray = load_gray(small_photo)
    frames = np.stack([default_calibration().frame(HOPPER_BOX), default_calibration().frame(HOPPER_BOX, 20.0)])
    expected = detector.predict_refined(gray, frames, refine=2)
    first = detector.predict_framed([gray] * 2, frames)
    kept = tuple(v.copy() for v in first)
    calls = []
    original = detector.predict_framed
    monkeypatch.setattr(detector, "predict_framed", lambda g, t, b=None: calls.append(len(g)) or original(g, t, b))
    points, confidence = detector.predict_refined(gray, frames, refine=2, first=first)
    assert calls == [2, 2]  # the two re-framing passes only
    np.testing.assert_array_equal(points, expected[0])
    np.testing.assert_array_equal(confidence, expected[1])
    np.testing.assert_array_equal(first[0], kept[0])  # the given pass is not written over
