"""Face finder weights: one self-describing ``.safetensors`` file and its manifest entry.

The file's metadata holds the architecture (:class:`facekp.finder_model.FinderConfig`) and the
calibration from the finder's boxes to the keypoint network's frame; the manifest's
``face_finders`` list names the bundled files (weights and ONNX graph) with their sha256. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from safetensors.torch import save_file

from .errors import WeightsError
from .calibration import BoxCalibration
from .finder_model import FaceFinderNet, FinderConfig
from .weights import read_described, read_manifest, verified_bundled

_METADATA_KEY = "facekp_finder"
#: The bundled finder that :class:`facekp.finder.FaceFinder` loads by default.
DEFAULT_FINDER = "finder-s8"


class FinderWeights(NamedTuple):
    """A loaded finder: the network (eval mode), its box calibration, its chosen score threshold and,
    for a bundled finder that ships one, its ONNX graph (verified), which needs no export to run."""

    model: FaceFinderNet
    calibration: BoxCalibration
    min_score: float
    onnx: Path | None = None


def save_finder(model: FaceFinderNet, calibration: BoxCalibration, path: str | Path, min_score: float = 0.5,
                overwrite: bool = False) -> Path:
    """Write the finder's weights, architecture, calibration and score threshold to one ``.safetensors`` file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not 0.0 < min_score < 1.0:
        raise ValueError(f"min_score must lie in (0, 1), got {min_score}")
    meta = {"architecture": "face_finder", "model": model.config.to_dict(), "box_to_frame": calibration.to_dict(),
            "min_score": float(min_score)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={_METADATA_KEY: json.dumps(meta)})
    return path


def load_finder_file(path: str | Path) -> FinderWeights:
    """The finder network (eval mode), calibration and threshold from a file written by :func:`save_finder`."""
    state, meta = read_described(path, _METADATA_KEY, "face finder")
    try:
        model = FaceFinderNet(FinderConfig.from_dict(meta["model"]))
        calibration = BoxCalibration.from_dict(meta["box_to_frame"])
        min_score = float(meta["min_score"])
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score {min_score} outside (0, 1)")
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"{path} does not hold a face finder this facekp can build: {str(exc).splitlines()[0]}") from exc
    return FinderWeights(model.eval(), calibration, min_score)


def finder_entry(name: str = DEFAULT_FINDER, manifest: str | Path | None = None) -> dict:
    """The manifest's ``face_finders`` entry called ``name``."""
    entries = {e["name"]: e for e in read_manifest(manifest).get("face_finders", [])}
    if name not in entries:
        raise WeightsError(f"no face finder named {name!r} in weights_manifest.json; known: {sorted(entries)}")
    return entries[name]


def load_finder(name: str = DEFAULT_FINDER) -> FinderWeights:
    """A bundled finder, verified against the manifest's sha256, with its ONNX graph when the entry has one."""
    entry = finder_entry(name)
    weights = verified_bundled(entry["file"], entry["sha256"], "face finder")
    graph = entry.get("onnx")
    onnx = verified_bundled(graph["file"], graph["sha256"], "face finder ONNX graph") if graph else None
    return load_finder_file(weights)._replace(onnx=onnx)
