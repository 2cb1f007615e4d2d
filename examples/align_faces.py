"""Face alignment from the 15 keypoints: every face of a photo cropped to one canonical pose.

    python examples/align_faces.py [PHOTO] [-o aligned.png] [--size 128] [--weights W]
        [--face-detector haar] [--device cpu]

Each face is rotated, scaled and moved (a similarity transform, least squares over all 15
points) onto a template face, so that eyes are level and at the same place in every crop: the
usual first step of face recognition or expression analysis. The crops are saved side by side.
Without PHOTO, uses facekp's sample group photo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facekp import Detector
from facekp.images import load_rgb

#: The 15 keypoints of an average upright face in a 96x96 crop (Kaggle order), scaled to --size.
TEMPLATE_96 = np.array([
    [66.4, 37.7], [30.3, 37.9], [59.2, 37.9], [73.1, 37.6], [36.7, 37.9], [22.4, 38.0], [56.1, 29.3],
    [79.5, 29.9], [39.6, 29.5], [15.9, 30.4], [48.4, 62.7], [63.3, 75.9], [32.9, 76.2], [48.0, 72.9],
    [48.6, 79.0]], dtype=np.float32)


def align(image: np.ndarray, points: np.ndarray, size: int = 128) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``image`` that puts ``points`` onto the template."""
    template = TEMPLATE_96 * (size / 96.0)
    m, _ = cv2.estimateAffinePartial2D(np.asarray(points, np.float32), template, method=cv2.LMEDS)
    if m is None:
        raise ValueError("could not fit a similarity transform to these points")
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, help="a photo (default: facekp's sample group photo)")
    parser.add_argument("-o", "--output", type=Path, default=Path("aligned.png"))
    parser.add_argument("--size", type=int, default=128, help="side of each aligned crop in pixels")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--face-detector", choices=("facekp", "haar"), default="facekp",
                        help="facekp's own face finder (any rotation) or OpenCV's Haar cascade (default: facekp)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    if args.photo is None:
        from facekp.data import group_photo

        image, _ = group_photo()
    else:
        if args.output.resolve() == args.photo.resolve():
            parser.error("the output would replace the input photo")
        image = load_rgb(args.photo)
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists (pass --force to replace it)")

    detector = Detector(args.weights, device=args.device)
    faces = detector.detect(image, face_detector=args.face_detector)
    if not faces:
        print("no face found; nothing written")
        return 1
    crops = [align(image, face.points, args.size) for face in faces]
    Image.fromarray(np.concatenate(crops, axis=1)).save(args.output)
    print(f"{len(crops)} aligned face(s); wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
