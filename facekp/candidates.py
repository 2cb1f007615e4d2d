"""Which of a face detector's candidates reach the keypoint network in ``detect``, and the presence each needs.

Two judges decide: the face check (:mod:`facekp.face_check`), which reads a candidate's pixels before the
keypoint network runs, and presence (:mod:`facekp.presence`), which reads the network's points after it. The
thresholds here were chosen on held-out candidates (validation identities on held-out negatives), see
``docs/detection.md``: most candidates are false, and each one that goes on costs network passes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .face_check import FaceCheck

#: The presence a weak face (a face detector's ``weak_score`` to ``min_score``, e.g.
#: :data:`facekp.finder.WEAK_SCORE`) must reach at its first framing to be kept; weak faces get no turns.
WEAK_MIN_PRESENCE = 0.95
#: A weak face goes on to ``detect``'s re-framing passes only when its presence after one pass reaches this.
WEAK_SCREEN_PRESENCE = 0.5
#: Under ``detect``'s default threshold, a face the face check scores this high is vouched for: kept from
#: :data:`VOUCHED_MIN_PRESENCE` instead of the default or :data:`WEAK_MIN_PRESENCE`, and never stopped by the
#: weak faces' screen. Small, blurred faces that the keypoint network reads with little confidence are what
#: the check is surest of.
VOUCHED_CHECK = 0.99
#: The presence a face the face check vouches for must reach.
VOUCHED_MIN_PRESENCE = 0.5
#: The face check's score a weak face needs to reach the keypoint network (or the check's threshold, if
#: higher): most weak faces are false.
WEAK_MIN_CHECK = 0.85
#: The face check's score a face needs for ``detect``'s quarter turns (:mod:`facekp.turns`): five crops more
#: a face, spent mostly on false ones otherwise.
TURN_MIN_CHECK = 0.5


class Candidates(NamedTuple):
    """The faces of one photo on their way through ``detect``: N of each, largest face first.

    ``boxes`` ``(N, 4)`` ``x0, y0, x1, y1``, ``scores`` and ``angles`` (degrees) ``(N,)`` in image pixels, as
    the face detector gave them; ``transforms`` ``(N, 2, 3)`` image -> crop and ``crops`` ``(N, S, S)``, the
    faces framed for the network; ``weak``: under the face detector's ``min_score``; ``vouched``: the face check
    is sure of it (:data:`VOUCHED_CHECK`); ``turnable``: ``detect`` may try its quarter turns.
    """

    boxes: np.ndarray
    scores: np.ndarray
    angles: np.ndarray
    transforms: np.ndarray
    crops: np.ndarray
    weak: np.ndarray
    vouched: np.ndarray
    turnable: np.ndarray

    @classmethod
    def framed(cls, boxes: np.ndarray, scores: np.ndarray, angles: np.ndarray, transforms: np.ndarray,
               crops: np.ndarray, weak: np.ndarray) -> Candidates:
        """Candidates no judge has seen yet: none vouched for, every one but the weak turnable."""
        return cls(boxes, scores, angles, transforms, crops, weak, np.zeros(len(boxes), bool), ~weak)

    def take(self, keep: np.ndarray) -> Candidates:
        """The candidates ``keep`` (a bool mask or indices) selects, in its order."""
        return Candidates._make(v[keep] for v in self)

    def checked(self, face_check: FaceCheck, vouching: bool) -> Candidates:
        """The candidates ``face_check`` passes (weak ones need :data:`WEAK_MIN_CHECK` as well), with its word on
        which are vouched for (only when ``vouching``: ``detect``'s default threshold) and turnable."""
        score = face_check(self.crops)
        keep = score >= np.where(self.weak, max(face_check.threshold, WEAK_MIN_CHECK), face_check.threshold)
        score, passed = score[keep], self.take(keep)
        return passed._replace(vouched=(score >= VOUCHED_CHECK) & vouching,
                               turnable=~passed.weak & (score >= TURN_MIN_CHECK))

    def screen(self, presence: np.ndarray) -> np.ndarray:
        """Bool mask of the candidates that go on to the re-framing passes, given their ``presence`` after one
        pass: every face but the weak ones under :data:`WEAK_SCREEN_PRESENCE` the check does not vouch for."""
        return ~self.weak | self.vouched | (presence >= WEAK_SCREEN_PRESENCE)

    def presence_bars(self, min_presence: float) -> np.ndarray:
        """``(N,)``: the presence each face needs to be kept, from ``detect``'s resolved ``min_presence``."""
        bar = np.where(self.weak, max(min_presence, WEAK_MIN_PRESENCE), min_presence)
        return np.where(self.vouched, np.minimum(bar, VOUCHED_MIN_PRESENCE), bar)
