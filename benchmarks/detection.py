"""Keypoints on whole photos: face detection rate and NME, per faces68 subset.

    python benchmarks/detection.py --weights MODEL [--data ../shared/data/faces68] [--fit]
                                   [--refine 0 1 2] [--limit N]

Splits faces68 by identity exactly as training does (``split_by_identity(samples, 0.15, seed=0)``).
With ``--fit``, fits the Haar box calibration on the training split and prints it (the JSON that
``facekp/data/haar_calibration.json`` holds); then, on the validation photos, runs the face
detector, matches its boxes to the annotated face (``facekp.calibration.match_face``), and reports the
detection rate and the NME (mean keypoint error / eye-centre distance, as ``keypoint_metrics``)
of the detected faces, for each number of refining passes; the last row of each table frames
the faces with the ground truth (the canonical frame of the annotated points), the ceiling the
face detector's framing is measured against. With a model that has a presence model, a second
table counts a face as found only when its presence (after the default refine) passes ``detect``'s
default ``min_presence``, as ``detect`` does. Prints markdown for docs/detection.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "faces68"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="model (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fit", action="store_true", help="fit the box calibration on the training split first")
    parser.add_argument("--refine", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit", type=int, help="only the first N validation photos (smoke runs)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from facekp import Detector
    from facekp.detector import DEFAULT_REFINE
    from facekp.presence import DEFAULT_MIN_PRESENCE
    from facekp.calibration import fit_box_calibration, match_face, resolve_calibration
    from facekp.face_detection import HaarFaceDetector, run_face_detector
    from facekp.geometry import canonical_transform
    from facekp.train.data import load_pts_folder, split_by_identity
    from facekp.train.evaluate import keypoint_metrics

    samples = load_pts_folder(args.data)
    train, val = split_by_identity(samples, 0.15, seed=0)
    if args.limit:
        val = val[: args.limit]
    face_detector = HaarFaceDetector()
    det = Detector(args.weights, device=args.device)
    calibration = None
    if args.fit:
        t = time.perf_counter()
        calibration = fit_box_calibration(train, face_detector)
        print(f"calibration fitted on {len(train)} training photos in {time.perf_counter() - t:.0f} s:")
        print(json.dumps(calibration.to_dict(), indent=2))
    calibration = resolve_calibration(det, face_detector, calibration)

    subsets = sorted({s.subset for s in val})
    found = {name: [] for name in subsets}
    runs = {r: {name: ([], [], []) for name in subsets} for r in [*args.refine, "truth"]}
    t_detect = t_predict = 0.0
    present = {name: [] for name in subsets}  # per photo: found and its presence passes (when the model has one)
    kept = {name: ([], [], []) for name in subsets}  # points, truth, mask of those faces
    for s in val:
        t = time.perf_counter()
        boxes, _, _ = run_face_detector(face_detector, s.image)
        t_detect += time.perf_counter() - t
        i = match_face(boxes, s.points, s.mask)
        found[s.subset].append(i is not None)
        if i is None:
            continue
        gray = s.image.astype(np.float32) / 255.0
        for r in args.refine:
            t = time.perf_counter()
            pts, _ = det.predict_refined(gray, calibration.frame(boxes[i])[None], r)
            t_predict += time.perf_counter() - t
            for lst, v in zip(runs[r][s.subset], (pts[0], s.points, s.mask)):
                lst.append(v)
        if det.presence_model is not None:
            pts, conf = det.predict_refined(gray, calibration.frame(boxes[i])[None], DEFAULT_REFINE)
            ok = det.presence(pts, conf)[0] >= DEFAULT_MIN_PRESENCE
            present[s.subset].append(ok)
            if ok:
                for lst, v in zip(kept[s.subset], (pts[0], s.points, s.mask)):
                    lst.append(v)
        pts, _ = det.predict_framed([gray], canonical_transform(s.points, s.mask)[None])
        for lst, v in zip(runs["truth"][s.subset], (pts[0], s.points, s.mask)):
            lst.append(v)

    print(f"\n{len(val)} validation photos; face detector {face_detector!r}: {1000 * t_detect / len(val):.0f} ms/photo\n")
    print("| subset | photos | faces found | " + " | ".join(_label(r) for r in runs) + " |")
    print("|---|---|---|" + "---|" * len(runs))
    rows = subsets + ["all"]
    for name in rows:
        names = subsets if name == "all" else [name]
        f = sum((found[n] for n in names), [])
        cells = []
        for r in runs:
            pred = sum((runs[r][n][0] for n in names), [])
            if not pred:
                cells.append("-")
                continue
            truth = sum((runs[r][n][1] for n in names), [])
            mask = sum((runs[r][n][2] for n in names), [])
            m = keypoint_metrics(np.stack(pred), np.stack(truth), np.stack(mask))
            cells.append(f"{100 * m['nme']:.2f}%")
        print(f"| {name} | {len(f)} | {100 * np.mean(f):.1f}% | " + " | ".join(cells) + " |")
    if det.presence_model is not None:
        print(f"\nWith detect's presence filter (min_presence {DEFAULT_MIN_PRESENCE}, refine={DEFAULT_REFINE}):\n")
        print("| subset | photos | faces found | found, presence kept | NME of those |")
        print("|---|---|---|---|---|")
        for name in rows:
            names = subsets if name == "all" else [name]
            f = sum((found[n] for n in names), [])
            ok = sum(sum(present[n]) for n in names)
            pred, truth, mask = (sum((kept[n][j] for n in names), []) for j in range(3))
            nme = keypoint_metrics(np.stack(pred), np.stack(truth), np.stack(mask))["nme"] if pred else float("nan")
            print(f"| {name} | {len(f)} | {100 * np.mean(f):.1f}% | {100 * ok / len(f):.1f}% | {100 * nme:.2f}% |")
    return 0


def _label(r) -> str:
    return "NME, ground-truth frame" if r == "truth" else f"NME, refine={r}"


if __name__ == "__main__":
    sys.exit(main())
