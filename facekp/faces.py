"""Faces in whole photos: find each face, frame it for the network, predict its keypoints.

The pipeline behind :meth:`facekp.Detector.detect`:

1. a *face detector* finds face boxes: by default :class:`HaarFaceDetector` (OpenCV's frontal-face
   Haar cascade, shipped in the OpenCV wheel, offline); any callable returning boxes will do, or
   pass the boxes themselves;
2. a *box calibration* (:class:`BoxCalibration`, fitted on annotated photos by
   :func:`fit_box_calibration`) turns each box into the canonical frame the network was trained
   on: keypoint centroid = box centre + ``offset`` x box side, keypoint RMS radius = ``scale`` x
   box side;
3. all faces of the photo go through the network in one batch, and optionally once more after
   re-framing each face on its own first prediction (``refine``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

import cv2
import numpy as np

from .images import ImageInput, load_gray, load_rgb
from .keypoints import KEYPOINT_NAMES
from .preprocess import CANONICAL_RMS, apply_affine, invert_affine, similarity_transform

if TYPE_CHECKING:  # pragma: no cover
    from .detector import Detector

#: Name of the default face detector; calibrations record the detector they were fitted for.
HAAR_NAME = "haar_frontalface_default"

#: The fitted calibration of :class:`HaarFaceDetector` boxes, shipped with the package.
CALIBRATION_FILE = "haar_calibration.json"

#: Re-framing passes :meth:`Detector.detect` runs by default (see ``docs/detection.md``).
DEFAULT_REFINE = 1


# -- faces ----------------------------------------------------------------------------------
@dataclass
class Face:
    """One face found in a photo.

    Attributes:
        box: ``(x0, y0, x1, y1)`` of the face detector's box, in image pixels (pixel-centre
            convention: the top-left pixel's centre is (0, 0), its outer corner (-0.5, -0.5)).
        points: ``(15, 2)`` float32 keypoints (x, y) in image pixels, in
            :data:`facekp.KEYPOINT_NAMES` order.
        confidence: ``(15,)`` float32 heatmap peak heights in [0, 1].
        score: the face detector's score (for the Haar cascade: how many neighbouring windows
            voted for the face; 1.0 for boxes passed in without scores).
        angle: the rotation (degrees, counter-clockwise as displayed) that made the face upright
            for the face detector; 0 unless it searched rotated copies of the photo (see
            :class:`HaarFaceDetector`'s ``angles``). The network sees the face turned upright.
    """

    box: tuple[float, float, float, float]
    points: np.ndarray
    confidence: np.ndarray
    score: float
    angle: float = 0.0

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def to_dict(self) -> dict:
        """JSON-ready: ``box``, ``score``, ``angle`` and ``keypoints`` {name: {x, y, confidence}}."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": float(self.score),
            "angle": float(self.angle),
            "keypoints": {
                name: {"x": round(float(x), 3), "y": round(float(y), 3), "confidence": round(float(c), 4)}
                for name, (x, y), c in zip(KEYPOINT_NAMES, self.points, self.confidence)
            },
        }


# -- face detectors -------------------------------------------------------------------------
Boxes = np.ndarray  # (N, 4) float64 x0, y0, x1, y1 in image pixels (pixel-centre convention)


@runtime_checkable
class FaceDetector(Protocol):
    """What :meth:`Detector.detect` needs from a face detector.

    Any callable ``detector(image) -> boxes``, ``-> (boxes, scores)`` or ``-> (boxes, scores,
    angles)`` works: ``image`` is an (H, W, 3) uint8 RGB array, ``boxes`` an (N, 4) array-like of
    ``x0, y0, x1, y1`` in its pixels (pixel-centre convention), ``scores`` (N,), ``angles`` (N,)
    the rotation in degrees (counter-clockwise as displayed) that turns each face upright. Optional attributes: ``name`` (a string, matched
    against a calibration's ``detector``), ``calibration`` (a :class:`BoxCalibration` or its
    dict, used for this detector's boxes), ``wants_gray`` (True: pass an (H, W) uint8 gray
    image instead of RGB).
    """

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
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be at least 32 (or None), got {max_side}")
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
        gray = _gray_u8(image)
        h, w = gray.shape
        fx = fy = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            f = self.max_side / max(h, w)
            gray = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
            fx, fy = gray.shape[1] / w, gray.shape[0] / h
        side = int(np.ceil(self.min_size * min(fx, fy)))
        found = [self._detect_rotated(gray, a, side) for a in self.angles]
        boxes = np.concatenate([b for b, _, _ in found])
        votes = np.concatenate([v for _, v, _ in found])
        angles = np.concatenate([a for _, _, a in found])
        if len(self.angles) > 1 and len(boxes):
            keep = _suppress(boxes, votes, 0.3)
            boxes, votes, angles = boxes[keep], votes[keep], angles[keep]
        # Undo the shrink (pixel-centre convention).
        boxes[:, 0::2] = (boxes[:, 0::2] + 0.5) / fx - 0.5
        boxes[:, 1::2] = (boxes[:, 1::2] + 0.5) / fy - 0.5
        return boxes, votes, angles

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


_DEFAULT_FACE_DETECTOR: HaarFaceDetector | None = None


def default_face_detector() -> HaarFaceDetector:
    """The shared :class:`HaarFaceDetector` with default settings (built on first use)."""
    global _DEFAULT_FACE_DETECTOR
    if _DEFAULT_FACE_DETECTOR is None:
        _DEFAULT_FACE_DETECTOR = HaarFaceDetector()
    return _DEFAULT_FACE_DETECTOR


def _gray_u8(image: ImageInput) -> np.ndarray:
    """``image`` as (H, W) uint8 luma, with :func:`load_gray`'s checks (InvalidImageError)."""
    if isinstance(image, np.ndarray) and image.ndim == 2 and image.dtype == np.uint8:
        return np.ascontiguousarray(image)  # already gray uint8: skip a round trip
    return _to_u8(load_gray(image))


def _to_u8(gray: np.ndarray) -> np.ndarray:
    """A :func:`load_gray` result (float32 in [0, 1], already checked) as uint8."""
    return np.rint(gray * 255.0).astype(np.uint8)


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


def _suppress(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    order = np.argsort(-scores, kind="stable")
    overlap = box_iou(boxes, boxes)
    keep: list[int] = []
    for i in order:
        if all(overlap[i, j] <= iou for j in keep):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


def run_face_detector(face_detector: Callable, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Call ``face_detector``; normalise its answer to ``(N, 4)`` boxes, ``(N,)`` scores and ``(N,)`` angles."""
    out = face_detector(image)
    boxes, scores, angles = out, None, None
    if isinstance(out, tuple) and len(out) in (2, 3):
        boxes, scores, angles = (*out, None) if len(out) == 2 else out
    return _as_boxes(boxes, scores, angles)


def _as_boxes(boxes, scores=None, angles=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.empty((0, 4)), np.empty(0), np.empty(0)
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
    return arr, s, a


# -- box calibration ------------------------------------------------------------------------
@dataclass(frozen=True)
class BoxCalibration:
    """From a face detector's box to the network's canonical frame.

    With ``side = (width + height) / 2`` and ``centre`` the box centre, the face's 15 keypoints
    are expected to have their centroid at ``centre + offset * side`` and RMS distance from it
    ``scale * side``. Stored in a model's ``config.json`` as ``box_to_frame``.
    """

    scale: float
    offset: tuple[float, float] = (0.0, 0.0)
    detector: str = HAAR_NAME
    stats: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"calibration scale must be positive, got {self.scale}")
        object.__setattr__(self, "offset", (float(self.offset[0]), float(self.offset[1])))

    def frame(self, box: Sequence[float], angle: float = 0.0) -> np.ndarray:
        """The 2x3 transform from image pixels to the canonical 96x96 crop for ``box``.

        ``angle``: the rotation (degrees, counter-clockwise) that turns the face upright; the
        crop shows it upright.
        """
        centroid, rms = self.expected(box, angle)
        return similarity_transform(centroid, CANONICAL_RMS / rms, angle)

    def expected(self, box: Sequence[float], angle: float = 0.0) -> tuple[np.ndarray, float]:
        """Expected keypoint centroid (x, y) and RMS radius for ``box`` (of a face tilted by -``angle``)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        side = 0.5 * ((x1 - x0) + (y1 - y0))
        centre = np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1)])
        offset = side * np.asarray(self.offset)
        if angle:
            offset = similarity_transform((0, 0), 1.0, angle, (0, 0))[:, :2].T @ offset  # upright -> image
        return centre + offset, self.scale * side

    def box_from_points(self, points: np.ndarray) -> tuple[float, float, float, float]:
        """The square box this calibration maps onto ``points``' centroid and RMS radius (the inverse)."""
        pts = np.asarray(points, dtype=np.float64)
        c = pts.mean(axis=0)
        rms = float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()))
        side = rms / self.scale
        cx, cy = c - side * np.asarray(self.offset)
        return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)

    def to_dict(self) -> dict:
        out = {"detector": self.detector, "scale": round(self.scale, 6), "offset": [round(v, 6) for v in self.offset]}
        if self.stats:
            out["stats"] = self.stats
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "BoxCalibration":
        try:
            return cls(float(data["scale"]), tuple(data.get("offset", (0.0, 0.0))), data.get("detector", HAAR_NAME),
                       dict(data.get("stats", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid box calibration {data!r}: {exc}") from exc


CalibrationLike = Union[BoxCalibration, dict, None]


def default_calibration() -> BoxCalibration:
    """The calibration of :class:`HaarFaceDetector` boxes fitted on faces68 (``facekp/data``)."""
    path = resources.files("facekp") / "data" / CALIBRATION_FILE
    return BoxCalibration.from_dict(json.loads(path.read_text()))


def resolve_calibration(detector: "Detector | None", face_detector: Any = None, calibration: CalibrationLike = None) -> BoxCalibration:
    """Which calibration frames the boxes: ``calibration`` if given; else the model config's
    ``box_to_frame`` when fitted for this face detector; else the face detector's own
    ``calibration``; else the bundled Haar calibration."""
    if calibration is not None:
        return calibration if isinstance(calibration, BoxCalibration) else BoxCalibration.from_dict(calibration)
    name = getattr(face_detector, "name", HAAR_NAME) if face_detector is not None else HAAR_NAME
    config = getattr(getattr(detector, "config", None), "box_to_frame", None)
    if config and config.get("detector", HAAR_NAME) == name:
        return BoxCalibration.from_dict(config)
    own = getattr(face_detector, "calibration", None)
    if own is not None:
        return own if isinstance(own, BoxCalibration) else BoxCalibration.from_dict(own)
    return default_calibration()


def face_geometry(points: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Centroid and RMS radius of the (visible) keypoints: what the canonical frame normalises."""
    pts = np.asarray(points, dtype=np.float64)
    if mask is not None:
        pts = pts[np.asarray(mask, bool)]
    c = pts.mean(axis=0)
    return c, float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()))


def match_face(boxes: np.ndarray, points: np.ndarray, mask: np.ndarray | None = None,
               max_offset: float = 0.35, ratio: tuple[float, float] = (1.5, 8.0)) -> int | None:
    """Index of the box that holds the annotated face ``points``, or None.

    A box matches when the keypoint centroid lies within ``max_offset`` box sides of its centre
    and its side is ``ratio[0]`` to ``ratio[1]`` times the keypoints' RMS radius; among several,
    the one whose centre is nearest (in box sides) wins.
    """
    if len(boxes) == 0:
        return None
    c, rms = face_geometry(points, mask)
    b = np.asarray(boxes, dtype=np.float64)
    side = 0.5 * ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1]))
    centre = 0.5 * (b[:, :2] + b[:, 2:])
    dist = np.linalg.norm(centre - c, axis=1) / side
    ok = (dist <= max_offset) & (side >= ratio[0] * rms) & (side <= ratio[1] * rms)
    if not ok.any():
        return None
    return int(np.flatnonzero(ok)[np.argmin(dist[ok])])


def fit_box_calibration(samples, face_detector: Callable | None = None, progress: bool = False) -> BoxCalibration:
    """Fit :class:`BoxCalibration` for ``face_detector``'s boxes on annotated photos.

    Args:
        samples: objects with ``image`` (H, W) uint8 (or anything the detector takes),
            ``points`` (15, 2) and optionally ``mask`` (15,) — e.g. ``facekp.train.data.Sample``.
        face_detector: default :func:`default_face_detector`.

    The offset is the mean of ``(centroid - box centre) / side`` and the scale the geometric mean
    of ``RMS radius / side`` over the faces the detector found (:func:`match_face`), after
    dropping outliers beyond 3.5 robust standard deviations. ``stats`` records how many faces
    were found and the spread of the residuals.
    """
    fd = face_detector or default_face_detector()
    rel, log_ratio = [], []
    items = samples
    if progress:
        from tqdm import tqdm

        items = tqdm(samples, desc="calibrating", unit="photo")
    n = 0
    for s in items:
        n += 1
        image = _detector_input(fd, np.asarray(s.image))
        boxes, _, _ = run_face_detector(fd, image)
        mask = getattr(s, "mask", None)
        i = match_face(boxes, s.points, mask)
        if i is None:
            continue
        c, rms = face_geometry(s.points, mask)
        x0, y0, x1, y1 = boxes[i]
        side = 0.5 * ((x1 - x0) + (y1 - y0))
        rel.append((c - [0.5 * (x0 + x1), 0.5 * (y0 + y1)]) / side)
        log_ratio.append(np.log(rms / side))
    if len(rel) < 3:
        raise ValueError(f"the face detector found only {len(rel)} of {n} annotated faces; cannot calibrate")
    rel, log_ratio = np.array(rel), np.array(log_ratio)
    keep = np.ones(len(rel), bool)
    for col in (rel[:, 0], rel[:, 1], log_ratio):
        med = np.median(col)
        mad = 1.4826 * np.median(np.abs(col - med)) + 1e-9
        keep &= np.abs(col - med) <= 3.5 * mad
    offset = rel[keep].mean(axis=0)
    log_scale = log_ratio[keep].mean()
    stats = {
        "photos": n,
        "found": int(len(rel)),
        "used": int(keep.sum()),
        "detection_rate": round(len(rel) / max(n, 1), 4),
        # residual spread, after calibration: centroid error in canonical RMS radii, scale error in log units
        "centroid_error_rms": round(float(np.sqrt((((rel[keep] - offset) ** 2).sum(1) / np.exp(2 * log_ratio[keep])).mean())), 4),
        "log_scale_error_std": round(float(log_ratio[keep].std()), 4),
    }
    return BoxCalibration(float(np.exp(log_scale)), tuple(offset), getattr(fd, "name", "custom"), stats)


def _detector_input(face_detector, image: np.ndarray) -> np.ndarray:
    if getattr(face_detector, "wants_gray", False):
        return _gray_u8(image)
    if image.ndim == 2:
        return np.repeat(_gray_u8(image)[:, :, None], 3, axis=2)
    return load_rgb(image)


# -- the pipeline ---------------------------------------------------------------------------
def detect_faces(
    detector: "Detector",
    image: ImageInput,
    boxes=None,
    *,
    face_detector: Callable | None = None,
    calibration: CalibrationLike = None,
    refine: int | None = None,
    max_faces: int | None = None,
) -> list[Face]:
    """Implementation of :meth:`facekp.Detector.detect` (see there)."""
    _check_max_faces(max_faces)
    gray = load_gray(image)
    if max_faces == 0:
        return []
    if boxes is None:
        fd = face_detector or default_face_detector()
        source = _to_u8(gray) if getattr(fd, "wants_gray", False) else load_rgb(image)
        boxes, scores, angles = run_face_detector(fd, source)
    else:
        fd = face_detector
        boxes, scores, angles = _as_boxes(boxes)
    if len(boxes) == 0:
        return []
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    if max_faces is not None:
        order = order[:max_faces]
    boxes, scores, angles = boxes[order], scores[order], angles[order]
    calib = resolve_calibration(detector, fd, calibration)
    transforms = np.stack([calib.frame(b, a) for b, a in zip(boxes, angles)])
    points, confidence = predict_refined(detector, gray, transforms, DEFAULT_REFINE if refine is None else refine, angles)
    return [Face(tuple(float(v) for v in b), p, c, float(s), float(a))
            for b, p, c, s, a in zip(boxes, points, confidence, scores, angles)]


def _check_max_faces(max_faces: int | None) -> None:
    if max_faces is None:
        return
    if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 0:
        raise ValueError(f"max_faces must be None or an integer >= 0, got {max_faces!r}")


def predict_refined(detector: "Detector", gray: np.ndarray, transforms: np.ndarray, refine: int = 0,
                    angles: Sequence[float] | None = None):
    """Points and confidences of the faces framed by ``transforms`` in one photo, one batch per pass.

    Each refining pass re-frames every face on its previous prediction (the canonical frame of
    its predicted points, turned by its ``angles``) and predicts again.
    """
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    grays = [gray] * len(transforms)
    angles = np.zeros(len(transforms)) if angles is None else angles
    points, confidence = detector.predict_framed(grays, transforms)
    for _ in range(refine):
        transforms = np.stack([_safe_canonical(p, m, a) for p, m, a in zip(points, transforms, angles)])
        points, confidence = detector.predict_framed(grays, transforms)
    return points, confidence


def _safe_canonical(points: np.ndarray, fallback: np.ndarray, angle: float = 0.0) -> np.ndarray:
    """The canonical frame of predicted points (turned by ``angle``), unless they collapsed or
    exploded (then the old frame)."""
    c, rms = face_geometry(points)
    old_rms = CANONICAL_RMS / np.sqrt(abs(np.linalg.det(fallback[:, :2])))
    if not np.isfinite(rms) or rms < 0.25 * old_rms or rms > 4 * old_rms:
        return fallback
    return similarity_transform(c, CANONICAL_RMS / rms, angle)
