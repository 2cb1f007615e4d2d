"""Crops without a face at their centre, for teaching the network (and the presence model) "no face here".

96x96 float32 in [0, 1]: random rotated patches of face-free photos, training faces framed so badly
that the frame misses the face (zoomed far out, zoomed in on a part, shifted away), and (for the
presence model only) faces turned upside down. Used by ``facekp-train fit --negatives`` (zero heatmaps
as targets) and ``facekp-train presence``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..geometry import CANONICAL_CENTER, CANONICAL_SIZE, compose_affine, similarity_transform
from ..images import fit_within, load_gray
from ..preprocess import warp
from .data import Sample

#: Longer side face-free photos are shrunk to before anything is cut from them.
NEGATIVE_MAX_SIDE = 1024


def load_negatives(paths: Sequence[Path], max_side: int = NEGATIVE_MAX_SIDE) -> list[np.ndarray]:
    """The photos as (H, W) float32 gray in [0, 1], shrunk to ``max_side`` (area averaging)."""
    return [fit_within(load_gray(p), max_side) for p in paths]


def patch_crops(grays: Sequence[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 96, 96)`` square patches of random photos: side 24 px to the photo's shorter side, any rotation."""
    crops = []
    for _ in range(n):
        g = grays[rng.integers(len(grays))]
        h, w = g.shape
        side = rng.uniform(24, min(h, w))
        cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
        crops.append(warp(g, similarity_transform((cx, cy), CANONICAL_SIZE / side, rng.uniform(-180, 180)), CANONICAL_SIZE))
    return np.array(crops, dtype=np.float32).reshape(n, CANONICAL_SIZE, CANONICAL_SIZE)  # (0, 96, 96) for n = 0


def badly_framed_crops(samples: Sequence[Sample], n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 96, 96)`` crops of faces that miss the face: zoomed out 0.2-0.35x, zoomed in 2.5-4x on a
    part, or shifted 45-70 px (canonical frame), a third each."""
    c = CANONICAL_CENTER

    def miss() -> np.ndarray:
        kind = rng.integers(3)
        if kind == 0:
            return similarity_transform((c, c), rng.uniform(0.2, 0.35), rng.uniform(-30, 30))
        if kind == 1:
            return similarity_transform(c + rng.uniform(-30, 30, size=2), rng.uniform(2.5, 4.0))
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(45, 70)
        return similarity_transform((c + d * np.cos(a), c + d * np.sin(a)), rng.uniform(0.8, 1.2))

    return _reframed_faces(samples, n, rng, miss)


def upside_down_crops(samples: Sequence[Sample], n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 96, 96)`` crops of faces framed well but turned 120-240 degrees: what a face detector's wrong
    angle gives, and what re-framing on the points cannot undo (the network, trained on +/-25 degrees,
    places an upright-looking face on an upside-down one)."""
    c = (CANONICAL_CENTER, CANONICAL_CENTER)
    return _reframed_faces(samples, n, rng, lambda: similarity_transform(c, rng.uniform(0.9, 1.1), rng.uniform(120, 240)))


def _reframed_faces(samples: Sequence[Sample], n: int, rng: np.random.Generator,
                    perturbation: Callable[[], np.ndarray]) -> np.ndarray:
    """``(n, 96, 96)`` crops of random ``samples`` through ``perturbation()`` (canonical -> crop) of their frame."""
    crops = []
    for _ in range(n):
        s = samples[rng.integers(len(samples))]
        crops.append(warp(s.image.astype(np.float32) / 255, compose_affine(perturbation(), s.frame), CANONICAL_SIZE))
    return np.array(crops, dtype=np.float32).reshape(n, CANONICAL_SIZE, CANONICAL_SIZE)  # (0, 96, 96) for n = 0


def negative_crops(grays: Sequence[np.ndarray], samples: Sequence[Sample], n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 96, 96)`` crops without a framed face: two thirds :func:`patch_crops` of ``grays``, one third
    :func:`badly_framed_crops` of ``samples``."""
    faces = n // 3
    return np.concatenate([patch_crops(grays, n - faces, rng), badly_framed_crops(samples, faces, rng)])
