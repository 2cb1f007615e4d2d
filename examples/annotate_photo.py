"""Annotate a photo: find every face, draw its box and its 15 keypoints.

    python examples/annotate_photo.py [PHOTO] [-o annotated.png] [--names] [--weights W]
        [--face-detector haar] [--device cpu]

Without PHOTO, uses the sample portrait that ships with facekp.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from facekp import Detector, draw
from facekp.data import sample_photo_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, help="a photo (default: facekp's sample portrait)")
    parser.add_argument("-o", "--output", type=Path, default=Path("annotated.png"), help="the PNG to write")
    parser.add_argument("--names", action="store_true", help="label each keypoint")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--face-detector", choices=("facekp", "haar"), default="facekp",
                        help="facekp's own face finder (any rotation) or OpenCV's Haar cascade (default: facekp)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    photo = args.photo or sample_photo_path()
    if args.output.resolve() == Path(photo).resolve():
        parser.error("the output would replace the input photo")
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists (pass --force to replace it)")

    detector = Detector(args.weights, device=args.device)
    faces = detector.detect(photo, face_detector=args.face_detector)  # largest face first
    print(f"{photo}: {len(faces)} face(s)")
    for i, face in enumerate(faces):
        left_eye, right_eye = face.points[0], face.points[1]
        print(f"  face {i}: box {tuple(round(v) for v in face.box)}, eyes at "
              f"({left_eye[0]:.1f}, {left_eye[1]:.1f}) and ({right_eye[0]:.1f}, {right_eye[1]:.1f}), "
              f"mean confidence {face.confidence.mean():.2f}")
    Image.fromarray(draw(photo, faces, names=args.names)).save(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
