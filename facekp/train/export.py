"""Turn a training run into shipped weights: safetensors, manifest entry, model card."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..config import DetectorConfig
from ..faces import default_calibration
from ..model import StackedHourglass
from ..weights import save_model, sha256_file
from .fit import FitConfig


def load_run(run: str | Path, checkpoint: str = "best.pt") -> tuple[StackedHourglass, DetectorConfig, FitConfig]:
    """The model of a run folder (``fit_config.json`` + ``best.pt``), ready to export."""
    run = Path(run)
    for name in ("fit_config.json", checkpoint):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a facekp-train run folder: {name} is missing")
    fit = FitConfig.from_dict(json.loads((run / "fit_config.json").read_text()))
    model = StackedHourglass(fit.hourglass)
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.eval(), DetectorConfig(hourglass=fit.hourglass, sigma=fit.sigma), fit


def update_manifest(
    manifest_path: str | Path,
    name: str,
    weights_file: Path,
    config: DetectorConfig,
    metrics: dict,
    make_default: bool,
    repo_id: str | None = None,
    revision: str | None = None,
) -> dict:
    """Add or replace the entry ``name`` in the manifest; returns the entry."""
    manifest_path = Path(manifest_path)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"format_version": 1, "default": None, "models": []}
    entry = {
        "name": name,
        "file": weights_file.name,
        "sha256": sha256_file(weights_file),
        "size": weights_file.stat().st_size,
        "config": config.to_dict(),
        "bundled": True,
        "repo_id": repo_id,
        "revision": revision,
        "metrics": metrics,
    }
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    if make_default or not manifest.get("default"):
        manifest["default"] = name
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return entry


def export_run(
    run: str | Path,
    name: str,
    package_dir: str | Path,
    manifest_path: str | Path,
    metrics: dict,
    make_default: bool = True,
    out_folder: str | Path | None = None,
) -> dict:
    """Write ``package_dir/weights/NAME.safetensors`` and update the manifest.

    The model's config records the box calibration of :class:`facekp.HaarFaceDetector` as
    ``box_to_frame``.

    With ``out_folder``, also writes the ``save_pretrained`` layout (config.json +
    model.safetensors) there, ready to upload to a Hub repository.
    """
    model, config, _ = load_run(run)
    # The face-box calibration depends on the face detector, not on the network: every exported
    # model carries the shipped Haar calibration so Detector.detect frames faces as fitted.
    config = replace(config, box_to_frame=default_calibration().to_dict())
    weights_dir = Path(package_dir) / "weights"
    staging = weights_dir / f".{name}.staging"
    weights = save_model(model, config, staging, overwrite=True)
    target = weights_dir / f"{name}.safetensors"
    weights.replace(target)
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    if out_folder is not None:
        save_model(model, config, out_folder)
    return update_manifest(manifest_path, name, target, config, metrics, make_default)
