"""The crop builder: face images framed by 2x3 affines into the network's square input.

:func:`frame_crops` resamples each image through its transform (image -> crop pixels, see
:mod:`facekp.geometry`) into an ``(N, S, S)`` float32 batch in [0, 1]; :func:`network_input`
normalizes crops as a model's ``DetectorConfig.normalization`` says. :class:`facekp.Detector`,
int8 calibration and training evaluation all build their network input here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from .geometry import CANONICAL_SIZE, apply_affine, compose_affine, frame_scale, invert_affine, letterbox_transform


def warp(image: np.ndarray, m: np.ndarray, size: int = CANONICAL_SIZE, out: np.ndarray | None = None) -> np.ndarray:
    """Resample ``image`` (H, W) float32 through ``m`` into a ``size x size`` crop.

    When ``m`` shrinks by more than 2x, the region that feeds the crop is first reduced with
    area averaging (no aliasing), then warped; the composed transform is still exactly ``m``.
    Pixels outside the image repeat the border. ``out``: a C-contiguous ``(size, size)`` float32
    array to write the crop into (e.g. a row of a batch), instead of a new one.
    """
    m = np.asarray(m, dtype=np.float64)
    scale = frame_scale(m)
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


#: ``DetectorConfig.normalization`` name -> the function that turns (..., S, S) crops in [0, 1] into network input.
NORMALIZATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"standardize": standardize}


def normalize(crops: np.ndarray, normalization: str = "standardize") -> np.ndarray:
    """``crops`` (..., S, S) in [0, 1] normalized as ``normalization`` (a :data:`NORMALIZATIONS` key) says."""
    try:
        fn = NORMALIZATIONS[normalization]
    except KeyError:
        raise ValueError(f"unknown normalization {normalization!r}; expected one of {sorted(NORMALIZATIONS)}") from None
    return fn(crops)


def frame_crops(grays: Sequence[np.ndarray], transforms: np.ndarray, size: int = CANONICAL_SIZE) -> np.ndarray:
    """``grays[i]`` ((H, W) float32 in [0, 1]) warped through ``transforms[i]`` (2x3, image -> crop)
    into one ``(N, size, size)`` float32 batch."""
    if len(grays) != len(transforms):
        raise ValueError(f"got {len(grays)} images but {len(transforms)} transforms; expected one per image")
    crops = np.empty((len(grays), size, size), np.float32)
    for gray, m, crop in zip(grays, transforms, crops):
        warp(gray, m, size, out=crop)  # straight into the batch: no per-crop array, no stack copy
    return crops


def letterbox_transforms(grays: Sequence[np.ndarray], size: int = CANONICAL_SIZE) -> np.ndarray:
    """``(N, 2, 3)``: the letterbox of each (H, W) image into ``size x size`` (:func:`~facekp.geometry.letterbox_transform`)."""
    if not len(grays):
        return np.empty((0, 2, 3))
    return np.stack([letterbox_transform(g.shape[1], g.shape[0], size) for g in grays])


def network_input(crops: np.ndarray, normalization: str = "standardize") -> np.ndarray:
    """``(N, S, S)`` crops in [0, 1] -> the network's ``(N, 1, S, S)`` float32 input."""
    return normalize(crops, normalization)[:, None]
