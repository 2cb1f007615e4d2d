"""Coordinate geometry: 2x3 affines, the letterbox and canonical frames, keypoint centroid and
RMS radius, face-box side and centre. One implementation of each, used everywhere.

All transforms are 2x3 float64 matrices ``M`` that map source-image pixel coordinates to
crop pixel coordinates, ``crop = M @ [x, y, 1]``, with the pixel-centre convention on both
sides (the centre of the top-left pixel is (0, 0)), which is also OpenCV's ``warpAffine``.
"""

from __future__ import annotations

import numpy as np

from .keypoints import KEYPOINT_NAMES

_LEFT_EYE = KEYPOINT_NAMES.index("left_eye_center")
_RIGHT_EYE = KEYPOINT_NAMES.index("right_eye_center")
_MOUTH = tuple(KEYPOINT_NAMES.index(n) for n in ("mouth_left_corner", "mouth_right_corner",
                                                   "mouth_center_top_lip", "mouth_center_bottom_lip"))

#: The canonical "Kaggle frame": the 15 keypoints' centroid sits at (48, 48) of the
#: 96x96 crop and their RMS distance from it is 26 px (the Kaggle training mean face).
CANONICAL_SIZE = 96
CANONICAL_CENTER = 48.0
CANONICAL_RMS = 26.0


def letterbox_transform(width: int, height: int, size: int = CANONICAL_SIZE) -> np.ndarray:
    """Scale a ``width x height`` image uniformly to fit ``size x size``, centred.

    The longer side fills the crop; the shorter side is centred and padded by replicating
    the border, so a non-square crop keeps its aspect ratio (no stretching).
    """
    s = size / max(width, height)
    tx = 0.5 * s - 0.5 + 0.5 * (size - width * s)
    ty = 0.5 * s - 0.5 + 0.5 * (size - height * s)
    return np.array([[s, 0.0, tx], [0.0, s, ty]])


def similarity_transform(
    center: tuple[float, float] | np.ndarray,
    scale: float,
    angle_deg: float = 0.0,
    out_center: tuple[float, float] = (CANONICAL_CENTER, CANONICAL_CENTER),
) -> np.ndarray:
    """Map ``center`` to ``out_center``, scaling by ``scale`` and rotating by ``angle_deg``.

    A positive angle rotates the image content counter-clockwise as displayed.
    """
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    rot = np.array([[c, s], [-s, c]])
    t = np.asarray(out_center, dtype=np.float64) - rot @ np.asarray(center, dtype=np.float64)
    return np.hstack([rot, t[:, None]])


def canonical_transform(points: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The similarity without rotation that puts ``points`` (K, 2) into the canonical Kaggle frame."""
    if np.count_nonzero(mask if mask is not None else np.ones(len(points))) < 2:
        raise ValueError("the canonical frame needs at least two visible keypoints")
    center, rms = face_geometry(points, mask)
    return similarity_transform(center, CANONICAL_RMS / rms)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (or a stack of them, ``(..., 2, 3)``)."""
    m = np.asarray(m, dtype=np.float64)
    a_inv = np.linalg.inv(m[..., :2, :2])
    t = -np.einsum("...ij,...j->...i", a_inv, m[..., :, 2])
    return np.concatenate([a_inv, t[..., None]], axis=-1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine that applies ``inner`` first, then ``outer``."""
    out = outer[:, :2] @ inner
    out[:, 2] += outer[:, 2]
    return out


def turn_frame(m: np.ndarray, angle_deg: float) -> np.ndarray:
    """The frame ``m`` (2x3, image -> canonical crop) turned by ``angle_deg`` about the crop's centre:
    the same face position and size, the crop's content rotated (counter-clockwise as displayed)."""
    c = (CANONICAL_CENTER, CANONICAL_CENTER)
    return compose_affine(similarity_transform(c, 1.0, angle_deg, c), m)


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply 2x3 ``m`` (or ``(N, 2, 3)``) to points ``(..., K, 2)``; keeps the points' dtype."""
    m = np.asarray(m, dtype=np.float64)
    pts = np.asarray(points)
    out = np.einsum("...ij,...kj->...ki", m[..., :2], pts.astype(np.float64)) + m[..., None, :, 2]
    return out.astype(pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float32)


def face_geometry(points: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Centroid (x, y) and RMS radius (px) of the (visible) keypoints ``(K, 2)``: what the
    canonical frame normalises."""
    pts = np.asarray(points, dtype=np.float64)
    if mask is not None:
        pts = pts[np.asarray(mask, bool)]
    c = pts.mean(axis=0)
    return c, float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()))


def face_angle(points: np.ndarray) -> float:
    """The in-plane angle of a face from its 15 keypoints ``(15, 2)`` (the order of
    :data:`facekp.keypoints.KEYPOINT_NAMES`, image pixels): the rotation, degrees counter-clockwise as
    displayed, in (-180, 180], that turns it upright (:attr:`facekp.Face.angle`'s convention).

    It is the direction of the eye line (right eye -> left eye, image left -> right when upright)
    plus the eyes-to-mouth direction turned by 90 degrees, so a face in profile, whose eyes nearly
    coincide, still has a well-defined "up". Upright faces have angle 0; a face shown turned
    clockwise by ``a`` has angle ``a``.
    """
    pts = np.asarray(points, dtype=np.float64)
    eyes = pts[_LEFT_EYE] - pts[_RIGHT_EYE]
    down = pts[list(_MOUTH)].mean(axis=0) - 0.5 * (pts[_LEFT_EYE] + pts[_RIGHT_EYE])
    v = eyes + np.array([down[1], -down[0]])
    return float(np.degrees(np.arctan2(v[1], v[0])))


def box_side_centre(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Side ``((x1 - x0) + (y1 - y0)) / 2`` and centre ``(x, y)`` of ``x0, y0, x1, y1`` boxes,
    ``(4,)`` or ``(N, 4)`` in pixels: ``side`` is a float array of shape ``()`` or ``(N,)``,
    ``centre`` ``(2,)`` or ``(N, 2)``."""
    b = np.asarray(boxes, dtype=np.float64)
    side = 0.5 * ((b[..., 2] - b[..., 0]) + (b[..., 3] - b[..., 1]))
    return side, 0.5 * (b[..., :2] + b[..., 2:])


def frame_scale(m: np.ndarray) -> float:
    """The uniform scale of a similarity transform ``m`` (crop px per image px)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(m, dtype=np.float64)[:2, :2]))))
