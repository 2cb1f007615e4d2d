"""Synthetic faces for training tests: bright blobs at keypoint positions, no real data needed."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from facekp.train.data import KAGGLE_COLUMNS

# Approximate Kaggle mean face (96x96 canonical frame), Kaggle keypoint order.
MEAN_FACE = np.array(
    [[66.4, 37.7], [30.3, 37.9], [59.2, 37.9], [73.1, 37.6], [36.7, 37.9], [22.4, 38.0], [56.1, 29.3],
     [79.5, 29.9], [39.6, 29.5], [15.9, 30.4], [48.4, 62.7], [63.3, 75.9], [32.9, 76.2], [48.0, 72.9],
     [48.6, 79.0]], dtype=np.float32)


def blob_image(pts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) uint8 image with a Gaussian blob at each point of ``pts``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.full((size, size), 40.0, np.float32) + rng.normal(0, 4, (size, size)).astype(np.float32)
    for k, (x, y) in enumerate(pts):
        img += (120 + 5 * k) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def blob_face(rng: np.random.Generator, size: int = 96, jitter: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A blob image at 15 jittered mean-face keypoints, and those keypoints."""
    pts = MEAN_FACE * (size / 96.0) + rng.normal(0, jitter, MEAN_FACE.shape).astype(np.float32)
    return blob_image(pts, size, rng), pts


def write_kaggle_csv(path: Path, n: int, seed: int = 0, missing: float = 0.0, with_points: bool = True) -> list[np.ndarray]:
    """A Kaggle-format CSV of ``n`` blob faces; ``missing`` is the fraction of blank keypoints."""
    rng = np.random.default_rng(seed)
    truth = []
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*KAGGLE_COLUMNS, "Image"] if with_points else ["ImageId", "Image"])
        for i in range(n):
            img, pts = blob_face(rng)
            truth.append(pts)
            pixels = " ".join(str(int(v)) for v in img.ravel())
            if not with_points:
                writer.writerow([i + 1, pixels])
                continue
            cells = []
            for k, (x, y) in enumerate(pts):
                blank = k > 1 and rng.random() < missing  # keep both eyes so every row is usable
                cells += ["", ""] if blank else [f"{x:.4f}", f"{y:.4f}"]
            writer.writerow([*cells, pixels])
    return truth


def write_pts_folder(root: Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """A 300-W style folder: ``sub/NAME.jpg`` + 68-point ``NAME.pts``; returns the 15-point truths."""
    from facekp.train.data import map_68_to_15

    rng = np.random.default_rng(seed)
    truth = []
    for i in range(n):
        pts68 = rng.uniform(20, 140, (68, 2))
        pts15 = map_68_to_15(pts68)
        truth.append(pts15)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"face{i}.png"), blob_image(pts15, 160, rng))
        lines = ["version: 1", "n_points: 68", "{", *(f"{x:.3f} {y:.3f}" for x, y in pts68), "}"]
        (folder / f"face{i}.pts").write_text("\n".join(lines) + "\n")
    return truth


def write_negatives_folder(folder: Path, names: tuple[str, ...], seed: int = 0) -> Path:
    """A folder of blurred-noise "face-free photos" (160x200), one per name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        cv2.imwrite(str(folder / name), cv2.GaussianBlur(rng.uniform(0, 255, size=(160, 200)).astype(np.uint8), (0, 0), 2))
    return folder
