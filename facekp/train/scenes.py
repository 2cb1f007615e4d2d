"""Training scenes for the face finder: annotated faces pasted on face-free backgrounds.

A scene is a square gray image with zero to ten faces taken from annotated photos (faces68
*training* identities), each scaled (eye distance from about 8 px up to most of the scene),
turned (half the faces anywhere on the full circle, the rest within +/-30 degrees by default), mirrored
half of the time, cut out with a soft oval or with its photo's own surroundings, and possibly
partly covered or cut by the scene's border. Backgrounds are crops of face-free photos
(``../shared/data/negatives`` less :data:`facekp.train.negatives.HELD_OUT_NEGATIVES`) or the parts of faces68 photos
outside their face, or (``hard_negative_p``) cut around a false face a finder reported on a training
negative (:mod:`facekp.train.hard_negatives`). The whole scene is then relit, blurred, noised and JPEG-compressed at
random. A share of the scenes (``photo_p``) is instead one annotated photo as it is, scaled,
turned and shifted, cut to the part near its face, the canvas around it filled as a rotated
photo's would be (edge pixels repeated, or a flat colour): the finder then also learns faces in
their own photos and the streaks a turned photo's border leaves. Every face's 15 keypoints travel with it, so the
targets (centre, box, angle) come from the labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..images import fit_within
from ..keypoints import FLIP_INDEX
from ..geometry import apply_affine, face_geometry, similarity_transform
from .data import Sample

def load_gray_u8(path: Path, max_side: int = 1280) -> np.ndarray:
    """A photo as (H, W) uint8 gray, shrunk so that its longer side is at most ``max_side``."""
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(f"cannot read {path} as an image")
    return fit_within(gray, max_side)


def eye_distance(points: np.ndarray) -> float:
    """Distance between the two eye centres (keypoints 0 and 1), px."""
    return float(np.linalg.norm(points[0] - points[1]))


@dataclass(frozen=True)
class SceneConfig:
    """Ranges of the composed scenes (sizes in scene pixels)."""

    size: int = 256
    min_eye_distance: float = 8.0
    max_faces: int = 10
    empty_p: float = 0.1  # scenes without any face
    group_p: float = 0.4  # scenes of 3..max_faces faces (the rest: 1 or 2)
    full_turn_p: float = 0.5  # faces turned anywhere on the circle (the rest: within +/- tilt)
    tilt: float = 30.0  # degrees
    surroundings_p: float = 0.35  # a face pasted with its photo's surroundings instead of an oval
    occlusion_p: float = 0.2
    blur_p: float = 0.25
    noise_p: float = 0.3
    jpeg_p: float = 0.3
    photo_p: float = 0.0  # scenes that are one annotated photo, turned, instead of faces pasted on a background
    hard_negative_p: float = 0.0  # backgrounds cut around a false face a finder reported (needs hard_negatives)
    smooth_p: float = 0.0  # out-of-focus backgrounds (a portrait's): a wallpaper blurred hard, or smooth random tones


class SceneComposer:
    """Composes scenes: ``composer(rng) -> (image, points)``, ``image`` (size, size) uint8 and
    ``points`` (N, 15, 2) float32 keypoints of the N faces in it (pixel-centre convention).

    Args:
        faces: annotated faces (training identities only); their ``image`` and ``points``.
        backgrounds: face-free gray photos (uint8).
        hard_negatives: where ``config.hard_negative_p`` of the backgrounds come from
            (:class:`facekp.train.hard_negatives.HardNegativeCrops`).
    """

    def __init__(self, faces: list[Sample], backgrounds: list[np.ndarray], config: SceneConfig = SceneConfig(),
                 hard_negatives: Callable[[np.random.Generator, int], np.ndarray] | None = None) -> None:
        if not faces:
            raise ValueError("the scene composer needs at least one annotated face")
        if not backgrounds:
            raise ValueError("the scene composer needs at least one face-free background")
        if config.hard_negative_p and hard_negatives is None:
            raise ValueError("hard_negative_p needs hard negatives to cut backgrounds from")
        self.faces = faces
        self.backgrounds = backgrounds
        self.config = config
        self.hard_negatives = hard_negatives

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        if cfg.photo_p and rng.random() < cfg.photo_p:
            canvas, pts = self._photo(rng)
            return self._photometric(canvas, rng), pts[None].astype(np.float32)
        canvas = self._background(rng).astype(np.float32)
        u = rng.random()
        count = 0 if u < cfg.empty_p else int(rng.integers(3, cfg.max_faces + 1)) if u < cfg.empty_p + cfg.group_p \
            else int(rng.integers(1, 3))
        placed: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        for _ in range(count):
            pts = self._paste(canvas, rng, count, boxes)
            if pts is not None:
                placed.append(pts)
        image = self._photometric(canvas, rng)
        points = np.stack(placed).astype(np.float32) if placed else np.zeros((0, 15, 2), np.float32)
        return image, points

    # -- backgrounds ------------------------------------------------------------------
    def _background(self, rng: np.random.Generator) -> np.ndarray:
        side = self.config.size
        if self.config.hard_negative_p and rng.random() < self.config.hard_negative_p:
            return self.hard_negatives(rng, side)
        if self.config.smooth_p and rng.random() < self.config.smooth_p:
            return self._smooth(rng, side)
        if rng.random() < 0.25:
            patch = self._outside_face(rng)
            if patch is not None:
                return cv2.resize(patch, (side, side), interpolation=cv2.INTER_LINEAR)
        return self._wallpaper(rng, side)

    def _smooth(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """An out-of-focus background: half of them a wallpaper patch blurred by 1.5-6% of the side,
        half a grid of 2-24 cells of random tones upsampled smoothly (as behind a synthetic group photo)."""
        if rng.random() < 0.5:
            return cv2.GaussianBlur(self._wallpaper(rng, side).astype(np.float32), (0, 0), rng.uniform(0.015, 0.06) * side)
        cells = int(rng.integers(2, 25))
        tones = rng.uniform(40, 215) + rng.uniform(-1, 1, (cells, cells)) * rng.uniform(10, 60)
        return cv2.resize(tones.astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)

    def _wallpaper(self, rng: np.random.Generator, side: int) -> np.ndarray:
        """A square patch of 15-100% of a background's shorter side, resized to ``side``, quarter-turned, maybe mirrored."""
        photo = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        h, w = photo.shape
        crop = int(rng.uniform(0.15, 1.0) * min(h, w))
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        patch = cv2.resize(photo[y : y + crop, x : x + crop], (side, side), interpolation=cv2.INTER_AREA)
        patch = np.rot90(patch, int(rng.integers(4)))
        return np.ascontiguousarray(patch[:, ::-1] if rng.random() < 0.5 else patch)

    def _outside_face(self, rng: np.random.Generator) -> np.ndarray | None:
        """The widest strip of a faces68 photo beside, above or below its face (None if too thin)."""
        s = self.faces[int(rng.integers(len(self.faces)))]
        h, w = s.image.shape
        lo, hi = s.points.min(axis=0), s.points.max(axis=0)
        margin = 0.6 * (hi - lo)  # the 15 points leave out the forehead, ears and chin
        x0, y0 = np.floor(lo - margin).astype(int)
        x1, y1 = np.ceil(hi + margin).astype(int)
        strips = [s.image[:, : max(x0, 0)], s.image[:, max(x1, 0):], s.image[: max(y0, 0)], s.image[max(y1, 0):]]
        best = max(strips, key=lambda a: min(a.shape) if a.size else 0)
        if best.size == 0 or min(best.shape) < 24:
            return None
        side = min(best.shape)
        y, x = int(rng.integers(0, best.shape[0] - side + 1)), int(rng.integers(0, best.shape[1] - side + 1))
        return np.ascontiguousarray(best[y : y + side, x : x + side])

    # -- faces --------------------------------------------------------------------------
    @staticmethod
    def _placement(points: np.ndarray, target: float, angle: float, where: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """The affine (photo -> scene) that gives the face with keypoints ``points`` ``target`` px eye
        distance, turned by ``angle`` degrees, centred at ``where``; mirrored about that centre half
        the time (returned)."""
        m = similarity_transform(points.mean(axis=0), target / max(eye_distance(points), 1.0), angle, tuple(where))
        mirrored = rng.random() < 0.5
        if mirrored:
            m = np.array([[-1.0, 0.0, 2 * where[0]], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0, 0, 1]])
        return m, mirrored

    @staticmethod
    def _points(points: np.ndarray, m: np.ndarray, mirrored: bool) -> np.ndarray:
        """A face's keypoints in the scene (left and right swapped for a mirrored face)."""
        pts = apply_affine(m, points.astype(np.float64))
        return pts[list(FLIP_INDEX)] if mirrored else pts

    def _eye_distance(self, rng: np.random.Generator, top: float) -> float:
        """A face's eye distance in the scene, px: log-uniform from ``min_eye_distance`` to ``top``."""
        return float(np.exp(rng.uniform(np.log(self.config.min_eye_distance), np.log(top))))

    def _angle(self, rng: np.random.Generator) -> float:
        cfg = self.config
        return rng.uniform(-180, 180) if rng.random() < cfg.full_turn_p else rng.uniform(-cfg.tilt, cfg.tilt)

    def _photo(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A scene that is one annotated photo, its face at a random size, turn and place, the rest of
        the canvas filled as around a turned photo; the float canvas and that face's (15, 2) points."""
        cfg = self.config
        s = self.faces[int(rng.integers(len(self.faces)))]
        target = self._eye_distance(rng, cfg.size / 2.6)
        where = rng.uniform(0.15, 0.85, size=2) * (cfg.size - 1)
        # The photo near the face only: faces68's photos hold other, unannotated people farther off.
        centre, rms = face_geometry(s.points)
        x0, y0 = np.maximum(np.floor(centre - rng.uniform(2.5, 5.0) * rms), 0).astype(int)
        x1, y1 = np.ceil(centre + rng.uniform(2.5, 5.0) * rms).astype(int) + 1
        image, points = s.image[y0:y1, x0:x1], s.points - [x0, y0]
        shrink = target / max(eye_distance(points), 1.0)
        if shrink < 0.5:  # shrink with area averaging first: the affine warp alone would alias
            h, w = image.shape
            small = cv2.resize(image, (max(1, round(w * 2 * shrink)), max(1, round(h * 2 * shrink))), interpolation=cv2.INTER_AREA)
            points = (points + 0.5) * [small.shape[1] / w, small.shape[0] / h] - 0.5
            image = small
        m, mirrored = self._placement(points, target, self._angle(rng), where, rng)
        # Repeated edge pixels (the streaks of a turned photo) or a flat colour; never mirrored, which would copy the face.
        border = cv2.BORDER_REPLICATE if rng.random() < 0.5 else cv2.BORDER_CONSTANT
        canvas = cv2.warpAffine(image.astype(np.float32), m, (cfg.size, cfg.size), flags=cv2.INTER_LINEAR,
                                borderMode=border, borderValue=float(rng.uniform(0, 255)))
        pts = self._points(points, m, mirrored)
        if rng.random() < cfg.occlusion_p:
            _occlude(canvas, pts, rng)
        return canvas, pts

    def _paste(self, canvas: np.ndarray, rng: np.random.Generator, count: int, boxes: list[np.ndarray]) -> np.ndarray | None:
        """Paste one random face into ``canvas`` (in place) away from the ``boxes`` already there; its points."""
        cfg = self.config
        s = self.faces[int(rng.integers(len(self.faces)))]
        # Eye distance in the scene: log-uniform, smaller in groups (a face's box is about 3x it).
        top = cfg.size / (3.2 * np.sqrt(count)) if count > 2 else cfg.size / 2.6
        target = self._eye_distance(rng, max(top, cfg.min_eye_distance * 1.5))
        angle = self._angle(rng)
        for _ in range(10):
            half = 1.6 * target  # about half the face box
            where = rng.uniform(-0.3 * half, cfg.size - 1 + 0.3 * half, size=2)
            box = np.concatenate([where - half, where + half])
            if all(_overlap(box, b) < 0.15 for b in boxes):
                break
        else:
            return None
        m, mirrored = self._placement(s.points, target, angle, where, rng)
        size = (cfg.size, cfg.size)
        face = cv2.warpAffine(s.image.astype(np.float32), m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.warpAffine(self._mask(s, rng), m, size, flags=cv2.INTER_LINEAR, borderValue=0)
        face = face * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)  # its own lighting, unlike the background's
        canvas += alpha * (face - canvas)
        pts = self._points(s.points, m, mirrored)
        if rng.random() < cfg.occlusion_p:
            _occlude(canvas, pts, rng)
        boxes.append(box)
        return pts

    def _mask(self, s: Sample, rng: np.random.Generator) -> np.ndarray:
        """Float mask in ``s.image``'s pixels: a soft oval around the face, or the photo less a soft border."""
        h, w = s.image.shape
        mask = np.zeros((h, w), np.float32)
        if rng.random() < self.config.surroundings_p:
            b = max(2, int(0.08 * min(h, w)))
            mask[b:-b, b:-b] = 1.0
            return cv2.blur(mask, (2 * b + 1, 2 * b + 1))
        c = s.points.mean(axis=0)
        rms = float(np.sqrt(((s.points - c) ** 2).sum(axis=1).mean()))
        grow = rng.uniform(1.0, 1.5)
        axes = (max(1, int(1.7 * rms * grow)), max(1, int(2.1 * rms * grow)))
        cv2.ellipse(mask, (int(c[0]), int(c[1] + 0.2 * rms)), axes, 0.0, 0.0, 360.0, 1.0, -1)
        k = max(1.0, 0.25 * rms)
        return cv2.GaussianBlur(mask, (0, 0), k)

    # -- the whole scene --------------------------------------------------------------
    def _photometric(self, canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        img = canvas
        if rng.random() < 0.5:  # a lighting gradient across the scene
            yy, xx = np.mgrid[0 : cfg.size, 0 : cfg.size].astype(np.float32) / cfg.size - 0.5
            a = rng.uniform(0, 2 * np.pi)
            img = img * (1.0 + rng.uniform(0, 0.8) * (np.cos(a) * xx + np.sin(a) * yy))
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.5, 1.4) + mean + rng.uniform(-40, 40)
        img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** np.exp(rng.uniform(-0.5, 0.5))
        if rng.random() < cfg.blur_p:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
        if rng.random() < cfg.noise_p:
            img = img + rng.normal(0, rng.uniform(2, 15), img.shape).astype(np.float32)
        out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        if rng.random() < cfg.jpeg_p:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 90))])
            out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / max(small, 1e-9)


def _occlude(canvas: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> None:
    """Cover up to about a third of a face with a flat or noisy rectangle (a hand, a cup, a hat)."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = hi - lo
    w, h = rng.uniform(0.2, 0.6, size=2) * span
    x0, y0 = lo + rng.uniform(-0.2, 1.0, size=2) * span - [w / 2, h / 2]
    x0, y0, x1, y1 = (int(round(v)) for v in (x0, y0, x0 + w, y0 + h))
    x0, y0 = max(x0, 0), max(y0, 0)
    region = canvas[y0:y1, x0:x1]
    if region.size:
        region[...] = rng.uniform(0, 255) + rng.normal(0, rng.uniform(0, 20), region.shape)
