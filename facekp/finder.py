"""facekp's own face finder: :class:`FaceFinder`, a :class:`facekp.face_detection.FaceDetector` for
:meth:`facekp.Detector.detect`, and :func:`decode`, from the network's maps to faces.

The photo is shrunk so that its longer side is at most ``max_side``, padded to a multiple of
32 px, and run through :class:`facekp.finder_model.FaceFinderNet`; every cell whose score is
a local maximum (3x3) above ``min_score`` gives a face: its centre, its square box and its
in-plane angle, so the keypoint network gets each face upright. Overlapping faces (IoU above
``nms_iou``) keep the highest score.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from .calibration import BoxCalibration
from .face_detection import gray_u8, nms, unshrink_boxes
from .finder_model import STRIDES, FaceFinderNet, normalize
from .finder_onnx import finder_graph, finder_onnx_bytes
from .images import fit_within
from .model import fuse_conv_bn
from .onnx_graph import graph_to_run

#: The name calibrations and the manifest know the finder by.
FINDER_NAME = "facekp_finder"
#: Score threshold of a finder network passed in without one.
DEFAULT_MIN_SCORE = 0.5
#: Faces scored from this up to ``min_score`` are "weak": :meth:`facekp.Detector.detect` keeps one
#: only when the keypoint network's presence at its first framing is high
#: (:data:`facekp.candidates.WEAK_MIN_PRESENCE`), and tries no turns on it.
WEAK_SCORE = 0.15


def decode(maps: Sequence[np.ndarray], strides: Sequence[int] = STRIDES, min_score: float = 0.5,
           nms_iou: float = 0.4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces from one photo's output maps.

    Args:
        maps: per level a ``(6, h, w)`` array (channels as :data:`facekp.finder_model.OUTPUTS`:
            score logit, dx, dy, log side, cos, sin).
        strides: input pixels per cell of each level.
        min_score: smallest face probability kept, in (0, 1).
        nms_iou: faces overlapping a better one by more than this IoU are dropped.

    Returns:
        ``(N, 4)`` boxes ``x0, y0, x1, y1`` in input pixels (pixel-centre convention), ``(N,)``
        scores in (0, 1) and ``(N,)`` angles in degrees, (-180, 180], best score first.
    """
    if not 0.0 < min_score < 1.0:
        raise ValueError(f"min_score must lie in (0, 1), got {min_score}")
    if len(maps) != len(strides):
        raise ValueError(f"{len(maps)} output maps for {len(strides)} strides")
    logit_floor = float(np.log(min_score / (1.0 - min_score)))
    boxes, scores, angles = [], [], []
    for m, stride in zip(maps, strides):
        m = np.asarray(m, dtype=np.float32)
        if m.ndim != 3 or m.shape[0] != 6:
            raise ValueError(f"each output map must be (6, h, w), got shape {m.shape}")
        logit = m[0]
        peak = (logit >= cv2.dilate(logit, np.ones((3, 3), np.uint8))) & (logit >= logit_floor)
        i, j = np.nonzero(peak)
        if not len(i):
            continue
        dx, dy, log_side, c, s = m[1:, i, j]
        cx = (j + dx + 0.5) * stride - 0.5
        cy = (i + dy + 0.5) * stride - 0.5
        half = 0.5 * np.exp(np.clip(log_side, -3.0, 6.0)) * stride
        boxes.append(np.stack([cx - half, cy - half, cx + half, cy + half], axis=1))
        scores.append(1.0 / (1.0 + np.exp(-logit[i, j])))
        angles.append(np.degrees(np.arctan2(s, c)))
    if not boxes:
        return np.empty((0, 4)), np.empty(0), np.empty(0)
    b, sc, a = (np.concatenate(v).astype(np.float64) for v in (boxes, scores, angles))
    keep = nms(b, sc, nms_iou)
    return b[keep], sc[keep], a[keep]


class FaceFinder:
    """facekp's learned face finder for whole photos, any in-plane rotation.

    Args:
        model: the network (default: the bundled weights, :func:`facekp.finder_weights.load_finder`).
        calibration: from its boxes to the keypoint network's frame (default: the bundled one).
        min_score: smallest face probability reported, in (0, 1) (default: the bundled weights'
            own threshold, or :data:`DEFAULT_MIN_SCORE` for a model passed in).
        max_side: photos whose longer side exceeds this are shrunk to it first (speed; the
            smallest faces found then have about ``8 * longer side / max_side`` px eye distance).
        nms_iou: overlap above which the weaker of two faces is dropped.
        weak_score: faces scored in [weak_score, min_score) are the weak ones ``detect`` may keep on
            the strength of their presence (:data:`WEAK_SCORE`); None, or a value not under
            ``min_score``: none. Calling the finder reports only faces from ``min_score`` up.
        backend: ``"onnx"`` (onnxruntime; the bundled network ships its graph, another one is
            exported, which needs the ``onnx`` extra), ``"torch"``, or ``"auto"``: onnx for the
            bundled network or when the graph can be exported, when onnxruntime imports, else torch
            (:func:`facekp.onnx_graph.graph_to_run`). Both give the same maps (to float precision); onnx is about 8x faster on the CPU.
    """

    name = FINDER_NAME
    wants_gray = True

    def __init__(self, model: FaceFinderNet | None = None, calibration: BoxCalibration | dict | None = None,
                 min_score: float | None = None, max_side: int | None = 640, nms_iou: float = 0.4,
                 backend: str = "auto", weak_score: float | None = WEAK_SCORE) -> None:
        for name, value in (("min_score", min_score), ("weak_score", weak_score)):
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be at least 32 (or None), got {max_side}")
        graph = None  # the bundled network's own ONNX graph, when that network runs
        if model is None or calibration is None:
            from .finder_weights import load_finder

            bundled = load_finder()
            if model is None:
                model, graph = bundled.model, bundled.onnx
            calibration = calibration or bundled.calibration
            min_score = bundled.min_score if min_score is None else min_score
        self.model = fuse_conv_bn(copy.deepcopy(model).eval())  # BatchNorm folded: ~20% faster on CPU
        self.calibration = calibration if isinstance(calibration, BoxCalibration) else BoxCalibration.from_dict(calibration)
        self.min_score = DEFAULT_MIN_SCORE if min_score is None else min_score
        self.weak_score = weak_score if weak_score is not None and weak_score < self.min_score else None
        self.max_side = max_side
        self.nms_iou = nms_iou
        onnx = graph_to_run(backend, graph, lambda: finder_onnx_bytes(model))
        self._onnx = None if onnx is None else finder_graph(onnx)
        self.backend = "onnx" if self._onnx is not None else "torch"

    @classmethod
    def from_file(cls, path, **kwargs) -> "FaceFinder":
        """A finder from a ``.safetensors`` file written by :func:`facekp.finder_weights.save_finder`."""
        from .finder_weights import load_finder_file

        weights = load_finder_file(path)
        kwargs.setdefault("min_score", weights.min_score)
        return cls(weights.model, weights.calibration, **kwargs)

    def __call__(self, image, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(N, 4)`` boxes ``x0, y0, x1, y1`` (image pixels), ``(N,)`` scores and ``(N,)`` angles
        (degrees) of the faces scored from ``min_score`` (default: the finder's own) up."""
        photo = gray_u8(image)
        gray = fit_within(photo, self.max_side)
        boxes, scores, angles = decode(self.maps(gray), STRIDES, self.min_score if min_score is None else min_score,
                                       self.nms_iou)
        return unshrink_boxes(boxes, gray.shape, photo.shape), scores, angles

    def maps(self, gray: np.ndarray) -> list[np.ndarray]:
        """The network's output maps for a (H, W) uint8 photo: ``(6, ceil(H/s), ceil(W/s))`` per stride ``s``.

        The photo is padded (edge pixels repeated) to a multiple of 32 px for the network; cells
        wholly in the padding are cut off again, so no face is reported there.
        """
        h, w = gray.shape
        ph, pw = -h % 32, -w % 32
        if ph or pw:
            gray = cv2.copyMakeBorder(gray, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
        x = normalize(gray)[None, None]  # a new array: writable, as torch.from_numpy wants
        if self._onnx is not None:
            out = self._onnx(x)
        else:
            with torch.inference_mode():
                out = [o.numpy() for o in self.model(torch.from_numpy(x))]
        return [o[0, :, : -(-h // s), : -(-w // s)] for o, s in zip(out, STRIDES)]

    def __repr__(self) -> str:
        return (f"FaceFinder(min_score={self.min_score}, weak_score={self.weak_score}, max_side={self.max_side}, "
                f"nms_iou={self.nms_iou}, backend={self.backend!r})")
