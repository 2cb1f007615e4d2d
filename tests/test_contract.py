"""The input contract, tested by generation (Hypothesis): every input gives finite points of the
right shape, or one of the documented exceptions. Nothing else: no other exception type, no NaN.

Profiles: ``ci`` (the default: a few hundred examples in all, well under a minute) and ``fuzz``
(``FACEKP_HYPOTHESIS_PROFILE=fuzz``: thousands; ``benchmarks/fuzz.py`` runs a larger generated set
with per-input timeouts and counts).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from facekp import BoxCalibration, InvalidImageError, draw
from facekp.config import DetectorConfig

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("FACEKP_HYPOTHESIS_PROFILE", "ci"))

DTYPES = st.sampled_from([np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64,
                          np.float16, np.float32, np.float64, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=24) | st.sampled_from(
    [(40, 30), (30, 40, 3), (24, 24, 4), (3, 28, 20), (2, 96, 96), (20, 20, 1)])
WILD = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from(
    [0.0, 1.0, -1.0, 1e-300, 1e300, 1e-320, 1e9, -1e9, 0.5])
PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa", "La",
             "I;16", "I;16B", "I;16L"]


@st.composite
def arrays(draw_):
    dtype, shape = draw_(DTYPES), draw_(SHAPES)
    if np.dtype(dtype).kind in "fc":
        return draw_(hnp.arrays(dtype, shape, elements=st.floats(-2, 3, width=16) | st.sampled_from([np.nan, np.inf, 0.5])))
    return draw_(hnp.arrays(dtype, shape))


def _finite_points(points, n: int | None = None) -> None:
    points = np.asarray(points)
    assert points.dtype == np.float32 and points.shape[-2:] == (15, 2) and np.isfinite(points).all()
    if n is not None:
        assert points.shape[0] == n


@given(arrays())
def test_any_array_gives_finite_points_or_invalid_image_error(detector, arr):
    try:
        points = detector.predict(arr)
    except InvalidImageError:
        return
    _finite_points(points)


@given(arrays())
def test_any_tensor_gives_finite_points_or_invalid_image_error(detector, arr):
    try:
        tensor = torch.from_numpy(arr)
    except TypeError:  # a dtype torch has no tensor type for (uint64 on old torch)
        return
    try:
        points = detector.predict(tensor)
    except InvalidImageError:
        return
    _finite_points(points)


@given(arrays())
def test_any_stack_through_predict_batch_gives_one_row_per_image_or_invalid_image_error(detector, arr):
    try:
        points = detector.predict_batch(arr)
    except InvalidImageError:
        return
    _finite_points(points, len(arr))


@given(st.sampled_from(PIL_MODES), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_every_pil_mode_gives_finite_points_or_invalid_image_error(detector, mode, w, h, seed):
    rng = np.random.default_rng(seed)
    im = Image.frombytes(mode, (w, h), rng.integers(0, 256, len(Image.new(mode, (w, h)).tobytes()), np.uint8).tobytes())
    try:
        points = detector.predict(im)
    except InvalidImageError:
        return
    _finite_points(points)
    assert draw(im, points).shape == (h, w, 3)


@st.composite
def boxes(draw_):
    n = draw_(st.integers(0, 4))
    cols = draw_(st.sampled_from([4, 5, 3]))
    return np.array(draw_(st.lists(st.lists(WILD | st.floats(-50, 250), min_size=cols, max_size=cols), min_size=n,
                                   max_size=n)), dtype=np.float64).reshape(n, cols)


@given(boxes())
def test_any_boxes_give_finite_faces_or_value_error(detector, photo, box):
    try:
        faces = detector.detect(photo, boxes=box)
    except ValueError as exc:
        assert str(exc)  # a message that says what was wrong
        return
    assert len(faces) == len(box)
    for f in faces:
        _finite_points(f.points)
        assert np.isfinite(f.confidence).all() and np.isfinite(f.box).all() and math.isfinite(f.score)


@given(WILD, st.lists(WILD, min_size=0, max_size=3))
def test_any_calibration_gives_finite_points_or_value_error(detector, photo, scale, offset):
    try:
        faces = detector.detect(photo, boxes=[[40, 30, 100, 90]], calibration={"scale": scale, "offset": offset})
    except ValueError:
        return
    _finite_points(faces[0].points)


@given(st.lists(WILD, min_size=1, max_size=2), st.floats(-1e6, 1e6) | WILD)
def test_any_face_detector_angles_give_finite_points_or_value_error(detector, photo, angles, shift):
    def fd(image):
        b = np.array([[40.0, 30, 100, 90], [40 + shift, 30, 100 + abs(shift), 90]])[: len(angles)]
        return b, np.ones(len(b)), np.array(angles)

    try:
        faces = detector.detect(photo, face_detector=fd)
    except ValueError:
        return
    for f in faces:
        _finite_points(f.points)


HOURGLASS_FIELDS = ["num_stacks", "depth", "channels", "heatmap_stride", "input_size", "num_keypoints", "blocks"]
ANY_VALUE = st.integers(-2**40, 2**40) | st.sampled_from([2**31, 10**6, 96000, 0, True]) | WILD | st.text(max_size=3) | st.none()


@given(st.dictionaries(st.sampled_from(HOURGLASS_FIELDS + ["bogus"]), ANY_VALUE, max_size=4), WILD | st.text(max_size=2))
def test_any_config_is_a_config_or_value_or_type_error_without_building_anything(fields, sigma):
    data = DetectorConfig().to_dict()
    data["hourglass"] = data["hourglass"] | fields
    data["sigma"] = sigma
    try:
        config = DetectorConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        assert str(exc)
        return
    assert math.isfinite(config.sigma) and config.hourglass.num_stacks <= 16 and config.hourglass.channels <= 1024


@given(st.lists(st.lists(WILD, min_size=2, max_size=2), min_size=15, max_size=15), WILD | st.none())
def test_draw_takes_any_points_or_says_why_not(photo, points, radius):
    try:
        out = draw(photo, np.array(points), radius=radius)
    except ValueError:
        return
    assert out.shape == (*photo.shape, 3) and out.dtype == np.uint8


@given(WILD, st.lists(WILD, min_size=2, max_size=2))
def test_box_calibration_frames_are_finite_or_refused(scale, offset):
    try:
        calib = BoxCalibration(scale, tuple(offset))
    except ValueError:
        return
    assert np.isfinite(calib.frame((0, 0, 50, 50), 30.0)).all()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)

