"""Random geometric and photometric augmentation around the canonical frame."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..keypoints import FLIP_INDEX
from ..geometry import CANONICAL_CENTER, CANONICAL_SIZE, apply_affine, compose_affine, similarity_transform
from ..preprocess import warp

#: Left-right mirror of the 96x96 crop, in pixel-centre coordinates.
MIRROR = np.array([[-1.0, 0.0, CANONICAL_SIZE - 1.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class Perturbation:
    """Ranges of a random similarity applied to the canonical frame (uniform in +/- each)."""

    scale: float = 0.0  # relative, e.g. 0.13 for +/-13%
    rotation: float = 0.0  # degrees
    shift: float = 0.0  # crop pixels, per axis

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """2x3 affine acting on canonical-crop coordinates."""
        s = 1.0 + rng.uniform(-self.scale, self.scale)
        a = rng.uniform(-self.rotation, self.rotation)
        t = rng.uniform(-self.shift, self.shift, size=2)
        c = (CANONICAL_CENTER, CANONICAL_CENTER)
        return similarity_transform(c, s, a, out_center=(c[0] + t[0], c[1] + t[1]))


#: Perturbed-crop evaluation protocol (issue #3): scale +/-13%, rotation +/-15 deg, shift +/-6 px.
EVAL_PERTURBATION = Perturbation(scale=0.13, rotation=15.0, shift=6.0)


@dataclass(frozen=True)
class Augmenter:
    """Training augmentation. Geometry is wider than the perturbed evaluation, so crops from a
    face detector, which are never perfectly framed, stay in distribution."""

    geometry: Perturbation = Perturbation(scale=0.2, rotation=25.0, shift=9.0)
    flip: bool = True
    mirror_offsets: Mapping[str, float] = field(default_factory=dict)  # subset -> px, see make_crop
    brightness: float = 0.25
    contrast: float = 0.35
    blur_p: float = 0.25
    noise_p: float = 0.25
    occlusion_p: float = 0.3
    border_cut_p: float = 0.0  # faces cut by their photo's border (cut_at_border)

    def transform(self, rng: np.random.Generator) -> np.ndarray:
        """Random 2x3 affine on canonical coordinates, mirrored half of the time when ``flip``."""
        m = self.geometry.sample(rng)
        return compose_affine(MIRROR, m) if self.flip and rng.random() < 0.5 else m

    def photometric(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random lighting, blur, noise and occlusion on a float crop in [0, 1]."""
        gain = 1.0 + rng.uniform(-self.contrast, self.contrast)
        crop = (crop - crop.mean()) * gain + crop.mean() + rng.uniform(-self.brightness, self.brightness)
        crop = np.clip(crop, 0.0, 1.0) ** np.exp(rng.uniform(-0.4, 0.4))  # gamma
        if rng.random() < self.blur_p:
            crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.5, 1.5))
        if rng.random() < self.noise_p:
            crop = crop + rng.normal(0.0, rng.uniform(0.01, 0.06), crop.shape).astype(np.float32)
        if rng.random() < self.occlusion_p:
            w, h = rng.integers(10, 40, size=2)
            x, y = rng.integers(0, CANONICAL_SIZE - w), rng.integers(0, CANONICAL_SIZE - h)
            crop[y : y + h, x : x + w] = rng.uniform(0.0, 1.0)
        return np.clip(crop, 0.0, 1.0).astype(np.float32)


def make_crop(
    image: np.ndarray,
    points: np.ndarray,
    mask: np.ndarray,
    frame: np.ndarray,
    jitter: np.ndarray | None = None,
    mirror_offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Warp a sample into a 96x96 crop through ``jitter @ frame`` and move its points along.

    Returns the float32 crop in [0, 1], the (15, 2) points in crop pixels and the mask, with
    points pushed outside the crop masked out. When the transform mirrors the image, left and
    right keypoints swap names, so the subject's left eye stays on the crop's right.

    ``mirror_offset`` is the annotation's systematic x offset (canonical px, + = towards the
    image's right), as measured by :func:`facekp.train.evaluate.mirror_offsets`. A mirror turns
    +offset into -offset; the points of mirrored crops are moved back by twice the offset, so
    both orientations teach the network the same labelling convention.
    """
    m = frame if jitter is None else compose_affine(jitter, frame)
    src = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    crop = warp(src, m, CANONICAL_SIZE)
    mirrored = np.linalg.det(m[:, :2]) < 0
    points = points.astype(np.float32)
    if mirrored and mirror_offset:
        # The shift is (-2 offset, 0) in the canonical frame before the jitter; in image pixels:
        points = points + np.linalg.solve(frame[:, :2], [-2.0 * mirror_offset, 0.0]).astype(np.float32)
    pts = apply_affine(m, points)
    mask = mask.copy()
    if mirrored:
        pts, mask = pts[list(FLIP_INDEX)], mask[list(FLIP_INDEX)]
    inside = ((pts >= -0.5) & (pts <= CANONICAL_SIZE - 0.5)).all(axis=1)
    return crop, pts, mask & inside


def cut_at_border(image: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``image`` that ends along a random side so that 15-45% of the face's extent (its points'
    box grown by half its size) lies beyond that border: the pixels past it repeat the border's, as
    :func:`facekp.preprocess.warp` fills a crop that reaches past a photo's edge. Coordinates do not change.

    The points keep their labels: the network learns to place the hidden ones from the rest of the
    face, as it must on a face at the edge of a photo.
    """
    out = image.copy()
    lo, hi = points.min(axis=0), points.max(axis=0)
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
    axis = side // 2
    view = out if axis == 1 else out.T  # rows along axis 0 of the view
    n = view.shape[0]
    beyond = rng.uniform(0.15, 0.45) * (hi - lo)[axis]
    if side % 2 == 0:  # the photo starts at row `cut`
        cut = int(np.clip(np.ceil(lo[axis] + beyond), 1, n - 1))
        view[:cut] = view[cut]
    else:  # the photo ends before row `cut`
        cut = int(np.clip(np.floor(hi[axis] - beyond), 1, n - 1))
        view[cut:] = view[cut - 1]
    return out
