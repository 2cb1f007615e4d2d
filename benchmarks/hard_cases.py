"""A picture of the face-finding benchmark's hard cases: the same photos through each face detector.

    python benchmarks/hard_cases.py [--out docs/face-finding-cases.png] [--detectors haar facekp] [--force]

Columns: validation photos turned by 30, 60 and 90 degrees, a composed group with small faces and a
held-out face-free photo (the kinds of ``benchmarks/face_finding.py``, validation identities only);
one row per face detector, every face ``Detector.detect`` returns drawn with its box and points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from face_finding import DATA, ROOT, _groups, _turn

#: Validation photos (their index) and the angle each is turned by (degrees, counter-clockwise).
TURNS = ((3, 30.0), (11, -60.0), (25, 90.0))
TILE = 300  # px, each cell's side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "faces68")
    parser.add_argument("--negatives", type=Path, default=DATA / "negatives")
    parser.add_argument("--detectors", nargs="+", default=["haar", "facekp"])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "face-finding-cases.png")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    from facekp import Detector, draw, fileio

    fileio.check_output(args.out, overwrite=args.force)  # refused before any work
    from facekp.train.data import load_pts_folder, split_by_identity
    from facekp.train.negatives import negative_paths
    from facekp.train.scenes import load_gray_u8

    _, val = split_by_identity(load_pts_folder(args.data), 0.15, seed=0)
    negatives = [load_gray_u8(p) for p in negative_paths(args.negatives, held_out=True)]
    photos = [_turn(val[i].image, val[i].points, angle)[0] for i, angle in TURNS]
    photos.append(_groups(val, negatives, 1)[0][0])
    photos.append(cv2.resize(negatives[1], (TILE * 4 // 3, TILE), interpolation=cv2.INTER_AREA))
    detector = Detector(device="cpu")
    rows = []
    for name in args.detectors:
        cells = []
        for photo in photos:
            faces = detector.detect(photo, face_detector=name)
            cell = _fit(draw(photo, faces), TILE)
            cv2.putText(cell, f"{name}: {len(faces)} face(s)", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 1,
                        cv2.LINE_AA)
            cells.append(cell)
        rows.append(np.concatenate(cells, axis=1))
    _, png = cv2.imencode(".png", cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    fileio.write_bytes(args.out, png.tobytes(), overwrite=args.force)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    """``rgb`` shrunk (or grown) into a ``side`` x ``side`` black square, centred."""
    h, w = rgb.shape[:2]
    f = side / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    out = np.zeros((side, side, 3), np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    return out


if __name__ == "__main__":
    sys.exit(main())
