"""Runners: what executes the keypoint network, and the one place that decides which runs.

A :class:`Runner` takes normalized crops ``(B, 1, S, S)`` float32 (a torch tensor on the CPU, see
:func:`facekp.preprocess.network_input`) and returns torch tensors: :meth:`Runner.heatmaps`
``(B, K, h, w)`` float32, :meth:`Runner.keypoints` points ``(B, K, 2)`` (x, y) in crop pixels,
pixel-centre convention, and confidences ``(B, K)``; both run without autograd. Two implement it with the same call shape:
:class:`TorchRunner` (the fused network, optionally autocast or compiled) and :class:`OnnxRunner`
(an exported graph in onnxruntime, decoded inside the graph). :func:`make_runner` owns the rules of
device x backend x precision and builds the one that was asked for; :func:`run_crops` drives a
runner over a batch of crops.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from . import validate
from .codec import HeatmapCodec
from .config import DetectorConfig
from .errors import DeviceError, WeightsError
from .keypoints import FLIP_INDEX
from .model import StackedHourglass, fuse_conv_bn
from .onnx import INSTALL_HINT, METADATA_KEY, OUTPUT_NAMES, PRECISION_KEY, cached_onnx_bytes, embedded_config
from .onnx_graph import onnx_export_available
from .preprocess import network_input
from .threads import onnxruntime_options, torch_threads_for
from .weights import ManifestEntry, bundled_onnx

#: Inference backends: the torch network, its ONNX export run by onnxruntime, or "auto" (onnx on
#: CPU when onnxruntime is installed and fp32 is asked for, else torch).
BACKENDS = ("torch", "onnx", "auto")

#: ``precision`` values and the autocast dtype of each (None: no autocast). "int8" runs a
#: quantized ONNX graph on CPU (backend "onnx").
PRECISIONS = {"auto": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


# -- the rules -------------------------------------------------------------------------------
def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other values are checked to exist here."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"invalid device {device!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for, but CUDA is not available on this machine; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise DeviceError(f"device type {dev.type!r} is not supported; expected 'cpu' or 'cuda'")
    return dev


def resolve_backend(backend: str, device: torch.device, precision: str = "auto", compile: bool | str = False) -> str:
    """``"auto"`` -> ``"onnx"`` on CPU for fp32 without compile when the graph can be exported and run
    (:func:`facekp.onnx_graph.onnx_export_available`), else ``"torch"``.

    ``precision="int8"`` resolves to ``"onnx"``; it needs ``backend`` ``"onnx"`` or ``"auto"`` and the
    CPU (with ``"torch"`` it raises ``ValueError``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision == "int8":
        if backend == "torch" or device.type != "cpu":
            raise ValueError("precision='int8' runs a quantized ONNX graph on the CPU: use backend='onnx' (or 'auto') and device='cpu'")
        return "onnx"
    if backend != "auto":
        return backend
    if device.type != "cpu" or precision not in ("auto", "fp32") or compile:
        return "torch"
    return "onnx" if onnx_export_available() else "torch"


def bundled_graph(entry: ManifestEntry, device: torch.device, backend: str | None = None, precision: str = "auto",
                  compile: bool | str = False) -> Path | None:
    """The ONNX graph bundled with manifest model ``entry`` that these settings run, or None (no graph).

    ``precision="int8"``: the int8 graph (:class:`~facekp.errors.WeightsError` when the model ships
    none). On the CPU, fp32 without compile and ``backend`` None, ``"auto"`` or ``"onnx"``: the fp32
    graph, when the model ships one. It gives the torch network's points to within 1e-3 px in a
    third to a quarter of the time (``docs/benchmarks.md``), and needs no export (so no ``onnx`` package).
    """
    if precision == "int8":
        return bundled_onnx(entry, "int8")
    wants_fp32_graph = backend in (None, "auto", "onnx") and precision in ("auto", "fp32") and not compile
    if device.type == "cpu" and wants_fp32_graph and entry.fp32_onnx:
        return bundled_onnx(entry, "fp32")
    return None


def resolve_precision(precision: str, device: torch.device, backend: str = "torch") -> str:
    """``"auto"`` -> ``"fp16"`` for the torch backend on CUDA, else ``"fp32"``; other values are checked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" and backend == "torch" else "fp32"
    return precision


def make_runner(
    model: StackedHourglass,
    config: DetectorConfig,
    device: torch.device,
    *,
    backend: str | None = None,
    precision: str = "auto",
    compile: bool | str = False,
    onnx_model: str | Path | None = None,
    threads: int | None = None,
) -> "Runner":
    """The runner for ``model`` that ``backend``, ``precision``, ``compile`` and ``onnx_model`` ask
    for on ``device`` (see :class:`facekp.Detector` for the values); ``ValueError`` or
    :class:`~facekp.errors.WeightsError` for combinations that cannot run. ``model`` itself is not
    modified (the torch runner fuses a copy; the onnx runner leaves the torch network alone)."""
    if backend is None or (backend == "auto" and onnx_model is not None):
        # the default: torch, unless an ONNX graph is asked for or bundled (bundled_graph)
        backend = "onnx" if precision == "int8" or onnx_model is not None else "torch"
    backend = resolve_backend(backend, device, precision, compile)
    if onnx_model is not None and backend != "onnx":
        raise ValueError("onnx_model is run by backend='onnx'")
    requested = precision
    precision = resolve_precision(precision, device, backend)
    if backend == "onnx" and (precision not in ("fp32", "int8") or compile):
        raise ValueError("backend='onnx' runs an exported fp32 or int8 graph: use precision='fp32' or 'int8' and compile=False")
    if precision == "int8" and onnx_model is None:
        raise ValueError("precision='int8' needs an int8 ONNX graph: these weights bundle none; make one with "
                         "`facekp export-onnx OUT.onnx --int8 CROPS_DIR` and pass onnx_model='OUT.onnx'")
    codec = HeatmapCodec.for_config(config)
    if backend == "torch":
        return TorchRunner(model, codec, device, precision=precision, compile=compile, threads=threads)
    if onnx_model is None:
        return OnnxRunner(cached_onnx_bytes(model, config), codec, device, threads=threads)
    runner = OnnxRunner(onnx_model, codec, device, threads=threads)
    runner.check_input_size(config.hourglass.input_size)
    embedded = runner.config()
    if embedded is not None and embedded.hourglass != config.hourglass:
        raise WeightsError(f"{onnx_model} holds another architecture ({embedded.hourglass}) than the weights ({config.hourglass})")
    if precision == "int8" and runner.precision != "int8":
        raise WeightsError(f"precision='int8' was asked for, but {onnx_model} is a {runner.precision} graph")
    if requested == "fp32" and runner.precision != "fp32":
        raise WeightsError(f"precision='fp32' was asked for, but {onnx_model} is an {runner.precision} graph; "
                           "pass precision='auto' to run the graph as it is")
    return runner


# -- the runners -------------------------------------------------------------------------------
@runtime_checkable
class Runner(Protocol):
    """Runs the keypoint network on normalized ``(B, 1, S, S)`` float32 crops (see the module doc).

    Attributes:
        backend: ``"torch"`` or ``"onnx"``.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
        device: where the network runs.
        codec: the heatmap decode of the model.
        threads: intra-op CPU threads (None: the library's default).
    """

    backend: str
    precision: str
    device: torch.device
    codec: HeatmapCodec
    threads: int | None

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor: ...

    def keypoints(self, x: torch.Tensor, flip_test: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...


class _FlipTest:
    """``keypoints`` shared by the runners: decoded directly, or from the mirror-averaged heatmaps."""

    codec: HeatmapCodec
    device: torch.device
    threads: int | None
    flip_index: torch.Tensor  # FLIP_INDEX where the runner's heatmaps are

    @torch.inference_mode()
    def keypoints(self, x: torch.Tensor, flip_test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``(B, K, 2)`` in crop pixels and confidences ``(B, K)`` of normalized crops ``x``;
        ``flip_test``: from the average of the heatmaps of ``x`` and of its mirror image, left and
        right keypoints swapped."""
        if not flip_test:
            return self._decoded(x)
        with torch_threads_for(len(x), self.device, self.threads):
            heatmaps = self.heatmaps(x)
            mirrored = self.heatmaps(x.flip(-1)).flip(-1).index_select(1, self.flip_index)
            return self.codec.decode(0.5 * (heatmaps + mirrored))


class TorchRunner(_FlipTest):
    """The torch network: a copy with BatchNorm folded into the convolutions, in channels-last layout
    (faster on CPU), on ``device``; ``precision`` ``"bf16"``/``"fp16"`` autocast it (heatmaps come
    back float32); ``compile`` wraps it in ``torch.compile`` (``True`` or a mode). ``fuse=False``
    runs ``model`` itself, as it is (e.g. a model being trained, already on its device).
    ``threads``: torch intra-op threads for its calls (None: torch's setting); batches under
    :data:`facekp.threads.SMALL_BATCH` crops run on one thread on the CPU either way.
    """

    backend = "torch"

    def __init__(self, model: StackedHourglass, codec: HeatmapCodec, device: torch.device | str = "cpu", *,
                 precision: str = "fp32", compile: bool | str = False, fuse: bool = True, threads: int | None = None) -> None:
        if precision not in PRECISIONS or precision in ("auto", "int8"):
            raise ValueError(f"the torch runner runs fp32, bf16 or fp16, got precision={precision!r}")
        self.device = torch.device(device)
        self.codec = codec
        self.precision = precision
        self.threads = threads
        self.flip_index = torch.tensor(FLIP_INDEX, device=self.device)
        if fuse:
            model = fuse_conv_bn(copy.deepcopy(model)).to(self.device, memory_format=torch.channels_last).eval()
        self.net = model
        self._heatmaps = model.predict_heatmaps
        if compile:
            self._heatmaps = torch.compile(model.predict_heatmaps, mode=None if compile is True else compile)

    @torch.inference_mode()
    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 heatmaps ``(B, K, h, w)`` of the last stack, on the runner's device."""
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self._heatmaps(x)
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]):
            return self._heatmaps(x).float()

    def _decoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch_threads_for(len(x), self.device, self.threads):
            return self.codec.decode(self.heatmaps(x))


class OnnxRunner(_FlipTest):
    """An exported graph (:func:`facekp.onnx.onnx_bytes`) run by onnxruntime.

    Args:
        model: ONNX bytes or a path to an ``.onnx`` file. A missing file raises
            ``FileNotFoundError``, one onnxruntime cannot load :class:`~facekp.errors.WeightsError`.
        codec: the decode for flip test (the graph decodes itself otherwise); None: the codec of the
            config embedded in the graph, else the default config's.
        device: ``cpu`` or ``cuda[:N]`` (the latter needs ``onnxruntime-gpu``).
        threads: intra-op threads; ``None`` lets onnxruntime choose (one per physical core). On
            the project's 2-core CPU two threads beat one even for a single crop (int8: 1.27 vs
            1.56 ms), so no batch size gets fewer.
    """

    backend = "onnx"

    def __init__(self, model: bytes | str | Path, codec: HeatmapCodec | None = None, device: torch.device | str = "cpu", *,
                 threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        device = torch.device(device)
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError(
                    "onnxruntime on this machine has no CUDA execution provider; install onnxruntime-gpu "
                    "or use backend='torch' on CUDA"
                )
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = onnxruntime_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.threads = threads
        self.source = "the exported graph" if isinstance(model, (bytes, bytearray)) else str(model)
        self.session = _session(ort, model, options, providers)
        self.device = device
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs != list(OUTPUT_NAMES):
            raise WeightsError(
                f"the ONNX graph has outputs {outputs}, expected {list(OUTPUT_NAMES)}: it was not written by this "
                "facekp's export-onnx (older exports hold heatmaps only); export it again"
            )
        #: the file's metadata: ``facekp_config`` (JSON) and, for quantized graphs, ``facekp_precision``
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.codec = codec if codec is not None else HeatmapCodec.for_config(self.config() or DetectorConfig())
        self.flip_index = torch.tensor(FLIP_INDEX)  # its heatmaps come back on the CPU

    @property
    def precision(self) -> str:
        return self.metadata.get(PRECISION_KEY, "fp32")

    def config(self) -> DetectorConfig | None:
        """The embedded :class:`~facekp.config.DetectorConfig`, if the file carries one."""
        text = self.metadata.get(METADATA_KEY)
        return embedded_config(text, self.source) if text is not None else None

    def check_input_size(self, size: int) -> None:
        """Refuse a graph whose input is not ``(N, 1, size, size)``: it was exported for another model."""
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (1, size, size))):
            raise WeightsError(f"{self.source} takes input of shape {shape}; these weights need (N, 1, {size}, {size})")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 heatmaps ``(B, K, h, w)`` (on the CPU)."""
        return torch.from_numpy(self._run(["heatmaps"], x)[0])

    def _decoded(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points, confidence = self._run(["points", "confidence"], x)  # decoded in the graph
        return torch.from_numpy(points), torch.from_numpy(confidence)

    def _run(self, outputs: list[str], x: torch.Tensor) -> list[np.ndarray]:
        crops = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return self.session.run(outputs, {self.input_name: crops})


def _session(ort, model: bytes | str | Path, options, providers):
    """An onnxruntime session of ``model`` (bytes or a path), with facekp's errors for a bad file."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile

    is_bytes = isinstance(model, (bytes, bytearray))
    if not is_bytes and not Path(model).exists():
        raise FileNotFoundError(f"ONNX model not found: {model}")
    try:
        return ort.InferenceSession(model if is_bytes else str(model), sess_options=options, providers=providers)
    except (InvalidProtobuf, InvalidGraph, InvalidArgument, NoSuchFile, Fail) as exc:  # an empty file: InvalidArgument
        what = "the exported graph" if is_bytes else str(model)
        raise WeightsError(f"{what} is not a readable ONNX graph ({exc})") from exc


# -- driving a runner ---------------------------------------------------------------------------
@torch.inference_mode()
def run_crops(runner: Runner, crops: np.ndarray, batch_size: int, flip_test: bool = False,
              normalization: str = "standardize") -> tuple[np.ndarray, np.ndarray]:
    """``(N, S, S)`` crops in [0, 1] -> points ``(N, K, 2)`` float32 in crop pixels and confidences
    ``(N, K)`` float32, ``batch_size`` crops per call of ``runner``."""
    pin = runner.device.type == "cuda" and runner.backend == "torch"
    points, confidence = [], []
    for start in range(0, len(crops), batch_size):
        x = torch.from_numpy(network_input(crops[start : start + batch_size], normalization))
        if pin:
            # Pinned host memory lets the copy run asynchronously with the previous batch.
            x = x.pin_memory().to(runner.device, non_blocking=True)
        p, c = runner.keypoints(x, flip_test)
        points.append(p)  # stays on the device until the end: no sync per batch
        confidence.append(c)
    points, confidence = torch.cat(points).cpu().numpy(), torch.cat(confidence).cpu().numpy().astype(np.float32)
    validate.finite_points(points, confidence)
    return points, confidence
