"""Files shipped with facekp, and sample photos for examples and tests (no network needed).

* ``grace_hopper.jpg``: official US Navy portrait of Rear Admiral Grace M. Hopper (1984), a work
  of the US federal government in the public domain; the copy that Matplotlib ships as sample data.
* ``haar_calibration.json``: the box -> canonical frame calibration fitted for OpenCV's
  frontal-face Haar cascade
  (see ``docs/detection.md``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np


def data_path(name: str) -> Path:
    """Path of a file shipped in ``facekp/data``."""
    path = Path(str(resources.files("facekp") / "data" / name))
    if not path.exists():
        raise FileNotFoundError(f"facekp ships no data file {name!r}")
    return path


def sample_photo_path() -> Path:
    """Path of the sample portrait (one frontal face, 512x600 RGB JPEG)."""
    return data_path("grace_hopper.jpg")


def sample_photo() -> np.ndarray:
    """The sample portrait as an (600, 512, 3) uint8 RGB array."""
    from PIL import Image

    with Image.open(sample_photo_path()) as im:
        return np.asarray(im.convert("RGB"))


def group_photo(
    scales: tuple[float, ...] = (1.0, 0.6, 0.4),
    size: tuple[int, int] = (1100, 600),
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A synthetic group photo: the sample portrait pasted at several ``scales`` side by side.

    Returns the (H, W, 3) uint8 RGB image (``size`` is (W, H)) and, for each copy, the box of
    the region it was pasted into (``x0, y0, x1, y1`` in pixel-centre convention), left to right.
    The background is smooth noise, so it holds no face-like structure.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    cells = (max(2, h // 40), max(2, w // 40))
    noise = rng.uniform(90, 170, (*cells, 1)) + rng.uniform(-15, 15, (*cells, 3))  # muted, smooth colours
    noise = noise.astype(np.float32)
    canvas = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    photo = sample_photo()
    x, regions = 10, []
    for s in scales:
        pw, ph = max(1, round(photo.shape[1] * s)), max(1, round(photo.shape[0] * s))
        if x + pw > w or ph > h:
            raise ValueError(f"the copies at scales {scales} do not fit in {size}")
        y = (h - ph) // 2
        canvas[y : y + ph, x : x + pw] = cv2.resize(photo, (pw, ph), interpolation=cv2.INTER_AREA)
        regions.append((x - 0.5, y - 0.5, x + pw - 0.5, y + ph - 0.5))
        x += pw + 20
    return canvas, regions
