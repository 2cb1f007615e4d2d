"""Box calibration: from a face detector's box to the canonical frame the network was trained on.

A :class:`BoxCalibration` (fitted on annotated photos by :func:`fit_box_calibration`) puts a face's
keypoint centroid at box centre + ``offset`` x box side and its RMS radius at ``scale`` x box side.
:func:`reframe` frames a face again on its own predicted points (``detect``'s refine passes, video
tracking between detections).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Union

import numpy as np

from . import validate
from .face_detection import HAAR_NAME, HaarFaceDetector, detector_input, run_face_detector
from .geometry import CANONICAL_RMS, box_side_centre, face_angle, face_geometry, frame_scale, similarity_transform

#: The fitted calibration of :class:`~facekp.face_detection.HaarFaceDetector` boxes, shipped with the package.
CALIBRATION_FILE = "haar_calibration.json"


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
        scale, offset = validate.calibration(self.scale, self.offset)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", offset)

    def frame(self, box: Sequence[float], angle: float = 0.0) -> np.ndarray:
        """The 2x3 transform from image pixels to the canonical 96x96 crop for ``box``.

        ``angle``: the rotation (degrees, counter-clockwise) that turns the face upright; the
        crop shows it upright.
        """
        centroid, rms = self.expected(box, angle)
        return similarity_transform(centroid, CANONICAL_RMS / rms, angle)

    def expected(self, box: Sequence[float], angle: float = 0.0) -> tuple[np.ndarray, float]:
        """Expected keypoint centroid (x, y) and RMS radius for ``box`` (of a face tilted by -``angle``)."""
        side, centre = box_side_centre(box)
        offset = side * np.asarray(self.offset)
        if angle:
            offset = similarity_transform((0, 0), 1.0, angle, (0, 0))[:, :2].T @ offset  # upright -> image
        return centre + offset, self.scale * side

    def box_from_points(self, points: np.ndarray) -> tuple[float, float, float, float]:
        """The square box this calibration maps onto ``points``' centroid and RMS radius (the inverse)."""
        c, rms = face_geometry(points)
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
        validate.calibration_dict(data)
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


def resolve_calibration(detector: Any = None, face_detector: Any = None, calibration: CalibrationLike = None) -> BoxCalibration:
    """Which calibration frames ``face_detector``'s boxes (None: boxes passed in, read as Haar's) for
    ``detector`` (anything with ``config.box_to_frame``, e.g. a :class:`facekp.Detector`; or None):
    ``calibration`` if given; else the model config's ``box_to_frame`` when fitted for this face
    detector; else the face detector's own ``calibration``; else the bundled Haar calibration."""
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
    side, centre = box_side_centre(boxes)
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
        face_detector: default: a :class:`facekp.face_detection.HaarFaceDetector` with default settings.

    The offset is the mean of ``(centroid - box centre) / side`` and the scale the geometric mean
    of ``RMS radius / side`` over the faces the detector found (:func:`match_face`), after
    dropping outliers beyond 3.5 robust standard deviations. ``stats`` records how many faces
    were found and the spread of the residuals.
    """
    fd = face_detector or HaarFaceDetector()
    items = samples
    if progress:
        from tqdm import tqdm

        items = tqdm(samples, desc="calibrating", unit="photo", disable=None)  # a bar on a terminal only
    boxes = (run_face_detector(fd, detector_input(fd, np.asarray(s.image))).boxes for s in items)
    return fit_to_boxes(samples, boxes, getattr(fd, "name", "custom"))


def fit_to_boxes(samples, boxes, detector: str = "custom") -> BoxCalibration:
    """Fit :class:`BoxCalibration` on annotated photos and the boxes a face detector found in them.

    ``boxes[i]``: the ``(N_i, 4)`` boxes ``x0, y0, x1, y1`` found in ``samples[i]``'s photo (may be
    empty); ``detector``: the name the calibration records. The fit is :func:`fit_box_calibration`'s.
    """
    rel, log_ratio = [], []
    n = 0
    for s, found in zip(samples, boxes):
        n += 1
        found = np.asarray(found, dtype=np.float64).reshape(-1, 4)
        mask = getattr(s, "mask", None)
        i = match_face(found, s.points, mask)
        if i is None:
            continue
        c, rms = face_geometry(s.points, mask)
        side, centre = box_side_centre(found[i])
        rel.append((c - centre) / side)
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
    return BoxCalibration(float(np.exp(log_scale)), tuple(offset), detector, stats)


def reframe(points: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The re-framing of ``detect``'s refine passes and of video tracking: the 2x3 canonical frame
    (image -> crop pixels) of a face's predicted 15 ``points`` (15, 2): their centroid, RMS radius and
    in-plane angle (:func:`facekp.geometry.face_angle`, so the crop shows the face upright whatever
    angle the face detector guessed), unless the points collapsed or exploded; then ``fallback``,
    the old frame."""
    c, rms = face_geometry(points)
    old_rms = CANONICAL_RMS / frame_scale(fallback)
    if not np.isfinite(rms) or rms < 0.25 * old_rms or rms > 4 * old_rms:
        return fallback
    return similarity_transform(c, CANONICAL_RMS / rms, face_angle(points))
