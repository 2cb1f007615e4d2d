"""ONNX export of the face finder network, and its onnxruntime runner (about 2-3x faster on CPU).

The graph takes normalized gray photos ``(1, 1, H, W)`` float32 (``H`` and ``W`` dynamic,
multiples of 32; see :func:`facekp.finder_model.normalize`) and returns the three maps of
:class:`facekp.finder_model.FaceFinderNet` (``s8``, ``s16``, ``s32``), BatchNorm folded.
Needs ``onnx`` (the ``onnx`` extra) to export and ``onnxruntime`` to run.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch

from .finder_model import STRIDES, FaceFinderNet
from .model import fuse_conv_bn
from .onnx import require_onnx
from .threads import onnxruntime_options

INPUT_NAME = "photo"
OUTPUT_NAMES = tuple(f"s{s}" for s in STRIDES)


def finder_onnx_bytes(model: FaceFinderNet, opset: int = 17) -> bytes:
    """The finder network as an ONNX graph with dynamic height and width (needs ``onnx``: ``ImportError`` without it)."""
    require_onnx()
    net = fuse_conv_bn(copy.deepcopy(model).eval())
    buf = io.BytesIO()
    dynamic = {INPUT_NAME: {2: "height", 3: "width"}} | {n: {2: f"{n}_h", 3: f"{n}_w"} for n in OUTPUT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, torch.zeros(1, 1, 64, 64), buf, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return buf.getvalue()


class OnnxFinderRunner:
    """Runs an exported finder graph with onnxruntime: ``runner(x) -> [maps per stride]``.

    ``threads``: onnxruntime intra-op threads (default: one, which on a shared 2-core machine beats two).
    """

    def __init__(self, model: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = onnxruntime_options(threads)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
