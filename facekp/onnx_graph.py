"""Small networks as ONNX graphs: their export (BatchNorm folded) and the onnxruntime session that runs them.

The face finder (:mod:`facekp.finder_onnx`) and the face check (:mod:`facekp.face_check`) ship their
graphs beside their weights, so that they run in onnxruntime (a facekp dependency) without the
``onnx`` extra; the keypoint network's graph, which also holds the decode, is :mod:`facekp.onnx`'s.
On the 2-core CPU, onnxruntime runs these networks 3-8x faster than torch: at their sizes, torch's
per-layer dispatch costs more than the arithmetic.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .model import fuse_conv_bn
from .threads import onnxruntime_options

#: The opset the small graphs are exported with.
OPSET = 17
#: The backends a small network runs on (:func:`graph_to_run`).
BACKENDS = ("auto", "torch", "onnx")


def require_onnx() -> None:
    """Raise ``ImportError`` (one line, naming the extra to install) unless ``onnx`` can be imported:
    exporting needs it (torch's exporter imports it too), so an export checks before any work."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ImportError(f'exporting to ONNX needs the onnx package (import onnx failed: {exc}); '
                          f'install it with: pip install "facekp[onnx]"') from exc


def onnx_export_available() -> bool:
    """Whether a network can be exported and run here: both ``onnx`` (torch's exporter needs it) and
    ``onnxruntime`` are importable. ``"auto"`` backends pick onnxruntime only then."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
    except ImportError:  # a finder that refuses the name: as good as not installed
        return False


def onnxruntime_importable() -> bool:
    """Whether ``import onnxruntime`` works here (``"auto"`` backends fall back to torch when it does not)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def graph_to_run(backend: str, bundled: Path | None, export: Callable[[], bytes]) -> bytes | None:
    """The ONNX graph a small network runs on ``backend``, or None for torch: with ``"onnx"`` the ``bundled``
    graph file (verified by the caller) or else ``export()``; with ``"auto"`` the same when onnxruntime imports
    and the graph is bundled or can be exported (:func:`onnx_export_available`), else None."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
    if backend == "torch" or (backend == "auto" and not (onnxruntime_importable()
                                                          and (bundled is not None or onnx_export_available()))):
        return None
    return bundled.read_bytes() if bundled is not None else export()


def graph_bytes(model: nn.Module, example: torch.Tensor, input_name: str, output_names: Sequence[str],
                dynamic_axes: Mapping[str, Mapping[int, str]]) -> bytes:
    """``model`` (a copy: BatchNorm folded, eval mode, CPU) as an ONNX graph traced on ``example``; the axes of
    ``dynamic_axes`` (name -> {axis: label}) stay free. ``ImportError`` without the ``onnx`` package."""
    require_onnx()
    net = fuse_conv_bn(copy.deepcopy(model).float().cpu().eval())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, example, buffer, input_names=[input_name], output_names=list(output_names),
                          dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


class OnnxGraph:
    """An onnxruntime session on the CPU for a graph of one input: ``graph(x) -> [outputs]`` (float32 arrays).

    ``threads``: onnxruntime intra-op threads (default: one, which on a shared 2-core machine beats two).
    """

    def __init__(self, model: bytes, input_name: str, output_names: Sequence[str], threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(f"running an ONNX graph needs onnxruntime, a facekp dependency (import onnxruntime failed: "
                              f"{exc}); install it with: pip install onnxruntime") from exc

        options = onnxruntime_options(threads)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._input, self._outputs = input_name, list(output_names)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self._outputs, {self._input: np.ascontiguousarray(x, dtype=np.float32)})
