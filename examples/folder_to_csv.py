"""Batch-process a folder of photos into one CSV: a row per face, 15 keypoints in pixels.

    python examples/folder_to_csv.py FOLDER [-o faces.csv] [--weights W] [--device cpu]

Columns: image, face (0 = largest), score, box_x0..box_y1, then <keypoint>_x, <keypoint>_y for
the 15 keypoints (Kaggle's column names). Photos without a face get a row with empty fields.
The command line does the same with more options: ``facekp detect FOLDER --csv faces.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm import tqdm

from facekp import KEYPOINT_NAMES, Detector, InvalidImageError

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of photos (searched recursively)")
    parser.add_argument("-o", "--output", type=Path, default=Path("faces.csv"))
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    photos = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if not photos:
        parser.error(f"no photos in {args.folder}")
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists (pass --force to replace it)")

    detector = Detector(args.weights, device=args.device)
    header = ["image", "face", "score", "box_x0", "box_y0", "box_x1", "box_y1"]
    header += [f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in "xy"]
    n_faces = 0
    with args.output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for photo in tqdm(photos, unit="photo"):
            try:
                faces = detector.detect(photo)
            except InvalidImageError as exc:
                tqdm.write(f"skipping {photo}: {exc}")
                continue
            name = photo.relative_to(args.folder).as_posix()
            if not faces:
                writer.writerow([name] + [""] * (len(header) - 1))
            for i, face in enumerate(faces):
                writer.writerow([name, i, face.score, *(f"{v:.2f}" for v in face.box),
                                 *(f"{v:.2f}" for v in face.points.reshape(-1))])
            n_faces += len(faces)
    print(f"{n_faces} face(s) in {len(photos)} photo(s); wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
