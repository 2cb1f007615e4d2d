"""Face-free photos (``../shared/data/negatives``) and the ones held out of every training step.

The held-out photos are never trained on (not by the presence model, not by a face detector): the
face-finding figures on face-free photos are measured on them.
"""

from __future__ import annotations

from pathlib import Path

#: Wallpapers of the negatives folder kept out of training, for the held-out false-face figures.
HELD_OUT_NEGATIVES = (
    "gnome-grid-l-grid-l.jpg",
    "gnome-licorice-d-licorice-d.jpg",
    "gnome-truchet-l-truchet-l.jpg",
    "gnome-wood-d-wood-d.jpg",
    "plasma-Autumn-1280x1024.jpg",
    "plasma-ColorfulCups-2560x1600.jpg",
    "plasma-FallenLeaf-1280x1024.jpg",
    "plasma-Kite-1280x1024.jpg",
    "plasma-Path-1280x1024.jpg",
    "plasma-Volna-5120x2880.jpg",
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def negative_paths(folder: str | Path, held_out: bool) -> list[Path]:
    """The face-free photos of ``folder`` (sorted): the :data:`HELD_OUT_NEGATIVES` with ``held_out``,
    else all the others (the training negatives). ``FileNotFoundError`` when ``folder`` has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"negatives folder not found: {folder}")
    photos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    chosen = [p for p in photos if (p.name in HELD_OUT_NEGATIVES) == held_out]
    if not chosen:
        which = "held-out" if held_out else "training"
        raise FileNotFoundError(f"{folder} holds no {which} negative photos ({', '.join(IMAGE_SUFFIXES)})")
    return chosen
