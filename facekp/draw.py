"""Annotated copies of images: keypoints, their names and face boxes."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from . import validate
from .geometry import box_side_centre
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
        names: label each keypoint with its name: the labels stand in two columns beside the face
            (the image's left half of the face on the left), one line apart, each joined to its
            point by a thin line, in a size set by the image rather than the face, so that they
            stay readable on small faces (:func:`label_layout`).
        boxes: draw face boxes when faces are given.
        radius: dot radius in pixels, >= 0, rounded to whole pixels (default: scaled to each face's box when faces are
            given, else to the image).
        color: ``"rgb"`` or ``"bgr"``: the channel order of a colour array or tensor ``image``
            and of the copy returned (``"bgr"`` for OpenCV's ``cv2.imread`` / ``cv2.imwrite``).
    """
    radius = validate.radius(radius)
    canvas = load_rgb(image, color).copy()
    h, w = canvas.shape[:2]
    faces = _as_faces(points_or_faces)
    # Whole pixels for cv2, and no bigger than the canvas (cv2's fixed-point coordinates overflow).
    r_image = max(1, round(min(h, w) / 150)) if radius is None else min(round(radius), 2 * max(h, w))
    far = 2.0 * max(h, w)  # points and box corners beyond this are off the canvas: clipped, not overflowed
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px
    scale = label_scale(w, h)
    layout = label_layout([(box if boxes else None, pts) for box, pts in faces], (w, h), scale) if names else None
    for k, (box, pts) in enumerate(faces):
        r = r_image
        if box is not None and radius is None and np.isfinite(box).all():
            r = min(max(1, round(float(box_side_centre(box)[0]) / 55)), 2 * max(h, w))  # dots follow the face's size
        if box is not None and boxes and np.isfinite(box).all():
            # Box edges are pixel-centre coordinates; cv2 draws lines centred on pixel centres.
            x0, y0, x1, y1 = (int(round(v * (1 << shift))) for v in np.clip(box, -far, far))
            cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 0), max(1, r // 2), cv2.LINE_AA, shift)
        if names:
            for (x0, y0, x1, y1), i in layout[k]:
                x, y = pts[i]
                near = x0 if x < x0 else x1  # the label's edge facing its point
                cv2.line(canvas, (near, (y0 + y1) // 2), (int(round(x)), int(round(y))), _colour(KEYPOINT_NAMES[i]), 1,
                         cv2.LINE_AA)
                _text(canvas, KEYPOINT_NAMES[i], (x0, y1 - _BASELINE_GAP), scale, _colour(KEYPOINT_NAMES[i]))
        for name, (x, y) in zip(KEYPOINT_NAMES, pts):
            if not np.isfinite([x, y]).all() or max(abs(x), abs(y)) > far:
                continue
            centre = (int(round(x * (1 << shift))), int(round(y * (1 << shift))))
            cv2.circle(canvas, centre, r << shift, _colour(name), -1, cv2.LINE_AA, shift)
    return np.ascontiguousarray(canvas[:, :, ::-1]) if color == "bgr" else canvas


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BASELINE_GAP = 3  # px below the text's baseline, for descenders (the "p" of "tip")
_LINE_GAP = 1  # px between two labels


def label_scale(width: int, height: int) -> float:
    """OpenCV font scale of keypoint labels on a ``width`` x ``height`` image: letters about
    1/80 of the shorter side tall, and never under 7 px (scale 0.35), whatever the face's size."""
    return float(np.clip(min(width, height) / 1100, 0.35, 1.5))


def label_layout(
    faces: Sequence[tuple[Sequence[float] | None, np.ndarray]], image_size: tuple[int, int], scale: float
) -> list[list[tuple[tuple[int, int, int, int], int]]]:
    """The labels of several faces' keypoints, ``(box or None, (15, 2) points)`` each: for each
    face, :func:`label_boxes` placed clear of every face's points and of the labels placed before
    (the faces' order is their priority)."""
    dots = [(int(x) - 2, int(y) - 2, int(x) + 3, int(y) + 3) for _, pts in faces for x, y in np.asarray(pts, np.float64)
            if np.isfinite([x, y]).all()]
    layout, labels = [], []
    for box, pts in faces:
        layout.append(label_boxes(pts, box, image_size, scale, dots + labels))
        labels += [rect for rect, _ in layout[-1]]
    return layout


def label_boxes(
    points: np.ndarray,
    box: Sequence[float] | None,
    image_size: tuple[int, int],
    scale: float,
    taken: Sequence[tuple[int, int, int, int]] = (),
) -> list[tuple[tuple[int, int, int, int], int]]:
    """Where the name of each keypoint of one face goes: ``((x0, y0, x1, y1), keypoint index)``.

    Points left of the keypoints' centroid are labelled in a column left of the face (of its
    ``box`` when given, else of its points), right-aligned; the others in a column on the right.
    A label is kept inside the image, and goes to the other column where it would cover the
    face's points there.
    Each label sits at the height of its point, or at the nearest height where it overlaps
    neither another label nor the rectangles in ``taken`` (say, other faces' labels), inside the
    ``image_size`` (width, height) wherever the image is big enough. Rectangles are in whole
    pixels, their bottom 3 px below the text's baseline; non-finite points get no label.
    """
    pts = np.asarray(points, dtype=np.float64)
    finite = [int(i) for i in np.flatnonzero(np.isfinite(pts).all(axis=1))]
    if not finite:
        return []
    w, h = image_size
    left = min(pts[finite, 0].min(), box[0] if box is not None else np.inf)
    right = max(pts[finite, 0].max(), box[2] if box is not None else -np.inf)
    margin = max(4, round(10 * scale))
    mid = pts[finite, 0].mean()
    occupied = [tuple(r) for r in taken]
    placed = []
    for i in sorted(finite, key=lambda i: pts[i, 1]):
        (tw, th), _ = cv2.getTextSize(KEYPOINT_NAMES[i], _FONT, scale, 1)
        tall = th + _BASELINE_GAP
        # The column left of the face and the one on its right, moved into the image where needed;
        # a label kept in the image would cover the face's points goes to the other column.
        sides = [int(round(min(max(x, 0), max(0, w - tw)))) for x in (left - margin - tw, right + margin)]
        clear = (sides[0] + tw < pts[finite, 0].min(), sides[1] > pts[finite, 0].max())
        own = 0 if pts[i, 0] < mid else 1
        x0 = sides[own] if clear[own] or not clear[1 - own] else sides[1 - own]
        top = _free_top(occupied, x0, x0 + tw, tall, pts[i, 1] - tall / 2, h)
        rect = (x0, top, x0 + tw, top + tall)
        occupied.append(rect)
        placed.append((rect, i))
    return placed


def _free_top(occupied: list[tuple[int, int, int, int]], x0: int, x1: int, tall: int, want: float, height: int) -> int:
    """The top nearest ``want`` for a ``tall`` px label spanning ``x0..x1`` that keeps ``_LINE_GAP``
    px from every ``occupied`` rectangle and stays in the image (``want``, clipped, when none does)."""
    lowest = max(0, height - tall)
    rects = np.array([r for r in occupied if r[0] < x1 and r[2] > x0], dtype=np.float64).reshape(-1, 4)
    # The only heights worth trying: the wanted one, and just below or above each rectangle in the way.
    tops = np.concatenate([[want], rects[:, 3] + _LINE_GAP, rects[:, 1] - _LINE_GAP - tall])
    tops = np.clip(np.round(tops), 0, lowest)
    tops = tops[np.argsort(np.abs(tops - want), kind="stable")]
    clear = ~((tops[:, None] < rects[None, :, 3] + _LINE_GAP) & (tops[:, None] + tall + _LINE_GAP > rects[None, :, 1])).any(1)
    return int(tops[np.argmax(clear)] if clear.any() else tops[0])


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour: tuple[int, int, int]) -> None:
    """``text`` with a dark outline, readable on any background."""
    cv2.putText(canvas, text, origin, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, _FONT, scale, colour, 1, cv2.LINE_AA)


def _as_faces(points_or_faces) -> list[tuple[Sequence[float] | None, np.ndarray]]:
    if hasattr(points_or_faces, "points"):  # a single face
        points_or_faces = [points_or_faces]
    if isinstance(points_or_faces, (list, tuple)) and any(hasattr(f, "points") for f in points_or_faces):
        if not all(hasattr(f, "points") for f in points_or_faces):
            raise ValueError("draw takes points or faces: a list mixing faces and arrays is ambiguous; draw them in two calls")
        return [(None if getattr(f, "box", None) is None else np.asarray(f.box, dtype=np.float64), np.asarray(f.points))
                for f in points_or_faces]
    try:
        arr = np.asarray(points_or_faces, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected points of shape (15, 2) or (N, 15, 2), or a list of faces ({exc})") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-2:] != (len(KEYPOINT_NAMES), 2):
        if arr.size == 0:
            return []
        raise ValueError(f"expected points of shape (15, 2) or (N, 15, 2), or a list of faces; got shape {arr.shape}")
    return [(None, p) for p in arr]
