"""Ship a finder run: its best weights with a fitted box calibration, in the package and the manifest.

The calibration (from the finder's boxes to the keypoint network's canonical frame) is fitted
with :func:`facekp.calibration.fit_box_calibration` on the run's *training* identities, so the
validation photos the benchmark uses stay unseen.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..calibration import fit_box_calibration
from ..finder import FINDER_NAME, FaceFinder
from ..finder_model import FaceFinderNet
from ..finder_weights import save_finder
from ..weights import sha256_file
from .data import load_dataset, split_by_identity
from .finder_fit import FinderFitConfig


def load_finder_run(run: str | Path, checkpoint: str = "best.pt") -> tuple[FaceFinderNet, FinderFitConfig]:
    """The network of a finder run folder (``fit_config.json`` + ``best.pt`` or ``last.pt``)."""
    run = Path(run)
    for name in ("fit_config.json", checkpoint):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a finder run folder: {name} is missing")
    config = FinderFitConfig.from_dict(json.loads((run / "fit_config.json").read_text()))
    model = FaceFinderNet(config.model)
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval(), config


def export_finder(run: str | Path, name: str, package_dir: str | Path, manifest_path: str | Path,
                  checkpoint: str = "best.pt", force: bool = False, metrics: dict | None = None) -> dict:
    """Write ``package_dir/weights/NAME.safetensors`` and the manifest's ``face_finders`` entry; returns it."""
    model, config = load_finder_run(run, checkpoint)
    train, _ = split_by_identity(load_dataset(config.data), config.val_fraction, config.seed)
    calibration = fit_box_calibration(train, FaceFinder(model, {"scale": 1.0, "detector": FINDER_NAME}), progress=True)
    calibration.stats["fitted_on"] = (f"faces68 training split: split_by_identity(samples, {config.val_fraction}, "
                                      f"seed={config.seed}), {len(train)} photos")
    calibration.stats["detector_settings"] = "FaceFinder() defaults: min_score 0.5, max_side 640, nms_iou 0.4"
    path = Path(package_dir) / "weights" / f"{name}.safetensors"
    save_finder(model, calibration, path, overwrite=force)
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    entry = {"name": name, "file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
             "config": {"architecture": "face_finder", "model": config.model.to_dict(), "box_to_frame": calibration.to_dict()},
             "training": {"steps": None, "run_config": {k: v for k, v in config.to_dict().items() if k not in ("out",)}},
             "metrics": metrics or {}}
    state = torch.load(Path(run) / "last.pt", map_location="cpu", weights_only=True)
    entry["training"]["steps"] = int(state["step"])
    entry["training"]["minutes"] = round(float(state["train_seconds"]) / 60, 1)
    finders = [f for f in manifest.get("face_finders", []) if f["name"] != name]
    manifest["face_finders"] = finders + [entry]
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return entry


def add_parser(sub) -> None:
    """The ``finder-export`` subcommand of ``facekp-train``."""
    root = Path(__file__).resolve().parents[2]
    p = sub.add_parser("finder-export", help="ship a finder run's best weights (package + manifest)")
    p.add_argument("--run", type=Path, required=True, help="run folder written by 'finder'")
    p.add_argument("--name", default="finder-s8", help="name in the manifest's face_finders")
    p.add_argument("--checkpoint", default="best.pt", choices=("best.pt", "last.pt"))
    p.add_argument("--package", type=Path, default=root / "facekp", help="facekp package folder")
    p.add_argument("--manifest", type=Path, default=root / "weights_manifest.json")
    p.add_argument("--force", action="store_true", help="replace an existing weights file of that name")
    p.set_defaults(handler=_run)


def _run(args) -> None:
    entry = export_finder(args.run, args.name, args.package, args.manifest, args.checkpoint, args.force)
    print(json.dumps({k: entry[k] for k in ("name", "file", "sha256", "size")} | {"box_to_frame": entry["config"]["box_to_frame"]}))
