"""Turn a training run into shipped weights: safetensors, manifest entry, model card."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import fileio
from ..calibration import default_calibration
from ..config import DetectorConfig
from ..weights import load_model, read_manifest, save_model, sha256_file, write_manifest
from .data import Sample
from .run import load_run


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
    manifest = read_manifest(manifest_path) if manifest_path.exists() else {"format_version": 1, "default": None, "models": []}
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
    write_manifest(manifest, manifest_path)
    return entry


def export_run(
    run: str | Path,
    name: str,
    package_dir: str | Path,
    manifest_path: str | Path,
    metrics: dict,
    make_default: bool = True,
    out_folder: str | Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``package_dir/weights/NAME.safetensors`` and update the manifest.

    The model's config records the box calibration of :class:`facekp.HaarFaceDetector` as
    ``box_to_frame``.

    With ``out_folder``, also writes the ``save_pretrained`` layout (config.json +
    model.safetensors) there, ready to upload to a Hub repository. An existing model of that name
    in the package is replaced only with ``overwrite``.
    """
    target = fileio.check_output(Path(package_dir) / "weights" / f"{name}.safetensors", overwrite=overwrite)
    model, config, _ = load_run(run)
    # The face-box calibration depends on the face detector, not on the network: every exported
    # model carries the shipped Haar calibration so Detector.detect frames faces as fitted.
    config = replace(config, box_to_frame=default_calibration().to_dict())
    if out_folder is not None:  # first: it refuses to replace files, and nothing else is touched yet
        save_model(model, config, out_folder, overwrite=overwrite)
    weights_dir = Path(package_dir) / "weights"
    staging = weights_dir / f".{name}.staging"
    weights = save_model(model, config, staging, overwrite=True)
    weights.replace(fileio.check_output(target, overwrite=overwrite))
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    return update_manifest(manifest_path, name, target, config, metrics, make_default)


#: Training faces whose crops calibrate the int8 graph's activation ranges.
INT8_CALIBRATION_FACES = 256


def int8_calibration_crops(train: list[Sample], seed: int, faces: int = INT8_CALIBRATION_FACES) -> np.ndarray:
    """``(faces, S, S)`` crops in [0, 1] of randomly chosen training faces, to calibrate an int8 graph.

    Perturbed like the evaluation's second crop protocol, so that the activation ranges cover the
    framings a face detector gives too. Never pass validation faces.
    """
    from .augment import EVAL_PERTURBATION
    from .evaluate import make_eval_crops

    picks = np.random.default_rng(seed).permutation(len(train))[:faces]
    return make_eval_crops([train[i] for i in picks], EVAL_PERTURBATION, seed=2)[0]


def export_graph(
    weights: str | Path,
    manifest_path: str | Path,
    name: str,
    val: list[Sample],
    calibration: np.ndarray | None = None,
    overwrite: bool = False,
) -> dict:
    """Export ``weights`` to an ONNX graph beside them, fp32 (``NAME.onnx``) or, given ``calibration``,
    int8 (``NAME-int8.onnx``), and record it in the manifest entry ``name``.

    ``calibration``: ``(N, S, S)`` training crops in [0, 1] (:func:`int8_calibration_crops`). The graph
    is scored on ``val`` like the torch model, and the entry gets ``fp32_onnx`` or ``int8_onnx`` =
    file, sha256, size and those metrics: ``Detector(device="cpu")`` runs the fp32 graph,
    ``Detector(precision="int8")`` the int8 one, both verified.
    """
    from ..detector import Detector
    from ..onnx import onnx_bytes, quantize_int8
    from ..preprocess import network_input
    from .evaluate import CROP_PROTOCOLS, keypoint_metrics, make_eval_crops

    weights = Path(weights)
    model, config = load_model(weights)
    precision = "fp32" if calibration is None else "int8"
    graph = weights.with_name(f"{name}.onnx" if precision == "fp32" else f"{name}-int8.onnx")
    fileio.check_output(graph, inputs=[weights], overwrite=overwrite)
    data = onnx_bytes(model, config)
    if precision == "int8":
        data = quantize_int8(data, network_input(calibration, config.normalization))
    fileio.write_bytes(graph, data, inputs=[weights], overwrite=overwrite)
    det = Detector(weights, device="cpu", backend="onnx", onnx_model=graph)
    metrics = {}
    for protocol, (perturbation, seed) in CROP_PROTOCOLS.items():
        crops, truth, mask = make_eval_crops(val, perturbation, seed)
        key = "val_rmse" if protocol == "canonical" else f"val_rmse_{protocol}"
        metrics[key] = keypoint_metrics(det.predict_batch(crops), truth, mask)["rmse"]
    manifest = read_manifest(manifest_path)
    entry = next(m for m in manifest["models"] if m["name"] == name)
    record = {"file": graph.name, "sha256": sha256_file(graph), "size": graph.stat().st_size, "metrics": metrics}
    if precision == "int8":
        record["calibration_faces"] = len(calibration)
    entry[f"{precision}_onnx"] = record
    write_manifest(manifest, manifest_path)
    return record
