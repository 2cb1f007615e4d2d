"""The face finder network as an ONNX graph, run by onnxruntime (about 2-3x faster than torch on the CPU).

The graph takes normalized gray photos ``(1, 1, H, W)`` float32 (``H`` and ``W`` dynamic,
multiples of 32; see :func:`facekp.finder_model.normalize`) and returns the three maps of
:class:`facekp.finder_model.FaceFinderNet` (``s8``, ``s16``, ``s32``), BatchNorm folded.
Needs ``onnx`` (the ``onnx`` extra) to export and ``onnxruntime`` to run.
"""

from __future__ import annotations

import torch

from .finder_model import STRIDES, FaceFinderNet
from .onnx_graph import OnnxGraph, graph_bytes

INPUT_NAME = "photo"
OUTPUT_NAMES = tuple(f"s{s}" for s in STRIDES)


def finder_onnx_bytes(model: FaceFinderNet) -> bytes:
    """The finder network as an ONNX graph with dynamic height and width (needs ``onnx``: ``ImportError`` without it)."""
    dynamic = {INPUT_NAME: {2: "height", 3: "width"}} | {n: {2: f"{n}_h", 3: f"{n}_w"} for n in OUTPUT_NAMES}
    return graph_bytes(model, torch.zeros(1, 1, 64, 64), INPUT_NAME, OUTPUT_NAMES, dynamic)


def finder_graph(model: bytes, threads: int = 1) -> OnnxGraph:
    """An onnxruntime session for a finder graph: ``graph(x) -> [map per stride]``."""
    return OnnxGraph(model, INPUT_NAME, OUTPUT_NAMES, threads)
