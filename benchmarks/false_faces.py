"""False faces of ``Detector.detect`` on face-free photos, before and after the presence filter.

    python benchmarks/false_faces.py [--negatives ../shared/data/negatives] [--crops 4] [--weights MODEL]

Runs on the held-out negatives only (``facekp.train.negatives.HELD_OUT_NEGATIVES``: never trained on
by the presence model), whole and as ``--crops`` random 640x480 crops of each. For each Haar setting,
counts the faces ``detect`` returns per photo with ``min_presence=0`` (no filter) and with the
default threshold, and the time per photo. Prints markdown for docs/detection.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NEGATIVES = ROOT.parent / "shared" / "data" / "negatives"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--negatives", type=Path, default=DEFAULT_NEGATIVES)
    parser.add_argument("--crops", type=int, default=4, help="random 640x480 crops per photo (0: whole photos only)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from facekp import Detector, HaarFaceDetector
    from facekp.images import load_rgb
    from facekp.presence import DEFAULT_MIN_PRESENCE
    from facekp.train.negatives import negative_paths

    det = Detector(args.weights, device=args.device)
    if det.presence_model is None:
        print("these weights have no presence model; nothing to compare", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    photos, crops = [], []
    for path in negative_paths(args.negatives, held_out=True):
        rgb = load_rgb(path)
        photos.append(rgb)
        h, w = rgb.shape[:2]
        for _ in range(args.crops):
            y, x = rng.integers(0, h - 480 + 1), rng.integers(0, w - 640 + 1)
            crops.append(rgb[y : y + 480, x : x + 640])
    settings = {"Haar default": HaarFaceDetector(), "Haar angles=(-30, 0, 30)": HaarFaceDetector(angles=(-30, 0, 30))}
    print(f"\nheld-out face-free photos: {len(photos)} whole, {len(crops)} crops of 640x480; "
          f"min_presence {DEFAULT_MIN_PRESENCE}\n")
    print("| face detector | photos | false faces / photo, no filter | with min_presence | presence of the false faces (max) | ms / photo |")
    print("|---|---|---|---|---|---|")
    for name, fd in settings.items():
        for kind, images in (("whole", photos), ("640x480 crops", crops)):
            if not images:
                continue
            all_faces, t = [], time.perf_counter()
            for img in images:
                all_faces.append(det.detect(img, face_detector=fd, min_presence=0))
            ms = 1000 * (time.perf_counter() - t) / len(images)
            presence = [f.presence for faces in all_faces for f in faces]
            kept = sum(p >= DEFAULT_MIN_PRESENCE for p in presence)
            top = f"{max(presence):.3f}" if presence else "-"
            print(f"| {name} | {len(images)} {kind} | {len(presence) / len(images):.2f} | {kept / len(images):.2f} | {top} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
