"""The face check: a small network that tells whether a framed 96x96 crop holds a face.

:meth:`facekp.Detector.detect` frames each face a face detector reports into the keypoint network's
96x96 crop. Most of a face-free photo's candidates are false, and each costs the keypoint network
its passes (re-framing, and the turns when presence says no); presence, computed from the keypoint
network's own 15 confidences and the shape of its points, cannot tell the hardest of them from real
faces. :class:`FaceCheck` looks at the crop itself, before the keypoint network runs: a candidate it
scores under its threshold goes no further (a second stage, as a cascade's later stages or MTCNN's
R-Net verify the proposals of the first).

:class:`FaceCheckNet`: the crop, standardized per crop as the keypoint network's input, average-pooled
to 48x48, four stride-2 stages of two 3x3 convolutions, global average pooling, one logit. It is
trained (``facekp-train face-check``, :mod:`facekp.train.face_check`) on faces at any in-plane angle
(the finder's angle can be far off; turning them upright is ``detect``'s job), so it answers "is there
a face" and not "is it upright". Weights: one ``.safetensors`` file whose metadata holds the widths
and the threshold, listed in the manifest's ``face_checks`` with its sha256, and the network's ONNX
graph beside it (:func:`face_check_onnx_bytes`), which onnxruntime runs 3x faster than torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from .errors import WeightsError
from .geometry import CANONICAL_SIZE
from .onnx_graph import OnnxGraph, graph_bytes, graph_to_run
from .preprocess import standardize
from .weights import read_described, read_manifest, verified_bundled

_METADATA_KEY = "facekp_face_check"
_INPUT_NAME, _OUTPUT_NAME = "crops", "logits"
#: The bundled face check :class:`FaceCheck` loads by default.
DEFAULT_FACE_CHECK = "check-c64"


@dataclass(frozen=True)
class FaceCheckConfig:
    """Channels of the four stride-2 stages of a :class:`FaceCheckNet`."""

    widths: tuple[int, int, int, int] = (16, 32, 64, 64)

    def to_dict(self) -> dict:
        return {"widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict) -> "FaceCheckConfig":
        try:
            config = cls(tuple(int(c) for c in data["widths"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid face check config {data!r}: {exc}") from exc
        if len(config.widths) != 4 or min(config.widths) < 1:
            raise ValueError(f"invalid face check config {data!r}: four positive stage widths expected")
        return config


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FaceCheckNet(nn.Module):
    """Standardized crops ``(B, 1, 96, 96)`` -> ``(B,)`` logits of "a face is framed here"."""

    def __init__(self, config: FaceCheckConfig = FaceCheckConfig()) -> None:
        super().__init__()
        self.config = config
        widths = (1, *config.widths)
        self.features = nn.Sequential(nn.AvgPool2d(2), *(_stage(a, b) for a, b in zip(widths, widths[1:])))
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))[:, 0]


def network_input(crops: np.ndarray) -> torch.Tensor:
    """``(N, 96, 96)`` float crops in [0, 1] -> the network's ``(N, 1, 96, 96)`` input (standardized per crop)."""
    crops = np.asarray(crops, dtype=np.float32)
    if crops.ndim != 3 or crops.shape[1:] != (CANONICAL_SIZE, CANONICAL_SIZE):
        raise ValueError(f"the face check takes (N, {CANONICAL_SIZE}, {CANONICAL_SIZE}) crops, got shape {crops.shape}")
    return torch.from_numpy(np.ascontiguousarray(standardize(crops)[:, None]))


def face_check_onnx_bytes(model: FaceCheckNet) -> bytes:
    """The network as an ONNX graph: standardized crops ``(N, 1, 96, 96)`` -> ``(N,)`` logits, the batch
    dynamic, BatchNorm folded (needs ``onnx``: ``ImportError`` without it)."""
    example = torch.zeros(2, 1, CANONICAL_SIZE, CANONICAL_SIZE)
    return graph_bytes(model, example, _INPUT_NAME, [_OUTPUT_NAME], {_INPUT_NAME: {0: "n"}, _OUTPUT_NAME: {0: "n"}})


class FaceCheckWeights(NamedTuple):
    """A loaded face check: the network (eval mode), its threshold, how it was trained (free-form) and, for
    a bundled check that ships one, its ONNX graph (verified)."""

    model: FaceCheckNet
    threshold: float
    stats: dict
    onnx: Path | None = None


def save_face_check(model: FaceCheckNet, threshold: float, path: str | Path, stats: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write the network's weights, widths, threshold and ``stats`` to one ``.safetensors`` file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --force (overwrite=True) to replace it")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"the face check threshold must lie in [0, 1), got {threshold}")
    meta = {"architecture": "face_check", "model": model.config.to_dict(), "threshold": float(threshold),
            "stats": stats or {}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={_METADATA_KEY: json.dumps(meta)})
    return path


def load_face_check_file(path: str | Path) -> FaceCheckWeights:
    """The network (eval mode), threshold and stats of a file written by :func:`save_face_check`."""
    state, meta = read_described(path, _METADATA_KEY, "face check")
    try:
        model = FaceCheckNet(FaceCheckConfig.from_dict(meta["model"]))
        threshold = float(meta["threshold"])
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold {threshold} outside [0, 1)")
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise WeightsError(f"{path} does not hold a face check this facekp can build: {str(exc).splitlines()[0]}") from exc
    return FaceCheckWeights(model.eval(), threshold, dict(meta.get("stats") or {}))


def load_face_check(name: str = DEFAULT_FACE_CHECK, manifest: str | Path | None = None) -> FaceCheckWeights:
    """A bundled face check, verified against the manifest's sha256, with its ONNX graph when the entry has one."""
    entries = {e["name"]: e for e in read_manifest(manifest).get("face_checks", [])}
    if name not in entries:
        raise WeightsError(f"no face check named {name!r} in weights_manifest.json; known: {sorted(entries)}")
    entry = entries[name]
    graph = entry.get("onnx")
    onnx = verified_bundled(graph["file"], graph["sha256"], "face check ONNX graph") if graph else None
    return load_face_check_file(verified_bundled(entry["file"], entry["sha256"], "face check"))._replace(onnx=onnx)


class FaceCheck:
    """Scores framed crops: the probability that each holds a face (any in-plane angle).

    Args:
        weights: ``None`` for the bundled face check, or a ``.safetensors`` file from
            ``facekp-train face-check``.
        threshold: the score under which :meth:`facekp.Detector.detect` drops a candidate before the
            keypoint network runs, in [0, 1) (None: the weights' own).
        backend: ``"onnx"`` (onnxruntime: the bundled check ships its graph, other weights are exported,
            which needs the ``onnx`` extra), ``"torch"``, or ``"auto"``: onnx for the bundled check or when
            the graph can be exported, when onnxruntime imports, else torch
            (:func:`facekp.onnx_graph.graph_to_run`). Both give the same scores to float precision.
    """

    def __init__(self, weights: str | Path | None = None, threshold: float | None = None,
                 backend: str = "auto") -> None:
        loaded = load_face_check() if weights is None else load_face_check_file(weights)
        self.model = loaded.model
        self.threshold = loaded.threshold if threshold is None else float(threshold)
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"the face check threshold must lie in [0, 1), got {threshold}")
        self.stats = loaded.stats
        graph = graph_to_run(backend, loaded.onnx, lambda: face_check_onnx_bytes(self.model))
        self._onnx = None if graph is None else OnnxGraph(graph, _INPUT_NAME, [_OUTPUT_NAME])
        self.backend = "onnx" if self._onnx is not None else "torch"

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 probabilities in [0, 1] for ``(N, 96, 96)`` float crops in [0, 1] (image -> crop
        framing as :meth:`facekp.calibration.BoxCalibration.frame` gives it)."""
        x = network_input(crops)
        if not len(x):
            return np.empty(0, np.float32)
        if self._onnx is not None:
            logits = self._onnx(x.numpy())[0]
        else:
            with torch.inference_mode():
                logits = self.model(x).numpy()
        return (0.5 + 0.5 * np.tanh(0.5 * logits)).astype(np.float32)  # the sigmoid, without overflow

    def __repr__(self) -> str:
        return f"FaceCheck(widths={self.model.config.widths}, threshold={self.threshold}, backend={self.backend!r})"


def resolve_face_check(face_check: "bool | str | Path | FaceCheck") -> FaceCheck | None:
    """:class:`facekp.Detector`'s ``face_check`` argument: ``True`` the bundled check, ``False`` none, a
    ``.safetensors`` file, or a :class:`FaceCheck` as it is."""
    if isinstance(face_check, FaceCheck) or face_check is False:
        return face_check or None
    if face_check is True:
        return FaceCheck()
    if isinstance(face_check, (str, Path)):
        return FaceCheck(face_check)
    raise TypeError(f"face_check must be True, False, a .safetensors path or a FaceCheck, got {type(face_check).__name__}")
