"""ONNX export of the keypoint network, and an onnxruntime inference backend.

The exported graph is the network only: standardized crops ``(N, 1, S, S)`` float32 in,
heatmaps of the last stack ``(N, K, S/stride, S/stride)`` float32 out, BatchNorm folded into the
convolutions, the batch dimension dynamic. Input preparation (:func:`facekp.preprocess.standardize`)
and the DARK decode (:class:`facekp.codec.HeatmapCodec`) stay in Python, shared with the torch
backend, so both backends return the same points up to float rounding of the network.

The model's :class:`~facekp.config.DetectorConfig` is embedded in the file's metadata
(``facekp_config``), so an exported file is self-describing (:func:`read_onnx_config`).

Needs the ``onnx`` extra: ``pip install "facekp[onnx]"`` (``onnx`` + ``onnxruntime``; for CUDA,
``onnxruntime-gpu`` instead of ``onnxruntime``).
"""

from __future__ import annotations

import copy
import inspect
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import DetectorConfig
from .errors import DeviceError, FacekpError
from .model import StackedHourglass, fuse_conv_bn

INPUT_NAME = "crops"
OUTPUT_NAME = "heatmaps"
DEFAULT_OPSET = 17
METADATA_KEY = "facekp_config"

_INSTALL_HINT = 'the ONNX backend needs onnxruntime: pip install "facekp[onnx]"'


class _HeatmapNet(nn.Module):
    """The graph that is exported: the last stack's heatmaps only."""

    def __init__(self, net: StackedHourglass) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net.predict_heatmaps(crops)


def onnx_bytes(model: StackedHourglass, config: DetectorConfig | None = None, *, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialize ``model`` (fused, fp32, on CPU; the original is not modified) as ONNX bytes.

    The batch dimension is dynamic. With ``config`` and the ``onnx`` package installed, the
    config is written into the model's metadata.
    """
    net = fuse_conv_bn(copy.deepcopy(model).float().cpu().eval())
    size = net.config.input_size
    example = torch.zeros(2, 1, size, size)
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        do_constant_folding=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript-based exporter: no onnxscript dependency, and a static graph of plain
        # Conv/Relu/Add/MaxPool/Resize nodes is all this network needs.
        kwargs["dynamo"] = False
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_HeatmapNet(net), (example,), buffer, **kwargs)
    data = buffer.getvalue()
    if config is not None:
        data = _with_metadata(data, {METADATA_KEY: json.dumps(config.to_dict())})
    return data


def _with_metadata(data: bytes, entries: dict[str, str]) -> bytes:
    try:
        import onnx
    except ImportError:  # onnxruntime alone can run the file; the metadata is a convenience
        return data
    proto = onnx.load_from_string(data)
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "facekp"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(
    out: str | Path,
    weights=None,
    *,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Write the keypoint network to ``out`` as ONNX (dynamic batch, config in the metadata).

    Args:
        out: the ``.onnx`` file to write.
        weights: a :class:`~facekp.Detector`, or anything ``Detector(weights)`` accepts
            (``None`` for the bundled default model).
        opset: ONNX opset version.
        overwrite: replace ``out`` if it exists.
    """
    from .detector import Detector

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --force) to replace it")
    det = weights if isinstance(weights, Detector) else Detector(weights, device="cpu")
    data = onnx_bytes(det.model, det.config, opset=opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def read_onnx_config(path: str | Path) -> DetectorConfig:
    """The :class:`~facekp.config.DetectorConfig` embedded in a file written by :func:`export_onnx`."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise FacekpError(f"{path} carries no facekp config in its metadata; was it written by facekp export-onnx?")
    return DetectorConfig.from_dict(json.loads(meta[METADATA_KEY]))


class OnnxBackend:
    """Runs an exported network with onnxruntime: ``(N, 1, S, S)`` float32 -> ``(N, K, h, w)``.

    Args:
        model: ONNX bytes (:func:`onnx_bytes`) or a path to an ``.onnx`` file.
        device: ``cpu`` or ``cuda[:N]`` (the latter needs ``onnxruntime-gpu``).
        threads: intra-op threads; ``None`` lets onnxruntime choose (one per physical core).
    """

    def __init__(self, model: bytes | str | Path, device: torch.device | str = "cpu", threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        device = torch.device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError(
                    "onnxruntime on this machine has no CUDA execution provider; install onnxruntime-gpu "
                    "or use backend='torch' on CUDA"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        source = model if isinstance(model, (bytes, bytearray)) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=providers)
        self.device = device
        self.input_name = self.session.get_inputs()[0].name

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        return self.session.run(None, {self.input_name: crops})[0]
