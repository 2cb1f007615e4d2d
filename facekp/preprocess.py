"""Affine framing of faces into the network's square grayscale input, and back.

All transforms are 2x3 float64 matrices ``M`` that map source-image pixel coordinates to
crop pixel coordinates, ``crop = M @ [x, y, 1]``, with the pixel-centre convention on both
sides (the centre of the top-left pixel is (0, 0)), which is also OpenCV's ``warpAffine``.
"""

from __future__ import annotations

import cv2
import numpy as np

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
    pts = np.asarray(points, dtype=np.float64)
    if mask is not None:
        pts = pts[np.asarray(mask, dtype=bool)]
    if len(pts) < 2:
        raise ValueError("the canonical frame needs at least two visible keypoints")
    center = pts.mean(axis=0)
    rms = np.sqrt(((pts - center) ** 2).sum(axis=1).mean())
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


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply 2x3 ``m`` (or ``(N, 2, 3)``) to points ``(..., K, 2)``; keeps the points' dtype."""
    m = np.asarray(m, dtype=np.float64)
    pts = np.asarray(points)
    out = np.einsum("...ij,...kj->...ki", m[..., :2], pts.astype(np.float64)) + m[..., None, :, 2]
    return out.astype(pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float32)


def warp(image: np.ndarray, m: np.ndarray, size: int = CANONICAL_SIZE, out: np.ndarray | None = None) -> np.ndarray:
    """Resample ``image`` (H, W) float32 through ``m`` into a ``size x size`` crop.

    When ``m`` shrinks by more than 2x, the region that feeds the crop is first reduced with
    area averaging (no aliasing), then warped; the composed transform is still exactly ``m``.
    Pixels outside the image repeat the border. ``out``: a C-contiguous ``(size, size)`` float32
    array to write the crop into (e.g. a row of a batch), instead of a new one.
    """
    m = np.asarray(m, dtype=np.float64)
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.5:
        h, w = image.shape[:2]
        corners = apply_affine(invert_affine(m), np.array([[-1, -1], [size, -1], [-1, size], [size, size]], float))
        x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, [w - 1, h - 1])
        x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 1, [x0 + 1, y0 + 1], [w, h])
        region = image[y0:y1, x0:x1]
        rw = max(1, int(round((x1 - x0) * scale * 1.5)))
        rh = max(1, int(round((y1 - y0) * scale * 1.5)))
        small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        # region pixel (x, y) -> small pixel ((x + 0.5) * rw / W - 0.5, ...), after the crop offset.
        sx, sy = rw / (x1 - x0), rh / (y1 - y0)
        shrink = np.array([[sx, 0, 0.5 * sx - 0.5 - sx * x0], [0, sy, 0.5 * sy - 0.5 - sy * y0]])
        m = compose_affine(m, invert_affine(shrink))
        image = small
    crop = cv2.warpAffine(image, m, (size, size), dst=out, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out is not None and crop is not out:  # OpenCV allocates a new array where ``out`` does not fit
        out[...] = crop
        return out
    return crop


def standardize(crops: np.ndarray) -> np.ndarray:
    """Per-crop zero mean, unit variance over the last two axes (robust to lighting)."""
    crops = np.asarray(crops, dtype=np.float32)
    centred = crops - crops.mean(axis=(-2, -1), keepdims=True)
    # The variance as one fused multiply-sum: half the time of np.std, which centres the data again.
    var = np.einsum("...ij,...ij->...", centred, centred)[..., None, None] / (crops.shape[-2] * crops.shape[-1])
    return centred / np.maximum(np.sqrt(var), 1e-3)
