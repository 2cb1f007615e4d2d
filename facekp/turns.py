"""Turning back faces framed at the wrong angle: the quarter turns :meth:`facekp.Detector.detect` retries.

A face detector's angle can be off by more than the keypoint network's +/-25 degrees of training; the
crop then shows the face on its side or upside down, its points scatter and its presence is low.
``detect`` frames such a face again at each of :data:`RETRY_TURNS` and keeps the best turn when its
presence reaches :data:`RETRY_MIN_PRESENCE` (why these bars and passes: ``docs/detection.md``, turning
back faces). The functions take the ``detector`` whose ``predict_framed``, ``predict_refined`` and
``presence`` (a presence model is needed) they run.

A turned frame starts farther off than the first (the calibration's box -> centroid offset was turned
with the wrong angle), so a turn gets one re-framing pass more than ``refine``: one leaves ~2.5 px on a
220 px face.
"""

from __future__ import annotations

import numpy as np

from .geometry import turn_frame

#: The quarter turns (degrees) tried on a face whose presence is under the threshold.
RETRY_TURNS = (90.0, 180.0, 270.0)
#: The presence a turned framing must reach to replace the first one: three more tries give a false
#: face three more chances, so the bar is higher than detect's (chosen in ``docs/detection.md``).
RETRY_MIN_PRESENCE = 0.95


def turned_frames(transforms: np.ndarray) -> np.ndarray:
    """``(N * T, 2, 3)``: each of the N frames (image -> crop) turned by the T :data:`RETRY_TURNS`, face by face."""
    return np.stack([turn_frame(m, a) for m in transforms for a in RETRY_TURNS]).reshape(-1, 2, 3)


def best_turns(detector, gray: np.ndarray, transforms: np.ndarray,
               refine: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points ``(N, K, 2)``, confidences ``(N, K)`` and presence ``(N,)`` of the N faces framed by
    ``transforms`` in the (H, W) float32 ``gray``, each at its best turn: the one of highest presence
    when every turn of every face is predicted once, in one batch. Only that turn gets the re-framing
    passes: five crops a face instead of nine, and the same faces found on training identities
    (``docs/detection.md``). Its presence is not screened first: a face 40 degrees off at its nearest
    quarter turn can score under 0.01 until the passes have turned it upright."""
    n, t = len(transforms), len(RETRY_TURNS)
    turned = turned_frames(transforms)
    p, q = detector.predict_framed([gray] * len(turned), turned)
    best = np.arange(n) * t + detector.presence(p, q).reshape(n, t).argmax(axis=1)
    points, confidence = detector.predict_refined(gray, turned[best], refine + 1, (p[best], q[best]))
    return points, confidence, detector.presence(points, confidence)


def all_turns(detector, gray: np.ndarray, transforms: np.ndarray, refine: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(N, T, K, 2)`` and confidences ``(N, T, K)`` of the N faces at every one of the T turns, each
    with all the re-framing passes, one batch per pass (what the training of presence and of the face check
    reads; ``detect`` refines only the best turn, :func:`best_turns`)."""
    p, q = detector.predict_refined(gray, turned_frames(transforms), refine + 1)
    n, t = len(transforms), len(RETRY_TURNS)
    return p.reshape(n, t, *p.shape[1:]), q.reshape(n, t, q.shape[-1])


def retry_turned(detector, gray: np.ndarray, transforms: np.ndarray, refine: int, min_presence: float,
                 points: np.ndarray, confidence: np.ndarray, presence: np.ndarray,
                 eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The faces' ``points``, ``confidence`` and ``presence`` after the turns: the ``eligible`` faces whose
    presence is under ``min_presence`` or :data:`RETRY_MIN_PRESENCE` (none when ``min_presence`` is 0) are
    framed again at their :func:`best_turns`, and take it when its presence reaches the higher of the two."""
    bar = max(min_presence, RETRY_MIN_PRESENCE)
    low = np.flatnonzero((presence < bar) & eligible & (min_presence > 0))
    if not len(low):
        return points, confidence, presence
    p, q, turned = best_turns(detector, gray, transforms[low], refine)
    ok = turned >= bar
    points, confidence, presence = points.copy(), confidence.copy(), presence.copy()
    points[low[ok]], confidence[low[ok]], presence[low[ok]] = p[ok], q[ok], turned[ok]
    return points, confidence, presence
