"""Batch-process a folder of photos into one CSV: a row per face, 15 keypoints in pixels.

    python examples/folder_to_csv.py FOLDER [-o faces.csv] [--weights W] [--face-detector haar] [--device cpu]

The layout is the one of ``facekp detect FOLDER -r --csv faces.csv`` (which does the same with
more options), documented in ``facekp.table``: image, face (0 = largest), score, angle,
box_x0..box_y1, then <keypoint>_x, <keypoint>_y, <keypoint>_confidence for the 15 keypoints, and
error. A photo without a face gets one row with only its name, an unreadable one its error.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm import tqdm

from facekp import Detector, InvalidImageError
from facekp.table import CSV_COLUMNS, csv_rows

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of photos (searched recursively)")
    parser.add_argument("-o", "--output", type=Path, default=Path("faces.csv"))
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--face-detector", choices=("facekp", "haar"), default="facekp",
                        help="facekp's own face finder (any rotation) or OpenCV's Haar cascade (default: facekp)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    photos = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not photos:
        parser.error(f"no photos in {args.folder}")
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists (pass --force to replace it)")

    detector = Detector(args.weights, device=args.device)
    n_faces = 0
    with args.output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for photo in tqdm(photos, unit="photo", disable=None):  # disable=None: a bar on a terminal only
            name = photo.relative_to(args.folder).as_posix()
            try:
                faces = detector.detect(photo, face_detector=args.face_detector)
            except InvalidImageError as exc:
                writer.writerows(csv_rows({"image": name, "error": str(exc)}))
                continue
            writer.writerows(csv_rows({"image": name, "faces": [face.to_dict() for face in faces]}))
            n_faces += len(faces)
    print(f"{n_faces} face(s) in {len(photos)} photo(s); wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
