"""Coordinate geometry (facekp.geometry): affines, the letterbox and canonical frames, keypoint
centroid and RMS radius, box side and centre. Pixel-centre convention throughout."""

from __future__ import annotations

import numpy as np
import pytest

from facekp.geometry import (
    CANONICAL_CENTER,
    CANONICAL_RMS,
    apply_affine,
    box_side_centre,
    canonical_transform,
    compose_affine,
    face_angle,
    face_geometry,
    frame_scale,
    invert_affine,
    letterbox_transform,
    similarity_transform,
    turn_frame,
)
from synthetic import MEAN_FACE


@pytest.mark.parametrize("width, height", [(96, 96), (40, 40), (200, 120), (37, 91), (1000, 13)])
def test_letterbox_round_trip_is_exact(width, height):
    m = letterbox_transform(width, height, 96)
    rng = np.random.default_rng(width * height)
    pts = rng.uniform(-0.5, [width - 0.5, height - 0.5], size=(15, 2))
    back = apply_affine(invert_affine(m), apply_affine(m, pts))
    assert np.abs(back - pts).max() < 1e-4
    # Uniform scale (no stretching), longer side spanning the crop edge to edge, content centred.
    assert m[0, 0] == m[1, 1] and m[0, 1] == m[1, 0] == 0
    corners = apply_affine(m, np.array([[-0.5, -0.5], [width - 0.5, height - 0.5]]))
    np.testing.assert_allclose(corners.mean(axis=0), [47.5, 47.5], atol=1e-9)
    long_axis = 0 if width >= height else 1
    np.testing.assert_allclose(corners[:, long_axis], [-0.5, 95.5], atol=1e-9)


def test_letterbox_of_resized_crop_is_consistent():
    # Resizing a W x H crop by 2.5 maps pixel x to (x + 0.5) * 2.5 - 0.5 (pixel-centre convention,
    # as cv2.resize does). Framing the big crop after that resize must equal framing the small one,
    # so predictions on the big crop are exactly the small crop's predictions, scaled.
    for w, h in [(40, 40), (40, 32), (36, 48)]:
        resize = np.array([[2.5, 0, 0.75], [0, 2.5, 0.75]])
        small = letterbox_transform(w, h)
        big = letterbox_transform(round(2.5 * w), round(2.5 * h))
        np.testing.assert_allclose(compose_affine(big, resize), small, atol=1e-12)
        pts = np.random.default_rng(w).uniform(0, 95, size=(15, 2))  # network output in crop pixels
        p_small = apply_affine(invert_affine(small), pts)
        p_big = apply_affine(invert_affine(big), pts)
        np.testing.assert_allclose(p_big, (p_small + 0.5) * 2.5 - 0.5, atol=1e-9)


def test_affine_helpers_on_stacks():
    rng = np.random.default_rng(0)
    ms = np.concatenate([rng.normal(size=(4, 2, 2)) + 2 * np.eye(2), rng.normal(size=(4, 2, 1))], axis=-1)
    pts = rng.normal(size=(4, 15, 2))
    round_trip = apply_affine(invert_affine(ms), apply_affine(ms, pts))
    np.testing.assert_allclose(round_trip, pts, atol=1e-9)
    composed = compose_affine(ms[0], ms[1])
    np.testing.assert_allclose(apply_affine(composed, pts[0]), apply_affine(ms[0], apply_affine(ms[1], pts[0])), atol=1e-9)
    assert apply_affine(ms[0], pts[0].astype(np.float32)).dtype == np.float32


def test_canonical_transform_puts_the_centroid_and_rms_radius_in_place():
    rng = np.random.default_rng(3)
    points = rng.uniform(100, 300, size=(15, 2))
    mask = np.ones(15, bool)
    mask[[2, 9]] = False
    m = canonical_transform(points, mask)
    centre, rms = face_geometry(apply_affine(m, points), mask)
    np.testing.assert_allclose(centre, [CANONICAL_CENTER] * 2, atol=1e-9)
    assert rms == pytest.approx(CANONICAL_RMS, abs=1e-9)
    assert frame_scale(m) == pytest.approx(CANONICAL_RMS / face_geometry(points, mask)[1], rel=1e-12)
    with pytest.raises(ValueError, match="two visible keypoints"):
        canonical_transform(points, np.eye(15, dtype=bool)[0])


def test_face_geometry_of_a_known_square():
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0], [50.0, 50.0]])
    centre, rms = face_geometry(square, np.array([1, 1, 1, 1, 0], bool))  # the outlier is masked out
    np.testing.assert_allclose(centre, [1.0, 1.0])
    assert rms == pytest.approx(np.sqrt(2.0))


def test_box_side_and_centre_of_one_box_and_of_a_stack():
    side, centre = box_side_centre((10.0, 20.0, 50.0, 80.0))
    assert side.shape == () and float(side) == 50.0  # (40 + 60) / 2
    np.testing.assert_allclose(centre, [30.0, 50.0])
    sides, centres = box_side_centre(np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 4.0, 2.0]]))
    np.testing.assert_allclose(sides, [50.0, 3.0])
    np.testing.assert_allclose(centres, [[30.0, 50.0], [2.0, 1.0]])


def test_similarity_transform_maps_the_centre_and_turns_counter_clockwise():
    m = similarity_transform((10.0, 20.0), 2.0, 90.0, out_center=(48.0, 48.0))
    np.testing.assert_allclose(apply_affine(m, np.array([[10.0, 20.0]])), [[48.0, 48.0]], atol=1e-12)
    # One pixel to the right of the centre, turned 90 degrees counter-clockwise as displayed (y down), scaled 2x: 2 px up.
    np.testing.assert_allclose(apply_affine(m, np.array([[11.0, 20.0]])), [[48.0, 46.0]], atol=1e-12)
    assert frame_scale(m) == pytest.approx(2.0)


def test_turn_frame_keeps_the_face_centre_and_size_and_turns_its_angle():
    points = MEAN_FACE.astype(np.float64) * 2.0 + np.array([100.0, 60.0])  # a face in some photo
    m = canonical_transform(points)
    for angle in (90.0, 180.0, -30.0):
        turned = apply_affine(turn_frame(m, angle), points)
        np.testing.assert_allclose(turned.mean(axis=0), (CANONICAL_CENTER, CANONICAL_CENTER), atol=1e-9)
        np.testing.assert_allclose(np.linalg.norm(turned - turned.mean(0), axis=1),
                                   np.linalg.norm(apply_affine(m, points) - CANONICAL_CENTER, axis=1), atol=1e-9)
        # The content turns counter-clockwise as displayed: the face's angle (clockwise) drops by ``angle``.
        assert (face_angle(turned) - face_angle(apply_affine(m, points)) + angle + 180) % 360 - 180 == pytest.approx(0, abs=1e-6)
