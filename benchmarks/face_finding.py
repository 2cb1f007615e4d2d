"""Finding faces in whole photos: recall, NME, false faces and time, per kind of photo and face detector.

    python benchmarks/face_finding.py [--data ../shared/data/faces68] [--negatives ../shared/data/negatives]
                                      [--detectors haar haar3 facekp dlib mediapipe] [--limit N] [--groups 60]
                                      [--threads 2] [--weights W] [--precision auto|int8] [--min-presence P]
                                      [--presence-sweep P [P ...]] [--dlib-python PY] [--mediapipe-python PY]

Everything is measured on faces that never reached training: the validation identities of the
keypoint model's split (``split_by_identity(samples, 0.15, seed=0)``) and the negatives held out
of the finder's training (``facekp.train.negatives.HELD_OUT_NEGATIVES``). Kinds:

- ``photos``: the validation photos as they are (one annotated face each);
- ``turned``: the same photos turned by 15-90 degrees (either way), the canvas grown to hold them;
- ``groups``: composed scenes (512x512) of 3-10 nearly upright (+/-10 degrees) validation faces
  on held-out negatives, eye distance from 8 px up (the finder's training composer, so this kind
  flatters it), and the faces of 10-25 px eye distance among them (:data:`SMALL`, the issue's band for
  small faces; until 2026-12-04 8-25 px) as ``small``; the composer lets
  faces cross the scene's border (28% of them have points outside it, 11% their centroid), so
  ``whole faces`` counts again only the faces with all 15 points inside the scene, and ``readable
  faces`` only the whole faces the keypoint network reads when framed by their own annotated points
  (NME at most :data:`READABLE_NME`): the composer blurs, noises and darkens some faces past reading,
  and this is the share a face finder and ``detect``'s gates can be asked to find;
- ``negatives``: the held-out negatives, whole and in quarters (face-free);
- ``views``: ``--views`` random views of each held-out negative (a crop of 25-100% of its side,
  scaled to a longer side of 320, 640 or 1280 px, quarter-turned, mirrored half of the time): 50
  photos cannot tell 0.01 false faces per photo from 0 (one false face is 0.02), 550 views can.

A face counts as found when the keypoint centroid of a face ``Detector.detect`` returns lies
within half its eye distance of the annotated centroid; NME is the mean point error of found faces
over their eye distance. ``ms`` is the median time of ``Detector.detect`` on one validation face
pasted on a held-out negative photo (:data:`TIMING_BACKGROUND`) of 640x480 and of 1920x1080.
Prints a markdown table.

The peers run the same photos (written as PNG files) in their own virtualenvs
(``benchmarks/peers/setup.sh``): ``dlib`` is dlib's HOG detector (upsampled once) + its 68-point
predictor, mapped to the 15 points as the annotations were (``map_68_to_15``); ``mediapipe`` is
MediaPipe Face Mesh (BlazeFace + mesh, up to 10 faces), its 468 vertices mapped to the 15 points by
the vertex choice ``peer_results.fit_mediapipe_mapping`` makes on 200 training faces. Their ``ms``
is the whole-photo time (detection + landmarks) on the same two timing photos.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
#: The held-out negative (a photo of a path through a field) the timing photos are made of.
TIMING_BACKGROUND = "plasma-Path-1280x1024.jpg"
#: A group face is readable when the keypoint network, framed by the face's annotated points, places them
#: within this mean error (in eye distances): the ceiling the network itself sets on what detect can return.
READABLE_NME = 0.10
#: The eye distances (px) of the ``small`` faces, both ends included.
SMALL = (10.0, 25.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "faces68")
    parser.add_argument("--negatives", type=Path, default=DATA / "negatives")
    parser.add_argument("--detectors", nargs="+", default=["haar", "haar3", "facekp"], choices=[*DETECTORS, *PEERS])
    parser.add_argument("--finder", type=Path, help="a face finder .safetensors file (default: the bundled one)")
    parser.add_argument("--min-score", type=float, help="the finder's threshold (default: its weights' own)")
    parser.add_argument("--face-check", default="bundled",
                        help="detect's face check: 'bundled' (default), 'none', or a .safetensors file from "
                             "'facekp-train face-check'")
    parser.add_argument("--min-presence", type=float, help="detect's presence threshold (default: detect's own)")
    parser.add_argument("--presence-sweep", type=float, nargs="+", metavar="P",
                        help="instead of the table: recall and false faces of the facekp finder at these presence "
                             "thresholds (one detect pass with min_presence=0, so without the turns)")
    parser.add_argument("--limit", type=int, help="only the first N validation photos (smoke runs)")
    parser.add_argument("--groups", type=int, default=60, help="composed group scenes")
    parser.add_argument("--views", type=int, default=55, help="random face-free views per held-out negative")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--weights", help="keypoint weights (a model folder or .safetensors; default: the bundled model)")
    parser.add_argument("--precision", default="auto", choices=("auto", "int8"),
                        help="the keypoint network's: auto (torch fp32 on the CPU) or int8 (the bundled quantized graph)")
    parser.add_argument("--timing-only", action="store_true", help="only the ms columns (e.g. again on an idle machine)")
    parser.add_argument("--dlib-python", default="/work/peers/dlib-venv/bin/python", help="the dlib venv's python")
    parser.add_argument("--mediapipe-python", default="/work/peers/mediapipe-venv/bin/python", help="the MediaPipe venv's python")
    args = parser.parse_args(argv)

    import torch

    from facekp import Detector
    from facekp.train.data import load_pts_folder, split_by_identity
    from facekp.train.negatives import negative_paths
    from facekp.train.scenes import load_gray_u8

    if args.threads:
        torch.set_num_threads(args.threads)
    train, val = split_by_identity(load_pts_folder(args.data), 0.15, seed=0)
    val = val[: args.limit] if args.limit else val
    held_out = negative_paths(args.negatives, held_out=True)
    negatives = [load_gray_u8(p) for p in held_out]
    kinds = {
        "photos": [(s.image, s.points[None]) for s in val],
        "turned": [_turned(s.image, s.points, i) for i, s in enumerate(val)],
        "groups": _groups(val, negatives, args.groups),
        "negatives": [(p, np.zeros((0, 15, 2), np.float32)) for n in negatives for p in _quarters(n)],
        "views": [(v, np.zeros((0, 15, 2), np.float32)) for v in _views(negatives, args.views)],
    }
    background = negatives[[p.name for p in held_out].index(TIMING_BACKGROUND)]
    timing = {size: _timing_photo(val[0], background, size) for size in ((640, 480), (1920, 1080))}
    face_check = {"bundled": True, "none": False}.get(args.face_check, args.face_check)
    detector = Detector(args.weights, device="cpu", precision=args.precision, threads=args.threads, face_check=face_check)
    readable = _readable(detector, kinds["groups"])
    print(f"{len(val)} validation photos, {args.groups} group scenes, {len(kinds['negatives'])} face-free photos, "
          f"{len(kinds['views'])} face-free views; "
          f"torch threads {torch.get_num_threads()}; keypoints {detector.backend} {detector.precision}; "
          f"face check {detector.face_check!r}\n")
    if args.presence_sweep:
        _presence_sweep(detector, _facekp(args), kinds, args.presence_sweep)
        return 0
    header = ["face detector", "photos", "turned 15-90°", "groups", "small (10-25 px)", "groups, whole faces",
              "small, whole faces", "groups, readable faces", "small, readable faces", "NME photos", "NME turned",
              "NME groups", "false / face-free photo", "false / face-free view", "ms 640x480",
              "ms 1920x1080"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.detectors:
        if name in PEERS:
            predicted, ms = _run_peer(name, args, kinds, list(timing.values()), train)
        else:
            fd = DETECTORS[name](args)
            def detect(image, fd=fd):
                return detector.detect(image, face_detector=fd, min_presence=args.min_presence)

            ms = [_median_ms(detect, timing[size]) for size in timing]
            predicted = {} if args.timing_only else {kind: [_facekp_points(detect, image) for image, _ in photos]
                                                     for kind, photos in kinds.items()}
        if args.timing_only:
            print(f"| {name} | " + " | ".join(["-"] * 13) + " | " + " | ".join(f"{v:.0f}" for v in ms) + " |", flush=True)
            continue
        results = {kind: _score(photos, predicted[kind], readable if kind == "groups" else None)
                   for kind, photos in kinds.items()}
        g = results["groups"]
        share = lambda hits: f"{100 * np.mean(hits):.1f}% of {len(hits)}" if hits else "-"
        cells = [name, *(f"{100 * results[k]['recall']:.1f}%" for k in ("photos", "turned", "groups")),
                 *(share(g[k]) for k in ("found_small", "found_whole", "found_small_whole", "found_readable",
                                         "found_small_readable")),
                 *(f"{100 * results[k]['nme']:.2f}%" for k in ("photos", "turned", "groups")),
                 *(f"{results[k]['false'] / len(kinds[k]):.3f}" for k in ("negatives", "views")), *(f"{v:.0f}" for v in ms)]
        print("| " + " | ".join(cells) + " |", flush=True)
    return 0


def _presence_sweep(detector, finder, kinds: dict, thresholds: list[float]) -> None:
    """Prints, per presence threshold, what ``detect`` would keep of one pass with ``min_presence=0``."""
    kinds = {k: kinds[k] for k in ("photos", "groups", "negatives", "views")}
    found = {kind: [detector.detect(image, face_detector=finder, min_presence=0.0) for image, _ in photos]
             for kind, photos in kinds.items()}
    print("| min_presence | photos | NME photos | groups | small (10-25 px) | groups, whole faces | false / face-free photo "
          "| false / face-free view |")
    print("|---|---|---|---|---|---|---|---|")
    for t in thresholds:
        kept = {kind: [np.array([f.points for f in faces if f.presence >= t]).reshape(-1, 15, 2) for faces in found[kind]]
                for kind in kinds}
        r = {kind: _score(photos, kept[kind]) for kind, photos in kinds.items()}
        g = r["groups"]
        print(f"| {t:g} | {100 * r['photos']['recall']:.1f}% | {100 * r['photos']['nme']:.2f}% | {100 * g['recall']:.1f}% | "
              f"{100 * np.mean(g['found_small']):.1f}% | {100 * np.mean(g['found_whole']):.1f}% | "
              f"{r['negatives']['false'] / len(kinds['negatives']):.3f} | {r['views']['false'] / len(kinds['views']):.3f} |",
              flush=True)


def _haar(args):
    from facekp.face_detection import HaarFaceDetector

    return HaarFaceDetector()


def _haar3(args):
    from facekp.face_detection import HaarFaceDetector

    return HaarFaceDetector(angles=(-30, 0, 30))


def _facekp(args):
    from facekp.finder import FaceFinder

    if args.finder is None:
        return FaceFinder(min_score=args.min_score)
    return FaceFinder.from_file(args.finder, **({} if args.min_score is None else {"min_score": args.min_score}))


DETECTORS = {"haar": _haar, "haar3": _haar3, "facekp": _facekp}
#: Peer -> (runner script, number of points it gives).
PEERS = {"dlib": ("dlib_runner.py", 68), "mediapipe": ("mediapipe_runner.py", 468)}


def _run_peer(name: str, args, kinds: dict, timing_photos: list, train) -> tuple[dict, list[float]]:
    """The peer's 15 points per photo of every kind (its own venv, photos as PNG files), and its
    median whole-photo ms on the timing photos."""
    import json
    import subprocess
    import tempfile

    from PIL import Image

    from facekp.train.data import map_68_to_15
    from peer_results import fit_mediapipe_mapping, map_mesh, run_peer

    python = args.dlib_python if name == "dlib" else args.mediapipe_python
    runner, n_points = PEERS[name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths, owners = [], []
        for kind, photos in kinds.items():
            for i, (image, _) in enumerate(photos):
                paths.append(str(work / f"{kind}_{i}.png"))
                owners.append((kind, i))
                Image.fromarray(image).save(paths[-1])
        for k, image in enumerate(timing_photos):
            paths.append(str(work / f"timing_{k}.png"))
            Image.fromarray(image).save(paths[-1])
        job = {"images": paths, "all_faces": True, "repeats": 5,
               "timing_images": list(range(len(owners), len(paths)))}
        (work / "job.json").write_text(json.dumps(job))
        proc = subprocess.run([python, str(ROOT / "benchmarks" / "peers" / runner), str(work / "job.json"),
                               str(work / "out.npz")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{runner} failed:\n{proc.stderr[-3000:]}")
        out = np.load(work / "out.npz")
        points, image, photo_ms = out["points"], out["image"], out["photo_ms"]
        if name == "dlib":
            mapped = np.array([map_68_to_15(p) for p in points]).reshape(-1, 15, 2)
        else:  # the vertex choice, made on training faces (never the benchmark's)
            rng = np.random.default_rng(0)
            calib = [train[i] for i in rng.choice(len(train), size=min(200, len(train)), replace=False)]
            mesh = run_peer(python, runner, calib, args.data, work, "mapping", 0, 1)["points"]
            mapped = map_mesh(points, fit_mediapipe_mapping(calib, mesh)) if len(points) else np.zeros((0, 15, 2))
    assert points.shape[1] == n_points
    predicted = {kind: [np.zeros((0, 15, 2))] * len(photos) for kind, photos in kinds.items()}
    for k, (kind, i) in enumerate(owners):
        predicted[kind][i] = mapped[image == k]
    return predicted, [float(v) for v in photo_ms]


def _turned(image: np.ndarray, points: np.ndarray, i: int):
    """The photo turned by 15-90 degrees (a fixed draw per photo), on a canvas that holds it all."""
    rng = np.random.default_rng([7, i])
    return _turn(image, points, float(rng.uniform(15, 90) * rng.choice([-1, 1])))


def _turn(image: np.ndarray, points: np.ndarray, angle: float):
    """``image`` turned by ``angle`` degrees (counter-clockwise) onto a canvas that holds it all, and its
    face's points there, ``(1, 15, 2)``."""
    import cv2

    from facekp.geometry import apply_affine, similarity_transform

    h, w = image.shape
    a = np.radians(angle)
    cw, ch = (int(np.ceil(abs(w * np.cos(a)) + abs(h * np.sin(a)))), int(np.ceil(abs(w * np.sin(a)) + abs(h * np.cos(a)))))
    m = similarity_transform(((w - 1) / 2, (h - 1) / 2), 1.0, angle, ((cw - 1) / 2, (ch - 1) / 2))
    turned = cv2.warpAffine(image, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return turned, apply_affine(m, points.astype(np.float64))[None]


def _groups(val, negatives, n: int):
    from facekp.train.scenes import SceneComposer, SceneConfig

    # Nearly upright (within 10 degrees): turning is the "turned" kind's business.
    config = SceneConfig(size=512, empty_p=0.0, group_p=1.0, full_turn_p=0.0, tilt=10.0, occlusion_p=0.0)
    composer = SceneComposer(val, negatives, config)
    return [composer(np.random.default_rng([11, i])) for i in range(n)]


def _quarters(photo: np.ndarray) -> list[np.ndarray]:
    h, w = photo.shape
    return [photo] + [np.ascontiguousarray(photo[y : y + h // 2, x : x + w // 2]) for y in (0, h // 2) for x in (0, w // 2)]


def _views(negatives: list[np.ndarray], per_photo: int) -> list[np.ndarray]:
    """``per_photo`` random views of each photo (:func:`facekp.train.hard_negatives.random_views`, seeded)."""
    from facekp.train.hard_negatives import random_views

    return [v for i, photo in enumerate(negatives) for v in random_views(photo, per_photo, np.random.default_rng([13, i]))]


def _timing_photo(sample, background: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A held-out negative resized to ``size`` (w, h) with one validation photo pasted in its middle, 1.5x."""
    import cv2

    w, h = size
    photo = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA)
    face = cv2.resize(sample.image, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR)
    fh, fw = face.shape
    y, x = (h - fh) // 2, (w - fw) // 2
    photo[y : y + fh, x : x + fw] = face
    return photo


def _facekp_points(detect, image: np.ndarray) -> np.ndarray:
    """``(N, 15, 2)``: the points of every face ``detect(image)`` returns."""
    return np.array([f.points for f in detect(image)]).reshape(-1, 15, 2)


def _readable(detector, photos) -> list[np.ndarray]:
    """Per photo, ``(F,)`` bool: which of its faces are whole (all 15 points inside) and read within
    :data:`READABLE_NME` by the keypoint network framed by their annotated points."""
    from facekp.geometry import canonical_transform

    out = []
    for image, faces in photos:
        gray = image.astype(np.float32) / 255
        if not len(faces):
            out.append(np.zeros(0, bool))
            continue
        points, _ = detector.predict_framed([gray] * len(faces), np.stack([canonical_transform(p) for p in faces]))
        eyes = np.linalg.norm(faces[:, 0] - faces[:, 1], axis=1)
        nme = np.linalg.norm(points - faces, axis=2).mean(axis=1) / eyes
        out.append(np.array([_inside(p, image.shape) for p in faces]) & (nme <= READABLE_NME))
    return out


def _inside(points: np.ndarray, shape: tuple[int, ...]) -> bool:
    """All the points lie in an image of ``shape`` (pixel-centre convention): the face is not cut by its border."""
    h, w = shape[:2]
    return bool((points >= -0.5).all() and (points[:, 0] <= w - 0.5).all() and (points[:, 1] <= h - 0.5).all())


def _score(photos, predicted_points, readable: list[np.ndarray] | None = None) -> dict:
    """Recall, NME, hits among small, whole and ``readable`` faces (per photo, :func:`_readable`), and false faces
    of ``predicted_points[i]`` (N_i, 15, 2) against each photo's faces."""
    hits = {k: [] for k in ("found", "found_whole", "found_small", "found_small_whole", "found_readable",
                            "found_small_readable")}
    errors, false = [], 0
    for i, ((image, faces), predicted) in enumerate(zip(photos, predicted_points)):
        centroids = predicted.mean(axis=1).reshape(-1, 2)
        for j, pts in enumerate(faces):
            iod = float(np.linalg.norm(pts[0] - pts[1]))
            d = np.linalg.norm(centroids - pts.mean(axis=0), axis=1) if len(predicted) else np.empty(0)
            hit = bool(len(d) and d.min() <= 0.5 * iod)
            small = SMALL[0] <= iod <= SMALL[1]
            counted = {"found": True, "found_whole": _inside(pts, image.shape), "found_small": small,
                       "found_readable": readable is not None and bool(readable[i][j])}
            counted["found_small_whole"] = small and counted["found_whole"]
            counted["found_small_readable"] = small and counted["found_readable"]
            for k, yes in counted.items():
                if yes:
                    hits[k].append(hit)
            if hit:
                k = int(np.argmin(d))
                errors.append(float(np.linalg.norm(predicted[k] - pts, axis=1).mean() / iod))
        if not len(faces):
            false += len(predicted)
    found = hits.pop("found")
    return {"recall": float(np.mean(found)) if found else float("nan"), "nme": float(np.mean(errors)) if errors else
            float("nan"), "false": false, **hits}


def _median_ms(detect, photo: np.ndarray, repeats: int = 15) -> float:
    detect(photo)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        detect(photo)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


if __name__ == "__main__":
    sys.exit(main())
