"""Face detectors: what finds the face boxes in a photo before the keypoint network runs.

A face detector is any callable ``image -> boxes``, ``-> (boxes, scores)`` or ``-> (boxes, scores,
angles)`` (:class:`FaceDetector`); :func:`run_face_detector` turns each answer into the one result
type, :class:`Detections`. :class:`HaarFaceDetector` is OpenCV's frontal-face cascade (offline);
:mod:`facekp.face_detectors` names the detectors ``detect`` knows and the default. :func:`box_iou`
and :func:`nms` are the box overlap and non-maximum suppression for any detector.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import cv2
import numpy as np

from . import validate
from .geometry import apply_affine, invert_affine, similarity_transform
from .images import ImageInput, fit_within, load_gray, load_rgb

#: Name of the default face detector; calibrations record the detector they were fitted for.
HAAR_NAME = "haar_frontalface_default"

Boxes = np.ndarray  # (N, 4) float64 x0, y0, x1, y1 in image pixels (pixel-centre convention)


class Detections(NamedTuple):
    """The faces one detector call found: ``boxes`` ``(N, 4)`` float64 ``x0, y0, x1, y1`` in image
    pixels (pixel-centre convention), ``scores`` ``(N,)`` and ``angles`` ``(N,)`` (degrees,
    counter-clockwise as displayed, that turn each face upright; 0 for upright search)."""

    boxes: np.ndarray
    scores: np.ndarray
    angles: np.ndarray


@runtime_checkable
class FaceDetector(Protocol):
    """What :meth:`facekp.Detector.detect` needs from a face detector.

    Calling it with ``image``, an (H, W, 3) uint8 RGB array (an (H, W) uint8 gray one when
    ``wants_gray``), returns ``boxes``, ``(boxes, scores)`` or ``(boxes, scores, angles)``: ``boxes``
    an (N, 4) array-like of ``x0, y0, x1, y1`` in its pixels (pixel-centre convention), ``scores``
    (N,), ``angles`` (N,) as in :class:`Detections`.

    Attributes:
        name: matched against a calibration's ``detector`` (a model config's ``box_to_frame``
            applies to this detector's boxes only when the names agree).
        calibration: a :class:`facekp.calibration.BoxCalibration` (or its dict) for this
            detector's boxes, or None.
        wants_gray: True to be given gray images.
        weak_score, min_score: optional, together (as :class:`facekp.finder.FaceFinder` has them): a
            detector with a ``weak_score`` (not None) is called with ``min_score=weak_score`` as a
            keyword, and the faces it then reports under its ``min_score`` are weak ones, which
            ``detect`` keeps only at a high presence (:data:`facekp.candidates.WEAK_MIN_PRESENCE`).

    Plain callables are accepted too; the attributes are then read as absent (no name, no own
    calibration, RGB input).
    """

    name: str
    calibration: Any
    wants_gray: bool

    def __call__(self, image: np.ndarray) -> Any: ...


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (``cv2.data.haarcascades``), offline.

    Works on upright, roughly frontal faces of at least 24x24 pixels (after ``max_side``).
    Takes any image :func:`facekp.images.load_gray` accepts. One instance may be shared by
    threads: its cascade runs one call at a time.

    Args:
        scale_factor: pyramid step of ``detectMultiScale`` (smaller: slower, finds more sizes).
        min_neighbors: votes a face needs (higher: fewer false detections, more misses).
        min_size: smallest face side in pixels of the input image.
        max_side: photos whose longer side exceeds this are shrunk to it first (speed; faces
            must then be at least ``24 * longer side / max_side`` pixels). None: never shrink.
        cascade: another OpenCV cascade file in place of ``haarcascade_frontalface_default.xml``.
        angles: also search the photo rotated by these angles (degrees, counter-clockwise), for
            tilted faces: the cascade itself finds faces tilted by up to about 10 degrees, so
            ``(-30, 0, 30)`` covers about +/-40 degrees at three times the cost. Each face keeps the
            angle that found it with the most votes.
    """

    name = HAAR_NAME
    wants_gray = True

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 3,
        min_size: int = 0,
        max_side: int | None = 1024,
        cascade: str | Path | None = None,
        angles: Sequence[float] = (0.0,),
    ) -> None:
        validate.number("scale_factor", scale_factor, 1.0, 10.0, open_lo=True)
        validate.integer("min_neighbors", min_neighbors, 0, 10_000)
        validate.number("min_size", min_size, 0, 100_000)
        if max_side is not None and validate.integer("max_side", max_side) < 32:
            raise ValueError(f"max_side must be at least 32 (or None), got {max_side}")
        validate.angles(angles)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side
        self.angles = tuple(float(a) for a in angles) or (0.0,)
        path = Path(cascade) if cascade is not None else Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        if not path.is_file():
            raise FileNotFoundError(f"no cascade file at {path}")
        try:
            self._cascade = cv2.CascadeClassifier(str(path))
            readable = not self._cascade.empty()
        except (cv2.error, SystemError):  # OpenCV raises on malformed XML, returns empty on other files
            readable = False
        if not readable:
            raise ValueError(f"OpenCV cannot read {path} as a cascade classifier (expected OpenCV's cascade XML)")
        # detectMultiScale keeps per-call scale data in the classifier: concurrent calls corrupt it.
        self._lock = threading.Lock()
        if cascade is not None:
            self.name = f"haar:{path.name}"
        self.calibration = None

    def __call__(self, image: ImageInput) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(N, 4)`` boxes ``x0, y0, x1, y1``, ``(N,)`` votes and ``(N,)`` angles of the faces in ``image``."""
        photo = gray_u8(image)
        gray = fit_within(photo, self.max_side)
        fx, fy = gray.shape[1] / photo.shape[1], gray.shape[0] / photo.shape[0]
        side = int(np.ceil(self.min_size * min(fx, fy)))
        found = [self._detect_rotated(gray, a, side) for a in self.angles]
        boxes = np.concatenate([b for b, _, _ in found])
        votes = np.concatenate([v for _, v, _ in found])
        angles = np.concatenate([a for _, _, a in found])
        if len(self.angles) > 1 and len(boxes):
            keep = nms(boxes, votes, 0.3)
            boxes, votes, angles = boxes[keep], votes[keep], angles[keep]
        return unshrink_boxes(boxes, gray.shape, photo.shape), votes, angles

    def _detect_rotated(self, gray: np.ndarray, angle: float, min_side: int):
        h, w = gray.shape
        m = None
        if angle % 360 != 0:
            # Rotate about the centre onto a canvas that holds the whole photo.
            a = np.deg2rad(angle)
            cw = int(np.ceil(abs(w * np.cos(a)) + abs(h * np.sin(a))))
            ch = int(np.ceil(abs(w * np.sin(a)) + abs(h * np.cos(a))))
            m = similarity_transform(((w - 1) / 2, (h - 1) / 2), 1.0, angle, ((cw - 1) / 2, (ch - 1) / 2))
            gray = cv2.warpAffine(gray, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if min(gray.shape) < 24:
            return np.empty((0, 4)), np.empty(0), np.empty(0)
        with self._lock:
            rects, votes = self._cascade.detectMultiScale2(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(min_side, min_side)
            )
        x, y, bw, bh = np.asarray(rects, np.float64).reshape(-1, 4).T
        # Rect pixels x..x+w-1 have edges x-0.5 .. x+w-0.5.
        boxes = np.stack([x - 0.5, y - 0.5, x + bw - 0.5, y + bh - 0.5], 1)
        if m is not None and len(boxes):
            # The same box around the centre mapped back into the photo (axis-aligned).
            centre = apply_affine(invert_affine(m), 0.5 * (boxes[:, :2] + boxes[:, 2:]))
            half = 0.5 * (boxes[:, 2:] - boxes[:, :2])
            boxes = np.concatenate([centre - half, centre + half], axis=1)
        return boxes, np.asarray(votes, np.float64).reshape(-1), np.full(len(boxes), (float(angle) + 180.0) % 360.0 - 180.0)

    def __repr__(self) -> str:
        angles = "" if self.angles == (0.0,) else f", angles={self.angles}"
        return (f"HaarFaceDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
                f"min_size={self.min_size}, max_side={self.max_side}{angles})")


def gray_u8(image: ImageInput, gray: np.ndarray | None = None) -> np.ndarray:
    """``image`` as (H, W) uint8 luma, with :func:`load_gray`'s checks (InvalidImageError).

    ``gray``: ``load_gray(image)`` when the caller has it already (it is not loaded again).
    """
    if isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.uint8:
        return np.ascontiguousarray(image)  # already gray uint8: skip a round trip
    return to_u8(load_gray(image) if gray is None else gray)


def unshrink_boxes(boxes: np.ndarray, shrunk: tuple[int, ...], photo: tuple[int, ...]) -> np.ndarray:
    """``(N, 4)`` boxes found on a (H', W') resized copy of a (H, W) photo (the shapes ``shrunk`` and
    ``photo``), in place, in the photo's pixels (pixel-centre convention)."""
    fx, fy = shrunk[1] / photo[1], shrunk[0] / photo[0]
    boxes[:, 0::2] = (boxes[:, 0::2] + 0.5) / fx - 0.5
    boxes[:, 1::2] = (boxes[:, 1::2] + 0.5) / fy - 0.5
    return boxes


def to_u8(gray: np.ndarray) -> np.ndarray:
    """A :func:`load_gray` result (float32 in [0, 1], already checked) as uint8."""
    return np.rint(gray * 255.0).astype(np.uint8)


def detector_input(face_detector, image: np.ndarray) -> np.ndarray:
    """``image`` in the form ``face_detector`` takes: (H, W) uint8 gray when it ``wants_gray``, else (H, W, 3) uint8 RGB."""
    if getattr(face_detector, "wants_gray", False):
        return gray_u8(image)
    if image.ndim == 2:
        return np.repeat(gray_u8(image)[:, :, None], 3, axis=2)
    return load_rgb(image)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), ``x0, y0, x1, y1``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of ``boxes`` (N, 4) kept by greedy non-maximum suppression: highest score first, a box
    is dropped when its IoU with a kept one exceeds ``iou``."""
    order = np.argsort(-scores, kind="stable")
    overlap = box_iou(boxes, boxes)
    keep: list[int] = []
    for i in order:
        if all(overlap[i, j] <= iou for j in keep):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


def run_face_detector(face_detector: Callable, image: np.ndarray) -> Detections:
    """Call ``face_detector``; normalise its answer to :class:`Detections`."""
    out = face_detector(image)
    boxes, scores, angles = out, None, None
    if isinstance(out, tuple) and len(out) in (2, 3):
        boxes, scores, angles = (*out, None) if len(out) == 2 else out
    return as_detections(boxes, scores, angles)


def as_detections(boxes, scores=None, angles=None) -> Detections:
    """Checked :class:`Detections` from boxes ``(N, 4)`` (or ``(N, 5)`` with a score column) and optional
    scores and angles; ``ValueError`` for malformed, non-finite or inverted boxes."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return Detections(np.empty((0, 4)), np.empty(0), np.empty(0))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(f"face boxes must be (N, 4) x0, y0, x1, y1 (or (N, 5) with a score column); got shape {arr.shape}")
    if arr.shape[1] == 5 and scores is None:
        arr, scores = arr[:, :4], arr[:, 4]
    arr = arr[:, :4]
    if not np.isfinite(arr).all():
        raise ValueError("face boxes contain NaN or infinite values")
    if ((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])).any():
        raise ValueError("face boxes must have x1 > x0 and y1 > y0 (x0, y0, x1, y1 order)")
    s = np.ones(len(arr)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    a = np.zeros(len(arr)) if angles is None else np.asarray(angles, dtype=np.float64).reshape(-1)
    if len(s) != len(arr) or len(a) != len(arr):
        raise ValueError(f"{len(arr)} boxes but {len(s)} scores and {len(a)} angles")
    return Detections(arr, s, a)


def usable_detections(found: Detections, shape: tuple[int, int], drop: bool) -> Detections:
    """The faces an ``shape`` (H, W) image can frame (:func:`facekp.validate.boxes`: overlapping it,
    1 pixel to 10 image sides): a face detector's others are dropped (``drop``); boxes passed in by
    the caller are refused with ``ValueError`` instead. Scores and angles must be finite."""
    keep = validate.boxes(found.boxes, shape[1], shape[0])
    if not np.isfinite(found.scores).all():
        raise ValueError("face scores contain NaN or infinite values")
    if not drop and not keep.all():
        raise ValueError(validate.describe_box_problem(found.boxes[~keep][0], shape[1], shape[0]))
    return Detections(found.boxes[keep], found.scores[keep], validate.angles(found.angles[keep]))
