"""Training data: 68-point 300-W folders and Kaggle ``training.csv``, as 15-keypoint samples."""

from __future__ import annotations

import csv
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import validate
from ..errors import InvalidImageError
from ..images import open_image
from ..keypoints import KEYPOINT_NAMES, NUM_KEYPOINTS
from ..geometry import canonical_transform

#: iBUG/300-W 68-point indices (0-based) for each of the 15 keypoints; a tuple is averaged.
IBUG68_TO_15: tuple[tuple[int, ...], ...] = (
    tuple(range(42, 48)),  # left_eye_center
    tuple(range(36, 42)),  # right_eye_center
    (42,),  # left_eye_inner_corner
    (45,),  # left_eye_outer_corner
    (39,),  # right_eye_inner_corner
    (36,),  # right_eye_outer_corner
    (22,),  # left_eyebrow_inner_end
    (26,),  # left_eyebrow_outer_end
    (21,),  # right_eyebrow_inner_end
    (17,),  # right_eyebrow_outer_end
    (30,),  # nose_tip
    (54,),  # mouth_left_corner
    (48,),  # mouth_right_corner
    (51,),  # mouth_center_top_lip
    (57,),  # mouth_center_bottom_lip
)

KAGGLE_IMAGE_SIDE = 96


@dataclass
class Sample:
    """One annotated face.

    ``image`` is (H, W) uint8 grayscale; ``points`` (15, 2) float32 pixel-centre coordinates in
    it; ``mask`` (15,) bool, False for missing keypoints; ``frame`` the 2x3 affine from image
    pixels to the canonical 96x96 Kaggle frame.
    """

    image: np.ndarray
    points: np.ndarray
    mask: np.ndarray
    frame: np.ndarray
    subset: str = ""
    identity: str = ""
    name: str = field(default="", compare=False)


def map_68_to_15(points68: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG landmarks -> (15, 2) facekp keypoints."""
    points68 = np.asarray(points68, dtype=np.float64)
    if points68.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got shape {points68.shape}")
    return np.stack([points68[list(idx)].mean(axis=0) for idx in IBUG68_TO_15]).astype(np.float32)


def read_pts(path: Path) -> np.ndarray:
    """Read a 300-W ``.pts`` file into an (n_points, 2) array."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    try:
        start, end = lines.index("{"), lines.index("}")
        header = dict(ln.split(":", 1) for ln in lines[:start])
        n = int(header["n_points"])
        pts = np.array([[float(v) for v in ln.split()] for ln in lines[start + 1 : end]], dtype=np.float64)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a valid 300-W .pts file ({exc})") from exc
    if pts.shape != (n, 2):
        raise ValueError(f"{path} declares {n} points; expected {n} lines of 'x y', found {len(pts)} lines"
                         + (f" of {pts.shape[1]} values" if pts.ndim == 2 else ""))
    return pts


def load_pts_folder(root: str | Path, subsets: tuple[str, ...] | None = None) -> list[Sample]:
    """Every ``NAME.jpg`` (or .png) with a 68-point ``NAME.pts`` beside it, under ``root``.

    Uses ``root/index.csv`` (columns ``image``, ``subset``, ``identity``) when present;
    otherwise walks the tree, taking the first folder level as the subset and the file stem, less
    a trailing ``_NUMBER`` (a video frame's or a photo's face index: ``Name_07``, ``1051618982_1``),
    as the identity, so that frames of one person stay on one side of the split. An image the
    index lists more than once is loaded once (with a warning): a repeated face would count twice
    in training and in the validation metrics.

    A face whose image or ``.pts`` file cannot be read, or whose labels are unusable (NaN,
    far outside the image, all on one spot), is skipped with a warning that names it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    index = root / "index.csv"
    if index.exists():
        with index.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("image", "subset", "identity") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{index} lacks the column(s) {missing}; expected image, subset and identity")
            listed = [(root / r["image"], r["subset"], r["identity"]) for r in csv_rows(reader, index)]
        rows = list(dict.fromkeys(listed))  # exact repeats dropped, order kept
        seen: set[Path] = set()
        for image, _, _ in rows:
            if image in seen:
                raise ValueError(f"{index} lists {image.relative_to(root)} under two subsets or identities")
            seen.add(image)
        if len(rows) < len(listed):
            warnings.warn(f"{index} lists {len(listed) - len(rows)} images more than once; each is loaded once", stacklevel=2)
    else:
        rows = []
        for pts in sorted(root.rglob("*.pts")):
            image = next((pts.with_suffix(ext) for ext in (".jpg", ".png", ".jpeg") if pts.with_suffix(ext).exists()), None)
            if image is not None:
                rel = image.relative_to(root)
                rows.append((image, rel.parts[0] if len(rel.parts) > 1 else "", re.sub(r"_\d+$", "", rel.stem)))
    samples, skipped = [], []
    for image_path, subset, identity in rows:
        if subsets and subset not in subsets:
            continue
        try:
            samples.append(_pts_sample(root, image_path, subset, identity))
        except (ValueError, OSError) as exc:  # InvalidImageError is a ValueError
            skipped.append(f"{image_path.relative_to(root)} ({exc})")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable face(s) under {root}: {'; '.join(skipped[:5])}"
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    if not samples:
        raise ValueError(f"no annotated faces found under {root}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return samples


def _pts_sample(root: Path, image_path: Path, subset: str, identity: str) -> Sample:
    """One face of a .pts folder: its labels checked, its image checked before decoding (facekp.images)."""
    points68 = read_pts(image_path.with_suffix(".pts"))
    with open_image(image_path) as im:
        try:
            gray = np.asarray(im.convert("L"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt pixel data
            raise InvalidImageError(f"cannot decode {image_path} ({exc})") from None
    validate.keypoints(points68, np.ones(len(points68), bool), gray.shape[1], gray.shape[0], str(image_path.with_suffix(".pts")))
    points = map_68_to_15(points68)
    mask = np.ones(NUM_KEYPOINTS, dtype=bool)
    validate.keypoints(points, mask, gray.shape[1], gray.shape[0], str(image_path.with_suffix(".pts")))
    return Sample(gray, points, mask, canonical_transform(points), subset, identity, str(image_path.relative_to(root)))


def csv_rows(reader: csv.DictReader, path: Path):
    """The rows of ``reader``; a malformed file (e.g. a field over csv's 131,072-character limit)
    raises ``ValueError`` naming ``path`` and the line."""
    try:
        yield from reader
    except csv.Error as exc:
        raise ValueError(f"{path}, line {reader.line_num}: {exc}; is this the expected CSV file?") from None


KAGGLE_COLUMNS: tuple[str, ...] = tuple(f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in "xy")


def parse_kaggle_image(text: str, where: str) -> np.ndarray:
    """Kaggle's ``Image`` field: 9216 space-separated 0-255 values -> (96, 96) uint8.

    Non-integer values are rounded to the nearest integer.
    """
    tokens = text.split()
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise ValueError(f"{where}: Image holds {bad[:20]!r}; expected {KAGGLE_IMAGE_SIDE**2} space-separated "
                         "numbers in [0, 255]") from None
    if values.size != KAGGLE_IMAGE_SIDE**2:
        raise ValueError(f"{where}: Image has {values.size} pixel values, expected {KAGGLE_IMAGE_SIDE**2}")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise ValueError(f"{where}: pixel values must be finite numbers in [0, 255]")
    return np.rint(values).reshape(KAGGLE_IMAGE_SIDE, KAGGLE_IMAGE_SIDE).astype(np.uint8)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kaggle_coordinate(row: dict, column: str, where: str) -> float:
    """One coordinate cell: a finite number, or empty (or 'nan') where the keypoint is missing."""
    text = row[column].strip()
    if not text:
        return np.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} is {text[:20]!r}; expected a number, or nothing where missing") from None
    if np.isinf(value):
        raise ValueError(f"{where}: {column} is {text!r}; expected a finite number")
    return value


def load_kaggle_csv(path: str | Path) -> list[Sample]:
    """Kaggle ``training.csv``: 30 coordinate columns (empty where missing) and ``Image``.

    Missing keypoints get ``mask`` False (masked out of the loss, never imputed). Kaggle
    images already are in the canonical frame, so ``frame`` is the identity. Each row is its
    own identity (the CSV does not tell who is who).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in (*KAGGLE_COLUMNS, "Image") if c not in columns]
        if missing:
            raise ValueError(f"{path} lacks Kaggle columns {missing}")
        samples = []
        for i, row in enumerate(csv_rows(reader, path)):
            where = f"{path}, row {i + 2}"
            if None in row or None in row.values():  # DictReader's marks of extra / missing fields
                fields = len(columns) + len(row.get(None, [])) - sum(v is None for v in row.values())
                raise ValueError(f"{where}: {fields} fields, expected {len(columns)} (one per header column)")
            coords = np.array([_kaggle_coordinate(row, c, where) for c in KAGGLE_COLUMNS])
            points = coords.reshape(NUM_KEYPOINTS, 2)
            mask = ~np.isnan(points).any(axis=1)
            validate.keypoints(points, mask, KAGGLE_IMAGE_SIDE, KAGGLE_IMAGE_SIDE, where)
            image = parse_kaggle_image(row["Image"], where)
            samples.append(
                Sample(image, np.nan_to_num(points).astype(np.float32), mask, np.eye(2, 3), "kaggle", f"row{i}", where)
            )
    return samples


def load_dataset(path: str | Path, subsets: tuple[str, ...] | None = None) -> list[Sample]:
    """A Kaggle CSV file or a folder of 68-point ``.pts`` annotations."""
    path = Path(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return load_kaggle_csv(path)
    return load_pts_folder(path, subsets)


def split_by_identity(samples: list[Sample], val_fraction: float = 0.15, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Split so that no identity is on both sides; reproducible for a given seed.

    Each identity goes to validation when a seeded hash of it falls below ``val_fraction``,
    so the split does not depend on the order of the samples, nor on which other faces exist.
    """

    def draw(identity: str) -> float:
        digest = hashlib.sha256(f"{seed}:{identity}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    train, val = [], []
    for s in samples:
        (val if draw(f"{s.subset}/{s.identity}") < val_fraction else train).append(s)
    return train, val
