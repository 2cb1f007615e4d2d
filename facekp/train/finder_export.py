"""Ship a finder run: its best weights with a fitted box calibration and its ONNX graph, in the package and the manifest.

The calibration (from the finder's boxes to the keypoint network's canonical frame) is fitted
with :func:`facekp.calibration.fit_box_calibration` on the run's *training* identities, so the
validation photos the benchmark uses stay unseen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..calibration import BoxCalibration, fit_box_calibration
from ..detector import Detector
from ..finder import FINDER_NAME, FaceFinder
from .. import fileio
from ..finder_model import FaceFinderNet
from ..finder_onnx import finder_onnx_bytes
from ..finder_weights import save_finder
from ..weights import put_manifest_entry, sha256_file
from .data import load_dataset, split_by_identity
from .finder_fit import box_centres, load_finder_run, match_centres
from .negatives import negative_paths
from .scenes import SceneComposer, load_gray_u8


#: Thresholds :func:`choose_min_score` tries.
THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)


def choose_min_score(model: FaceFinderNet, calibration: BoxCalibration, composer: SceneComposer, detector: Detector,
                     scenes: int = 200, seed: int = 20_000) -> tuple[float, list[dict]]:
    """The threshold of :data:`THRESHOLDS` with the best F1 (faces found vs false faces) of the
    finder's own faces on ``scenes`` composed scenes, and per threshold the recall and false faces per
    scene of the finder and of what ``detector.detect`` keeps with it (keypoints, presence filter).

    The choice counts every false face of the finder, even those the presence filter drops later:
    each costs the keypoint network two passes, so a low threshold would make ``detect`` slow on
    busy photos. One finder run and one ``detect`` (on those same faces) per scene at the lowest
    threshold give every row: a higher threshold keeps the same faces less those scored under it
    (non-maximum suppression never lets a weaker face suppress a stronger one).
    """
    finder = FaceFinder(model, calibration, min_score=min(THRESHOLDS))
    counts = {t: {"found": 0, "false": 0, "kept_found": 0, "kept_false": 0} for t in THRESHOLDS}
    faces = 0
    for i in range(scenes):
        image, points = composer(np.random.default_rng([seed, i]))
        found = finder(image)
        boxes, scores, _ = found
        kept = detector.detect(image, face_detector=lambda _: found, calibration=calibration)
        kept_scores = np.array([f.score for f in kept])
        kept_centroids = np.array([f.points.mean(axis=0) for f in kept]).reshape(-1, 2)
        faces += len(points)
        for t, c in counts.items():
            hit, true = match_centres(box_centres(boxes[scores >= t]), points)
            c["found"], c["false"] = c["found"] + int(hit.sum()), c["false"] + int((~true).sum())
            hit, true = match_centres(kept_centroids[kept_scores >= t], points)
            c["kept_found"], c["kept_false"] = c["kept_found"] + int(hit.sum()), c["kept_false"] + int((~true).sum())
    table = [{"min_score": t, "recall": c["found"] / max(faces, 1), "false_per_scene": c["false"] / scenes,
              "detect_recall": c["kept_found"] / max(faces, 1), "detect_false_per_scene": c["kept_false"] / scenes}
             for t, c in counts.items()]
    f1 = [2 * c["found"] / max(faces + c["found"] + c["false"], 1) for c in counts.values()]
    return THRESHOLDS[int(np.argmax(f1))], table


def export_finder(run: str | Path, name: str, package_dir: str | Path, manifest_path: str | Path,
                  checkpoint: str = "best.pt", force: bool = False, min_score: float | None = None) -> dict:
    """Write ``package_dir/weights/NAME.safetensors`` and the manifest's ``face_finders`` entry; returns it.

    The calibration is fitted on the training photos (at the lowest threshold tried), then the
    threshold is chosen on scenes of training identities on training negatives
    (:func:`choose_min_score`, which also records what ``detect`` keeps with the bundled keypoint model);
    a ``min_score`` given, in (0, 1), is shipped instead (the table is measured and recorded all the same).
    """
    if min_score is not None and not 0.0 < min_score < 1.0:
        raise ValueError(f"min_score must be in (0, 1), got {min_score}")
    model, config = load_finder_run(run, checkpoint)
    train, _ = split_by_identity(load_dataset(config.data), config.val_fraction, config.seed)
    backgrounds = [load_gray_u8(p) for p in negative_paths(config.negatives, held_out=False)]
    finder = FaceFinder(model, {"scale": 1.0, "detector": FINDER_NAME}, min_score=min(THRESHOLDS))
    calibration = fit_box_calibration(train, finder, progress=True)
    calibration.stats["fitted_on"] = (f"faces68 training split: split_by_identity(samples, {config.val_fraction}, "
                                      f"seed={config.seed}), {len(train)} photos")
    calibration.stats["detector_settings"] = f"FaceFinder(): min_score {min(THRESHOLDS)}, max_side 640, nms_iou 0.4"
    composer = SceneComposer(train, backgrounds, config.scene_config(hard_negatives=False))
    best, thresholds = choose_min_score(model, calibration, composer, Detector(device="cpu"))
    min_score = best if min_score is None else float(min_score)
    path = Path(package_dir) / "weights" / f"{name}.safetensors"
    save_finder(model, calibration, path, min_score=min_score, overwrite=force)
    graph = write_finder_graph(model, path.with_suffix(".onnx"), force)
    state = torch.load(Path(run) / "last.pt", map_location="cpu", weights_only=True)
    entry = {"name": name, "file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
             "onnx": {"file": graph.name, "sha256": sha256_file(graph), "size": graph.stat().st_size},
             "config": {"architecture": "face_finder", "model": config.model.to_dict(), "box_to_frame": calibration.to_dict(),
                        "min_score": min_score},
             "training": {"checkpoint": checkpoint, "steps": int(state["step"]),
                          "minutes": round(float(state["train_seconds"]) / 60, 1),
                          "run_config": {k: v for k, v in config.to_dict().items() if k != "out"},
                          "thresholds_on_training_scenes": thresholds, "best_f1_min_score": best}}
    put_manifest_entry(manifest_path, "face_finders", entry)
    return entry


def write_finder_graph(model: FaceFinderNet, path: str | Path, force: bool = False) -> Path:
    """The finder's ONNX graph (:func:`facekp.finder_onnx.finder_onnx_bytes`) written to ``path``, which
    the package ships beside the weights so that ``FaceFinder`` runs it without the ``onnx`` extra."""
    return fileio.write_bytes(path, finder_onnx_bytes(model), overwrite=force)


def add_parser(sub) -> None:
    """The ``finder-export`` subcommand of ``facekp-train``."""
    p = sub.add_parser("finder-export", help="ship a finder run's best weights (package + manifest)")
    p.add_argument("--run", type=Path, required=True, help="run folder written by 'finder'")
    p.add_argument("--name", default="finder-s8", help="name in the manifest's face_finders (default: finder-s8)")
    p.add_argument("--checkpoint", default="best.pt", choices=("best.pt", "last.pt"), help="which checkpoint (default: best.pt)")
    p.add_argument("--package", type=Path, default=Path("facekp"),
                   help="facekp package folder to write weights/NAME.safetensors into (default: ./facekp)")
    p.add_argument("--manifest", type=Path, default=Path("weights_manifest.json"),
                   help="the manifest to record the finder in (default: ./weights_manifest.json)")
    p.add_argument("--min-score", type=float, help="ship this threshold, in (0, 1), instead of the one with the best F1 "
                   "on the training scenes (default: that one)")
    p.add_argument("--force", action="store_true", help="replace an existing weights file of that name")
    p.set_defaults(handler=_run)


def _run(args) -> None:
    entry = export_finder(args.run, args.name, args.package, args.manifest, args.checkpoint, args.force, args.min_score)
    print(json.dumps({k: entry[k] for k in ("name", "file", "sha256", "size")} | {"config": entry["config"]}, indent=2))
