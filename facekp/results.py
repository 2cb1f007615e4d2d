"""What the library returns: :class:`Face` and the one JSON form of keypoints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .keypoints import KEYPOINT_NAMES


#: Decimals kept in the JSON form (and the CSV made from it): positions (points, boxes) to
#: 0.001 px, far below the model's error; confidences and detector scores to 0.0001; angles to
#: 0.01 degree.
PIXEL_DECIMALS, SCORE_DECIMALS, ANGLE_DECIMALS = 3, 4, 2


def keypoints_to_dict(points: np.ndarray, confidence: np.ndarray) -> dict[str, dict[str, float]]:
    """``{name: {"x", "y", "confidence"}}`` in :data:`facekp.KEYPOINT_NAMES` order, from ``(15, 2)``
    points (image pixels) and ``(15,)`` confidences, rounded (:data:`PIXEL_DECIMALS`,
    :data:`SCORE_DECIMALS`): the form of :meth:`Face.to_dict` and of ``facekp predict --json``."""
    return {name: {"x": round(float(x), PIXEL_DECIMALS), "y": round(float(y), PIXEL_DECIMALS),
                   "confidence": round(float(c), SCORE_DECIMALS)}
            for name, (x, y), c in zip(KEYPOINT_NAMES, points, confidence)}


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
        angle: the rotation (degrees, counter-clockwise as displayed, in (-180, 180]) that turns the
            face upright: measured on its keypoints (:func:`facekp.geometry.face_angle`) when ``detect``
            refined it (``refine >= 1``, the default), else the face detector's (the finder's estimate;
            0 for Haar's upright search). The network sees the face turned upright.
        presence: the probability in [0, 1] that the keypoint network sees a face there
            (:mod:`facekp.presence`); None when the model has no presence model.
    """

    box: tuple[float, float, float, float]
    points: np.ndarray
    confidence: np.ndarray
    score: float
    angle: float = 0.0
    presence: float | None = None

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def to_dict(self) -> dict:
        """JSON-ready: ``box``, ``score``, ``angle``, ``presence`` (None without a presence model) and
        ``keypoints`` {name: {x, y, confidence}}, rounded like :func:`keypoints_to_dict`."""
        return {
            "box": [round(float(v), PIXEL_DECIMALS) for v in self.box],
            "score": round(float(self.score), SCORE_DECIMALS),
            "angle": round(float(self.angle), ANGLE_DECIMALS),
            "presence": None if self.presence is None else round(float(self.presence), SCORE_DECIMALS),
            "keypoints": keypoints_to_dict(self.points, self.confidence),
        }
