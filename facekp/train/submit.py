"""Kaggle "Facial Keypoints Detection" submissions from ``test.csv`` + ``IdLookupTable.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .. import fileio
from ..detector import Detector
from ..keypoints import KEYPOINT_NAMES
from .data import KAGGLE_IMAGE_SIDE, csv_rows, parse_kaggle_image


def write_submission(detector: Detector, test_csv: str | Path, lookup_csv: str | Path, out: str | Path) -> int:
    """Predict every test image and write ``RowId,Location`` rows for the lookup table.

    Kaggle images already are 96x96 face crops in the canonical frame, so points come
    straight from :meth:`Detector.predict_batch`, clipped to the image. Returns the row count.
    """
    out = fileio.check_output(out, inputs=[test_csv, lookup_csv])
    with open(test_csv, newline="") as f:
        rows = list(csv_rows(csv.DictReader(f), Path(test_csv)))
    for col in ("ImageId", "Image"):
        if rows and col not in rows[0]:
            raise ValueError(f"{test_csv} lacks the {col!r} column")
    ids = [int(r["ImageId"]) for r in rows]
    images = [parse_kaggle_image(r["Image"], f"{test_csv}, ImageId {i}") for r, i in zip(rows, ids)]
    points = np.clip(detector.predict_batch(images), 0.0, KAGGLE_IMAGE_SIDE)
    by_id = {i: p for i, p in zip(ids, points)}
    column = {f"{name}_{axis}": (k, a) for k, name in enumerate(KEYPOINT_NAMES) for a, axis in enumerate("xy")}
    submission = [["RowId", "Location"]]
    with open(lookup_csv, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("RowId", "ImageId", "FeatureName") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{lookup_csv} lacks the column(s) {missing}")
        for r in csv_rows(reader, Path(lookup_csv)):
            image_id, feature = int(r["ImageId"]), r["FeatureName"]
            if image_id not in by_id:
                raise ValueError(f"{lookup_csv}: ImageId {image_id} is not in {test_csv}")
            if feature not in column:
                raise ValueError(f"{lookup_csv}: unknown FeatureName {feature!r}")
            k, a = column[feature]
            submission.append([r["RowId"], f"{by_id[image_id][k, a]:.4f}"])
    # Written whole once every lookup row checked out: a bad table leaves no partial file behind.
    with fileio.atomic_path(out, inputs=[test_csv, lookup_csv]) as tmp, tmp.open("w", newline="") as g:
        csv.writer(g).writerows(submission)
    return len(submission) - 1
