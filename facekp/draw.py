"""Annotated copies of images: keypoints, their names and face boxes."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .images import ImageInput, load_rgb
from .keypoints import KEYPOINT_NAMES

# One colour per facial part (RGB): eyes, eyebrows, nose, mouth.
_PART_COLOURS = {"eye": (0, 200, 255), "eyebrow": (255, 160, 0), "nose": (80, 255, 80), "mouth": (255, 60, 120)}


def _colour(name: str) -> tuple[int, int, int]:
    for part in ("eyebrow", "eye", "nose", "mouth"):
        if name.startswith(part) or f"_{part}" in name:
            return _PART_COLOURS[part]
    return (255, 255, 255)


def draw(
    image: ImageInput,
    points_or_faces,
    names: bool = False,
    boxes: bool = True,
    radius: float | None = None,
    color: str = "rgb",
) -> np.ndarray:
    """Return a uint8 copy of ``image`` with keypoints drawn (the input is not modified), in RGB
    order, or BGR with ``color="bgr"``.

    Args:
        image: anything :meth:`facekp.Detector.predict` accepts.
        points_or_faces: a ``(15, 2)`` array, an ``(N, 15, 2)`` array, a face or a list of faces
            from :meth:`facekp.Detector.detect` (their boxes are drawn too).
        names: write each keypoint's name beside it.
        boxes: draw face boxes when faces are given.
        radius: dot radius in pixels, >= 0, rounded to whole pixels (default: scaled to each face's box when faces are
            given, else to the image).
        color: ``"rgb"`` or ``"bgr"``: the channel order of a colour array or tensor ``image``
            and of the copy returned (``"bgr"`` for OpenCV's ``cv2.imread`` / ``cv2.imwrite``).
    """
    if radius is not None and radius < 0:
        raise ValueError(f"radius must be >= 0 pixels (or None for the default), got {radius}")
    canvas = load_rgb(image, color).copy()
    h, w = canvas.shape[:2]
    faces = _as_faces(points_or_faces)
    r_image = max(1, round(min(h, w) / 150)) if radius is None else round(radius)  # whole pixels for cv2
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px
    for box, pts in faces:
        r = r_image
        if box is not None and radius is None and np.isfinite(box).all():
            r = max(1, round(0.5 * ((box[2] - box[0]) + (box[3] - box[1])) / 55))  # dots follow the face's size
        if box is not None and boxes and np.isfinite(box).all():
            # Box edges are pixel-centre coordinates; cv2 draws lines centred on pixel centres.
            x0, y0, x1, y1 = (int(round(v * (1 << shift))) for v in box)
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 0), max(1, r // 2), cv2.LINE_AA, shift)
        for name, (x, y) in zip(KEYPOINT_NAMES, pts):
            if not np.isfinite([x, y]).all():
                continue
            centre = (int(round(x * (1 << shift))), int(round(y * (1 << shift))))
            cv2.circle(canvas, centre, r << shift, _colour(name), -1, cv2.LINE_AA, shift)
            if names:
                cv2.putText(canvas, name, (round(x) + r + 1, round(y) + r), cv2.FONT_HERSHEY_SIMPLEX,
                            max(0.3, r / 6), _colour(name), 1, cv2.LINE_AA)
    return np.ascontiguousarray(canvas[:, :, ::-1]) if color == "bgr" else canvas


def _as_faces(points_or_faces) -> list[tuple[Sequence[float] | None, np.ndarray]]:
    if hasattr(points_or_faces, "points"):  # a single face
        points_or_faces = [points_or_faces]
    if isinstance(points_or_faces, (list, tuple)) and points_or_faces and hasattr(points_or_faces[0], "points"):
        return [(None if getattr(f, "box", None) is None else np.asarray(f.box, dtype=np.float64), np.asarray(f.points))
                for f in points_or_faces]
    arr = np.asarray(points_or_faces, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-2:] != (len(KEYPOINT_NAMES), 2):
        if arr.size == 0:
            return []
        raise ValueError(f"expected points of shape (15, 2) or (N, 15, 2), or a list of faces; got shape {arr.shape}")
    return [(None, p) for p in arr]
