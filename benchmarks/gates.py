"""What ``detect`` keeps on held-out candidates, and what it costs, under settings of its gates.

    python benchmarks/gates.py [--scenes 600] [--random-views 40] [--threads 2]
                               [--set NAME=VALUE [NAME=VALUE ...]] [--set ...]

The set the thresholds of :mod:`facekp.candidates` (and :mod:`facekp.turns`) are chosen on, not the
benchmark's photos (``face_finding.py``): ``--scenes`` scenes composed from the validation identities
of the keypoint model's split on the held-out negatives (the face check's recipe,
``facekp.train.face_check.SCENES``: groups, faces from 8 px eye distance, turned anywhere, scene
photos, out-of-focus backgrounds), and every mining view (longer sides 320, 640, 1280 px, four quarter
turns) and ``--random-views`` random views of each held-out negative. The seeds are not the
benchmark's.

Each ``--set`` is one row: ``NAME=VALUE`` pairs that replace constants of ``facekp.candidates`` or
``facekp.turns`` for that row, or ``precision=int8`` (the keypoint network's bundled int8 graph); the first
row, with no ``--set``, is detect as shipped. Per row: the
scene faces ``detect`` returns (a face counts when a returned centroid lies within half its eye distance
of the annotated one), how many of the first row's it lost and how many it gained, the returned faces that match no scene
face (on the views, every returned face), the crops the keypoint network ran on, and the seconds the
whole set took. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "faces68")
    parser.add_argument("--negatives", type=Path, default=DATA / "negatives")
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--random-views", type=int, default=40, help="random views per held-out negative")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--set", nargs="+", action="append", default=[], metavar="NAME=VALUE", dest="rows",
                        help="one row's constants of facekp.candidates / facekp.turns, or precision=int8")
    args = parser.parse_args(argv)

    import torch

    from facekp import Detector
    from facekp.train.data import load_pts_folder, split_by_identity
    from facekp.train.face_check import SCENES
    from facekp.train.hard_negatives import random_views, views
    from facekp.train.negatives import negative_paths
    from facekp.train.scenes import SceneComposer, load_gray_u8

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [[], *args.rows]
    settings = [dict(_parse(item) for item in row) for row in rows]  # refuse a bad name before the long run
    precisions = [s.pop("precision", "auto") for s in settings]  # the rest are module constants
    _, val = split_by_identity(load_pts_folder(args.data), 0.15, seed=0)
    negatives = [load_gray_u8(p) for p in negative_paths(args.negatives, held_out=True)]
    composer = SceneComposer(val, negatives, SCENES)
    photos = [composer(np.random.default_rng([23, i])) for i in range(args.scenes)]
    none = np.zeros((0, 15, 2), np.float32)
    photos += [(v, none) for photo in negatives for _, _, v in views(photo)]
    photos += [(v, none) for i, photo in enumerate(negatives)
               for v in random_views(photo, args.random_views, np.random.default_rng([29, i]))]
    faces = sum(len(f) for _, f in photos)
    detectors = {p: Detector(device="cpu", precision=p, threads=args.threads) for p in set(precisions)}
    crops = {p: _count_crops(d) for p, d in detectors.items()}
    shipped = detectors["auto"]
    print(f"{args.scenes} scenes ({faces} faces), {len(photos) - args.scenes} face-free views; "
          f"torch threads {torch.get_num_threads()}; keypoints {shipped.backend} {shipped.precision} unless the row says\n")
    print("| setting | faces returned | lost / gained (against row 1) | false faces (scenes / views) | network crops "
          "| seconds |")
    print("|---|---|---|---|---|---|")
    for d in detectors.values():  # warm up each (onnxruntime's first runs are slow), uncounted
        _run(d, photos[:20])
    first = None
    for row, setting, precision in zip(rows, settings, precisions):
        with _constants(setting):
            count, start = crops[precision], time.perf_counter()
            count[0] = 0
            found, false_scenes, false_views = _run(detectors[precision], photos)
            seconds = time.perf_counter() - start
        first = found if first is None else first
        name = " ".join(row) or "as shipped"
        print(f"| {name} | {len(found)} of {faces} | {len(first - found)} / {len(found - first)} | {false_scenes} / {false_views} | "
              f"{count[0]} | {seconds:.0f} |", flush=True)
    return 0


def _parse(item: str) -> tuple[str, float | str]:
    import facekp.candidates
    import facekp.turns

    name, sep, value = item.partition("=")
    if item == "precision=int8":
        return name, value
    if not sep or not any(hasattr(m, name) for m in (facekp.candidates, facekp.turns)):
        raise SystemExit(f"--set wants precision=int8 or NAME=VALUE with NAME a constant of facekp.candidates or "
                         f"facekp.turns, got {item!r}")
    return name, float(value)


class _constants:
    """Replaces the named module constants inside the block (a benchmark's sweep), restoring them after."""

    def __init__(self, setting: dict[str, float]) -> None:
        import facekp.candidates
        import facekp.turns

        self.targets = [(m, name, value) for name, value in setting.items()
                        for m in (facekp.candidates, facekp.turns) if hasattr(m, name)]
        self.saved: list = []

    def __enter__(self):
        self.saved = [(m, name, getattr(m, name)) for m, name, _ in self.targets]
        for m, name, value in self.targets:
            setattr(m, name, value)

    def __exit__(self, *exc):
        for m, name, value in self.saved:
            setattr(m, name, value)


def _count_crops(detector) -> list[int]:
    """A one-item counter of the crops ``detector``'s keypoint network runs on (its ``predict_crops`` wrapped)."""
    count = [0]
    run = detector.predict_crops

    def counted(crops, batch_size=None):
        count[0] += len(crops)
        return run(crops, batch_size)

    detector.predict_crops = counted
    return count


def _run(detector, photos) -> tuple[set, int, int]:
    """``detect`` on every photo: the (photo, face) indices it returned, and its false faces in scenes / on views."""
    found, false_scenes, false_views = set(), 0, 0
    for i, (image, faces) in enumerate(photos):
        centroids = np.array([f.points.mean(axis=0) for f in detector.detect(image)]).reshape(-1, 2)
        if not len(faces):
            false_views += len(centroids)
            continue
        eyes = np.linalg.norm(faces[:, 0] - faces[:, 1], axis=1)
        d = np.linalg.norm(centroids[:, None] - faces.mean(axis=1)[None], axis=2)  # (returned, scene faces)
        hits = d <= 0.5 * eyes[None]
        found |= {(i, j) for j in np.flatnonzero(hits.any(axis=0))}
        false_scenes += int((~hits.any(axis=1)).sum())
    return found, false_scenes, false_views


if __name__ == "__main__":
    raise SystemExit(main())
