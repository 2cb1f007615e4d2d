"""``color="bgr"``: OpenCV's channel order, on a real image read with ``cv2.imread`` and the bundled model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facekp import Detector, draw
from facekp.data import sample_photo_path

CROP = Path(__file__).resolve().parents[1] / "examples" / "face_crop.jpg"


@pytest.fixture(scope="module")
def bundled() -> Detector:
    return Detector(device="cpu")


@pytest.fixture(scope="module")
def crop_bgr() -> np.ndarray:
    bgr = cv2.imread(str(CROP), cv2.IMREAD_COLOR)
    assert bgr is not None and bgr.shape[2] == 3
    return bgr


def test_predict_bgr_matches_the_same_pixels_in_rgb(bundled, crop_bgr):
    rgb = np.ascontiguousarray(crop_bgr[:, :, ::-1])
    got = bundled.predict(crop_bgr, color="bgr")
    np.testing.assert_array_equal(got, bundled.predict(rgb))  # the same pixels, the same gray image, bit for bit
    # The same pixels, decoded by OpenCV instead of PIL: the same face, to well under a pixel.
    assert np.abs(got - bundled.predict(CROP)).max() < 0.25
    # Taken as RGB, the swapped channels give another gray image and other points: the option matters.
    assert np.abs(bundled.predict(crop_bgr) - got).max() > 1e-3


def test_predict_batch_and_tensors_take_bgr(bundled, crop_bgr):
    rgb = np.ascontiguousarray(crop_bgr[:, :, ::-1])
    want = bundled.predict_batch([rgb, rgb[::2, ::2]])
    got = bundled.predict_batch([crop_bgr, crop_bgr[::2, ::2]], color="bgr")
    np.testing.assert_array_equal(got, want)
    chw = torch.from_numpy(np.ascontiguousarray(crop_bgr.transpose(2, 0, 1)))
    # One crop against a batch of two: the network's float sums may differ in the last bits.
    np.testing.assert_allclose(bundled.predict(chw, color="bgr"), want[0], atol=1e-3)


def test_detect_and_draw_take_bgr(bundled):
    bgr = cv2.imread(str(sample_photo_path()), cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    faces = bundled.detect(bgr, color="bgr")
    want = bundled.detect(rgb)
    assert len(faces) == len(want) == 1
    np.testing.assert_array_equal(faces[0].points, want[0].points)
    assert faces[0].box == want[0].box  # the Haar cascade sees the same uint8 gray image
    drawn = draw(bgr, faces, color="bgr")  # BGR in, BGR out: ready for cv2.imwrite
    np.testing.assert_array_equal(drawn, draw(rgb, faces)[:, :, ::-1])
    untouched = np.all(drawn == bgr, axis=2)
    assert 0.5 < untouched.mean() < 1.0  # the drawing changed some pixels, and left the photo's colours as read


def test_unknown_colour_order_is_refused(bundled, crop_bgr):
    for call in (lambda: bundled.predict(crop_bgr, color="BGRA"), lambda: bundled.predict_batch([crop_bgr], color="hsv"),
                 lambda: bundled.detect(crop_bgr, color=None), lambda: draw(crop_bgr, np.zeros((15, 2)), color="gbr")):
        with pytest.raises(ValueError, match="color must be 'rgb' or 'bgr'"):
            call()
