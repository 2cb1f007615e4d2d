"""A small app on top of facekp: put sunglasses on every face of a photo, from the eye keypoints.

    python examples/sunglasses.py [PHOTO] [-o sunglasses.png] [--weights W] [--face-detector haar] [--device cpu]

Without PHOTO, uses facekp's sample group photo (the sample portrait at three sizes). The
glasses follow each face's eye centres and eye corners: centred on the eyes, as wide as the
outer eye corners (plus a margin), and tilted with the line between the eyes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facekp import KEYPOINT_NAMES, Detector
from facekp.images import load_rgb

K = {name: i for i, name in enumerate(KEYPOINT_NAMES)}


def put_on_sunglasses(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Draw sunglasses on ``image`` (RGB uint8, modified in place) for one face's (15, 2) points."""
    left, right = points[K["left_eye_center"]], points[K["right_eye_center"]]  # subject's left is image right
    outer_l, outer_r = points[K["left_eye_outer_corner"]], points[K["right_eye_outer_corner"]]
    d = float(np.linalg.norm(left - right))
    if not np.isfinite(d) or d < 2:
        return image
    angle = float(np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0])))
    lens_w = max(0.5 * d, 0.6 * float(np.linalg.norm(outer_l - outer_r)) - 0.25 * d)
    axes = (int(round(lens_w / 2 + 0.12 * d)), int(round(0.32 * d)))
    thick = max(1, int(round(d / 18)))
    glass = image.copy()
    for eye in (left, right):
        cv2.ellipse(glass, (int(round(eye[0])), int(round(eye[1]))), axes, angle, 0, 360, (20, 20, 30), -1, cv2.LINE_AA)
    image[:] = cv2.addWeighted(glass, 0.85, image, 0.15, 0)
    u = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])  # along the eye line
    for eye in (left, right):
        cv2.ellipse(image, (int(round(eye[0])), int(round(eye[1]))), axes, angle, 0, 360, (0, 0, 0), thick, cv2.LINE_AA)
    inner_r, inner_l = right + u * axes[0], left - u * axes[0]  # the lenses' inner edges
    cv2.line(image, tuple(int(v) for v in inner_r), tuple(int(v) for v in inner_l), (0, 0, 0), thick, cv2.LINE_AA)
    for eye, sign in ((left, 1), (right, -1)):  # temples
        start = eye + sign * u * axes[0]
        cv2.line(image, tuple(int(v) for v in start), tuple(int(v) for v in start + sign * u * 0.35 * d),
                 (0, 0, 0), thick, cv2.LINE_AA)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", nargs="?", type=Path, help="a photo (default: facekp's sample group photo)")
    parser.add_argument("-o", "--output", type=Path, default=Path("sunglasses.png"))
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
    result = image.copy()
    for face in faces:
        put_on_sunglasses(result, face.points)
    Image.fromarray(result).save(args.output)
    print(f"{len(faces)} face(s) wear sunglasses; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
