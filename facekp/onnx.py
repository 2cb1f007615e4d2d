"""ONNX export of the keypoint network: the graph, its cache and its int8 quantization.

The exported graph takes standardized crops ``(N, 1, S, S)`` float32 (see
:func:`facekp.preprocess.standardize`) and has three outputs: ``heatmaps`` of the last stack
``(N, K, S/stride, S/stride)``, and the DARK decode of them (:meth:`facekp.codec.HeatmapCodec.decode`,
traced from the same code the torch backend runs): ``points`` ``(N, K, 2)`` (x, y) in crop pixels,
pixel-centre convention, and ``confidence`` ``(N, K)``. BatchNorm is folded into the convolutions;
the batch dimension is dynamic. Decoding inside the graph costs a fraction of the dozens of small
torch calls it replaces, which matters for one crop at a time. :class:`facekp.runtime.OnnxRunner`
runs the graph.

The model's :class:`~facekp.config.DetectorConfig` is embedded in the file's metadata
(``facekp_config``), so an exported file is self-describing (:func:`read_onnx_config`).

Running a graph needs ``onnxruntime``, a facekp dependency (for CUDA, ``onnxruntime-gpu`` instead);
exporting one needs the ``onnx`` extra (``pip install "facekp[onnx]"``): torch's exporter imports
``onnx``, and so do the metadata and int8 quantization. :func:`export_onnx` refuses up front without it.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import fileio, validate
from .codec import HeatmapCodec
from .config import DetectorConfig
from .errors import FacekpError, WeightsError
from .images import load_gray
from .model import StackedHourglass, fuse_conv_bn
from .onnx_graph import require_onnx
from .preprocess import frame_crops, letterbox_transforms, network_input
from .weights import resolve_weights

INPUT_NAME = "crops"
OUTPUT_NAMES = ("heatmaps", "points", "confidence")
#: Changes whenever the exported graph's inputs or outputs change; part of the export cache key.
GRAPH_VERSION = 2
DEFAULT_OPSET = 17
METADATA_KEY = "facekp_config"
PRECISION_KEY = "facekp_precision"

INSTALL_HINT = "the ONNX backend needs onnxruntime (a facekp dependency): pip install onnxruntime"


class _HeatmapNet(nn.Module):
    """The network part of the graph: the last stack's heatmaps."""

    def __init__(self, net: StackedHourglass) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net.predict_heatmaps(crops)


class _Decode(nn.Module):
    """The decode part of the graph; its own module so its nodes are named ``/decode/...``."""

    def __init__(self, codec: HeatmapCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codec.decode(heatmaps)


class _KeypointGraph(nn.Module):
    """What is exported: crops -> (heatmaps, points, confidence)."""

    def __init__(self, net: StackedHourglass, codec: HeatmapCodec) -> None:
        super().__init__()
        self.network = _HeatmapNet(net)
        self.decode = _Decode(codec)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heatmaps = self.network(crops)
        return (heatmaps, *self.decode(heatmaps))


#: Prefix of the decode's node names: quantization leaves those nodes in fp32.
_DECODE_SCOPE = "/decode/"


def onnx_bytes(model: StackedHourglass, config: DetectorConfig | None = None, *, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialize ``model`` (fused, fp32, on CPU; the original is not modified) as ONNX bytes.

    The batch dimension is dynamic. The decode uses ``config``'s codec settings (the default
    :class:`~facekp.config.DetectorConfig`'s without it); ``config`` is written into the model's
    metadata. Needs the ``onnx`` package (``ImportError`` from :func:`require_onnx` without it).
    """
    require_onnx()
    net = fuse_conv_bn(copy.deepcopy(model).float().cpu().eval())
    h = net.config
    codec = HeatmapCodec(h.input_size, h.heatmap_stride, (config or DetectorConfig()).sigma)
    example = torch.zeros(2, 1, h.input_size, h.input_size)
    kwargs = dict(
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=opset,
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        do_constant_folding=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript-based exporter: no onnxscript dependency, and it traces the network
        # and the decode into a static graph of plain ONNX operators.
        kwargs["dynamo"] = False
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_KeypointGraph(net, codec), (example,), buffer, **kwargs)
    data = buffer.getvalue()
    return _finish(data, {METADATA_KEY: json.dumps(config.to_dict())} if config is not None else {}, h.num_keypoints)


def cache_dir() -> Path:
    """Where exported graphs are cached: ``$FACEKP_CACHE/onnx``, else ``$XDG_CACHE_HOME/facekp/onnx``
    (``~/.cache/facekp/onnx``)."""
    root = os.environ.get("FACEKP_CACHE")
    if root:
        return Path(root) / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "facekp" / "onnx"


def cached_onnx_bytes(model: StackedHourglass, config: DetectorConfig | None = None, *, opset: int = DEFAULT_OPSET) -> bytes:
    """:func:`onnx_bytes`, reusing an earlier export of the same weights from :func:`cache_dir`.

    Exporting takes a second or two; loading the cached file milliseconds. The key hashes the
    weights, the config, the opset and the torch version. A file is named by the key and the
    sha256 of its bytes, so a truncated or corrupt one is noticed, exported again and replaced.
    An unwritable cache is not an error.
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    h.update(json.dumps(config.to_dict() if config else None, sort_keys=True).encode())
    h.update(f"{opset}|{torch.__version__}|{GRAPH_VERSION}".encode())
    key = h.hexdigest()[:32]
    data = _read_cache(key)
    if data is None:
        data = onnx_bytes(model, config, opset=opset)
        _write_cache(key, data)
    return data


def _cache_name(key: str, data: bytes) -> str:
    return f"{key}-{hashlib.sha256(data).hexdigest()[:16]}.onnx"


def _read_cache(key: str) -> bytes | None:
    """The cached export for ``key`` whose bytes match the digest in its name; others are deleted."""
    for path in cache_dir().glob(f"{key}-*.onnx"):
        try:
            data = path.read_bytes()
            if path.name == _cache_name(key, data):
                return data
            path.unlink()
        except OSError:
            pass
    return None


def _write_cache(key: str, data: bytes) -> None:
    """Write atomically (a reader sees the old file or the whole new one); failures are ignored."""
    path = cache_dir() / _cache_name(key, data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass


def _finish(data: bytes, entries: dict[str, str], num_keypoints: int) -> bytes:
    """Add metadata ``entries`` and give the decoded outputs their static keypoint axis (tracing
    leaves it symbolic). Both are conveniences for people reading the file: onnxruntime alone
    runs the graph without them."""
    import onnx

    proto = onnx.load_from_string(data)
    for output in proto.graph.output:
        if output.name != "heatmaps":
            output.type.tensor_type.shape.dim[1].dim_value = num_keypoints
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    proto.producer_name = "facekp"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def quantize_int8(model: bytes, calibration: np.ndarray, *, weight_bits: int = 7) -> bytes:
    """Static int8 quantization of an exported graph, for onnxruntime on CPU.

    QDQ format, per-channel 7-bit weights, uint8 activations calibrated on ``calibration``:
    ``(N, 1, S, S)`` float32 standardized crops of real faces (a few hundred suffice; see
    :func:`calibration_inputs`). The network is quantized; the decode stays fp32.

    Each activation's range is the mean over the calibration faces of that face's min and max.
    The extremes over all faces, onnxruntime's default, spend the 8 bits on rare outliers: for the
    default model they cost 0.06 px of validation RMSE. Weights use 7 of their 8 bits
    (``reduce_range``) because x86 CPUs without VNNI multiply uint8 by int8 in pairs summed into
    int16, which full-range weights can overflow; with 7 bits the sums fit, so the points do not
    depend on whether the CPU has VNNI (``docs/int8-cpus.md`` checks this on emulated CPUs).
    ``weight_bits=8`` is only for graphs that will run on VNNI CPUs alone. ``docs/benchmarks.md``
    has the speed and accuracy figures. The result keeps ``model``'s metadata and adds
    ``facekp_precision = int8``.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as exc:
        raise ImportError('int8 quantization needs onnx and onnxruntime: pip install "facekp[onnx]"') from exc
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1] != 1 or len(calibration) == 0:
        raise ValueError(f"calibration must be (N, 1, S, S) standardized crops, got shape {calibration.shape}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: face[None]} for face in calibration])  # one face per range sample

        def get_next(self):
            return next(self.batches, None)

    import logging
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(model)
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs advice at WARNING
        try:
            quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=weight_bits == 7,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibMovingAverage": True},  # ranges averaged over the batches, i.e. the faces
                nodes_to_exclude=[n.name for n in onnx.load_from_string(model).graph.node if n.name.startswith(_DECODE_SCOPE)],
            )
        finally:
            logging.getLogger().setLevel(level)
        proto = onnx.load(str(dst))
    meta = {p.key: p.value for p in onnx.load_from_string(model).metadata_props}
    del proto.metadata_props[:]
    for key, value in {**meta, PRECISION_KEY: "int8"}.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto.SerializeToString()


def calibration_inputs(images, size: int = 96, normalization: str = "standardize") -> np.ndarray:
    """Face crops (anything :meth:`facekp.Detector.predict` accepts) -> ``(N, 1, S, S)`` network input,
    letterboxed as ``predict`` does."""
    grays = [load_gray(img) for img in images]
    return network_input(frame_crops(grays, letterbox_transforms(grays, size), size), normalization)


def export_onnx(
    out: str | Path,
    weights=None,
    *,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    int8_calibration=None,
) -> Path:
    """Write the keypoint network to ``out`` as ONNX (dynamic batch, config in the metadata).

    Args:
        out: the ``.onnx`` file to write.
        weights: a :class:`~facekp.Detector` (anything with ``model`` and ``config``), or what
            :func:`facekp.weights.resolve_weights` accepts (``None`` for the bundled default model).
        opset: ONNX opset version.
        overwrite: replace ``out`` if it exists.
        int8_calibration: face crops (a sequence of images, as for ``Detector.predict``) to
            quantize the graph to int8 with (:func:`quantize_int8`); None keeps fp32.

    Raises ``ImportError`` before anything is loaded or written when the ``onnx`` package is
    missing (:func:`require_onnx`).
    """
    require_onnx()
    if hasattr(weights, "model") and hasattr(weights, "config"):
        model, config, sources = weights.model, weights.config, []
    else:
        sources = fileio.files_of(weights) if isinstance(weights, (str, os.PathLike)) and Path(weights).exists() else []
    images = [] if int8_calibration is None else [c for c in int8_calibration if isinstance(c, (str, os.PathLike))]
    out = fileio.check_output(out, inputs=[*sources, *images], overwrite=overwrite)
    if not (hasattr(weights, "model") and hasattr(weights, "config")):
        resolved = resolve_weights(weights)
        model, config = resolved.model, resolved.config
    data = onnx_bytes(model, config, opset=opset)
    if int8_calibration is not None:
        data = quantize_int8(data, calibration_inputs(int8_calibration, config.hourglass.input_size, config.normalization))
    return fileio.write_bytes(out, data, inputs=sources, overwrite=overwrite)


def read_onnx_config(path: str | Path) -> DetectorConfig:
    """The :class:`~facekp.config.DetectorConfig` embedded in a file written by :func:`export_onnx`."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError, RuntimeError) as exc:  # onnx raises DecodeError (a RuntimeError subclass) too
        raise WeightsError(f"{path} is not a readable ONNX file ({exc})") from exc
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise FacekpError(f"{path} carries no facekp config in its metadata; was it written by facekp export-onnx?")
    return embedded_config(meta[METADATA_KEY], str(path))


def embedded_config(text: str, where: str) -> DetectorConfig:
    """The ``facekp_config`` metadata entry of a graph, or a :class:`WeightsError` naming the file."""
    try:
        return DetectorConfig.from_dict(validate.json_object(text, f"the {METADATA_KEY} metadata of {where}"))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"invalid {METADATA_KEY} metadata in {where}: {exc}") from exc
