"""The Haar face detector (facekp.face_detection): the cascade on the sample portrait, its inputs and
files, and run_face_detector's normalisation of any face detector's answers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import HOPPER_BOX
from facekp.data import sample_photo
from facekp.errors import InvalidImageError
from facekp.face_detection import HaarFaceDetector, run_face_detector


@pytest.fixture(scope="module")
def haar() -> HaarFaceDetector:
    return HaarFaceDetector()


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


def test_run_face_detector_normalises_answers():
    boxes, scores, angles = run_face_detector(lambda im: [[0, 0, 10, 10]], None)
    assert boxes.shape == (1, 4) and scores.tolist() == [1.0] and angles.tolist() == [0.0]
    boxes, scores, angles = run_face_detector(lambda im: ([[0, 0, 10, 10]], [2.0], [15.0]), None)
    assert scores.tolist() == [2.0] and angles.tolist() == [15.0]
    with pytest.raises(ValueError):
        run_face_detector(lambda im: ([[0, 0, 10, 10]], [1.0, 2.0]), None)

