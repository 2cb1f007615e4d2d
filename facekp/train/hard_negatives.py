"""Hard negatives for the face finder: the false faces a finder reports on the training negatives,
shown to it again as scene backgrounds (bootstrapping, as Sung and Poggio, Viola and Jones and
DPM mined their detectors' false alarms).

:func:`mine` runs a finder over every training negative at :data:`MINING_SIDES` longer sides and
the four quarter turns; each face it reports from ``min_score`` up is a :class:`HardNegative`: which
photo, at which side and turn, and its box there. :class:`HardNegativeCrops` then cuts a scene
background around one of them with the false face at about the size that fooled the finder, so a
fine-tuning run (``facekp-train finder --init ... --hard-negatives P``) learns what it got wrong.
Only training negatives are mined: the held-out ones stay the measure of false faces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..finder import WEAK_SCORE, FaceFinder
from ..images import fit_within

#: Longer sides (px) the negatives are mined at: the scales the finder sees them at in scenes
#: (a 256 px scene shows 15-100% of a photo's shorter side) and in photos of 640 px.
MINING_SIDES = (320, 640, 1280)
#: Faces scored from this up are mined: the weak faces ``detect`` would look at too.
MINING_SCORE = WEAK_SCORE


@dataclass(frozen=True)
class HardNegative:
    """One false face: ``photo`` (index into the training negatives), seen by the finder with the
    photo shrunk to a longer side of ``side`` px and turned ``turn`` quarter turns (``np.rot90``),
    its ``box`` ``x0, y0, x1, y1`` in those pixels, and its ``score``."""

    photo: int
    side: int
    turn: int
    box: tuple[float, float, float, float]
    score: float


def view(photo: np.ndarray, side: int, turn: int) -> np.ndarray:
    """``photo`` as the finder saw it when mining: shrunk to a longer side of ``side``, turned ``turn`` quarter turns."""
    return np.ascontiguousarray(np.rot90(fit_within(photo, side), turn))


def views(photo: np.ndarray, sides: Sequence[int] = MINING_SIDES) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(side, turn, view)`` for each longer side of ``sides`` (shrunk, never enlarged) and each quarter turn:
    the views of a photo a finder is mined on."""
    for side in sides:
        for turn in range(4):
            yield side, turn, view(photo, side, turn)


def random_views(photo: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` random views of ``photo`` (H, W): a crop of 25-100% of its side, scaled to a longer side of 320,
    640 or 1280 px, turned by a random quarter turn and mirrored half of the time; the face-free photos a
    user's camera gives beside the whole wallpapers :func:`views` shows."""
    out = []
    h, w = photo.shape
    for _ in range(n):
        s = rng.uniform(0.25, 1.0)
        ch, cw = int(h * s), int(w * s)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        f = float(rng.choice([320, 640, 1280])) / max(ch, cw)
        image = cv2.resize(photo[y : y + ch, x : x + cw], None, fx=f, fy=f,
                           interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        image = np.rot90(image, int(rng.integers(4)))
        out.append(np.ascontiguousarray(image[:, ::-1] if rng.random() < 0.5 else image))
    return out


def mine(finder: FaceFinder, photos: list[np.ndarray], sides: tuple[int, ...] = MINING_SIDES,
         min_score: float = MINING_SCORE) -> list[HardNegative]:
    """Every face ``finder`` reports from ``min_score`` up on the face-free ``photos`` (uint8 gray),
    on each of their :func:`views` (the finder should have ``max_side=None``, so that each view is
    searched at its own size)."""
    found = []
    for k, photo in enumerate(photos):
        for side, turn, image in views(photo, sides):
            boxes, scores, _ = finder(image, min_score=min_score)
            found += [HardNegative(k, side, turn, tuple(float(v) for v in b), float(s)) for b, s in zip(boxes, scores)]
    return found


def save_hard_negatives(items: list[HardNegative], path: Path) -> None:
    """The mined false faces as JSON (the run folder's ``hard_negatives.json``)."""
    path.write_text(json.dumps([asdict(h) for h in items]))


def load_hard_negatives(path: Path) -> list[HardNegative]:
    return [HardNegative(int(d["photo"]), int(d["side"]), int(d["turn"]), tuple(d["box"]), float(d["score"]))
            for d in json.loads(path.read_text())]


class HardNegativeCrops:
    """Scene backgrounds around mined false faces: ``crops(rng, size) -> (size, size) uint8``.

    The crop shows the photo as the finder saw it (same side and turn) scaled by 0.8-1.25, the false
    face anywhere in it; where the crop is larger than the view, edge pixels are repeated.
    """

    def __init__(self, photos: list[np.ndarray], items: list[HardNegative]) -> None:
        if not items:
            raise ValueError("no hard negatives to show: the finder reported no face on the training negatives")
        bad = [h for h in items if not 0 <= h.photo < len(photos)]
        if bad:
            raise ValueError(f"hard negative of photo {bad[0].photo}, but there are {len(photos)} training negatives")
        self.photos = photos
        self.items = items

    def __call__(self, rng: np.random.Generator, size: int) -> np.ndarray:
        h = self.items[int(rng.integers(len(self.items)))]
        image = view(self.photos[h.photo], h.side, h.turn)
        zoom = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        window = size / zoom  # in the view's pixels
        x0, y0, x1, y1 = h.box
        origin = []
        for lo, hi, extent in ((x0, x1, image.shape[1]), (y0, y1, image.shape[0])):
            # The box inside the window, and the window inside the view where both fit.
            a, b = hi - window, lo
            if a > b:
                a = b = 0.5 * (lo + hi - window)
            a, b = max(a, min(0.0, extent - window)), min(b, max(0.0, extent - window))
            origin.append(rng.uniform(min(a, b), max(a, b)))
        m = np.array([[zoom, 0.0, -zoom * origin[0]], [0.0, zoom, -zoom * origin[1]]])
        return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
