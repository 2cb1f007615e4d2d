"""The face detectors :meth:`facekp.Detector.detect` knows by name, and which one is the default.

- ``"facekp"``: facekp's own learned face finder (:class:`facekp.finder.FaceFinder`): faces at
  any in-plane rotation, each reported with the angle that turns it upright; ``min_score`` is its
  face-probability threshold (by default the weights' own, with the weak faces under it that
  ``detect`` keeps when presence vouches for them; a ``min_score`` given keeps exactly the faces from it up).
- ``"haar"``: OpenCV's frontal-face Haar cascade (:class:`facekp.face_detection.HaarFaceDetector`):
  upright faces (within about 10 degrees) only.

A detector asked for by name is built once per process and shared (building the finder exports
its ONNX graph); both kinds may be called from several threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from . import validate
from .face_detection import HaarFaceDetector
from .finder import FaceFinder

#: The names :func:`resolve_face_detector` takes.
FACE_DETECTORS: tuple[str, ...] = ("facekp", "haar")
#: What ``detect`` uses when no face detector is given.
DEFAULT_FACE_DETECTOR = "facekp"

FaceDetectorLike = str | Callable[..., Any] | None


def resolve_face_detector(face_detector: FaceDetectorLike = None, min_score: float | None = None) -> Callable[..., Any]:
    """The face detector to run: ``face_detector`` by name (:data:`FACE_DETECTORS`; None:
    :data:`DEFAULT_FACE_DETECTOR`), or the callable itself (:func:`check_face_detector`'s rules)."""
    chosen, min_score = check_face_detector(face_detector, min_score)
    return _named(chosen, min_score) if isinstance(chosen, str) else chosen


def check_face_detector(face_detector: FaceDetectorLike = None,
                        min_score: float | None = None) -> tuple[str | Callable[..., Any], float | None]:
    """``(name or callable, min_score)`` checked, without building anything (for a driver that
    leaves the building to its workers).

    ``min_score`` (in (0, 1)) is the ``"facekp"`` finder's threshold (None: its weights' own);
    it has no meaning for Haar's vote counts or for a callable, which set their own, so it is
    refused there.
    """
    if min_score is not None:
        min_score = validate.number("min_score", min_score, 0.0, 1.0, open_lo=True, open_hi=True)
    chosen = DEFAULT_FACE_DETECTOR if face_detector is None else face_detector
    if isinstance(chosen, str):
        if chosen not in FACE_DETECTORS:
            raise ValueError(f"unknown face detector {chosen!r}: expected one of {', '.join(map(repr, FACE_DETECTORS))} "
                             "or a callable")
        if min_score is not None and chosen != "facekp":
            raise ValueError(f"min_score is the 'facekp' face detector's threshold; the {chosen!r} detector has none "
                             "(its boxes carry vote counts, not probabilities)")
        return chosen, min_score
    if not callable(chosen):
        raise TypeError(f"face_detector must be one of {', '.join(map(repr, FACE_DETECTORS))}, a callable "
                        f"(image -> boxes) or None, got {type(chosen).__name__}")
    if min_score is not None:
        raise ValueError("min_score applies to a face detector given by name ('facekp'); "
                         "set the threshold on your own detector instead")
    return chosen, None


@functools.lru_cache(maxsize=8)
def _named(name: str, min_score: float | None) -> Callable[..., Any]:
    if name == "haar":
        return HaarFaceDetector()
    # A threshold the caller chose is the threshold: no weak faces under it.
    return FaceFinder() if min_score is None else FaceFinder(min_score=min_score, weak_score=None)
