"""The user-facing :class:`Detector`: face crop in, 15 sub-pixel keypoints out."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .codec import HeatmapCodec
from .config import DetectorConfig
from .errors import DeviceError, InvalidImageError, WeightsError
from .images import ImageInput, channels_first, load_gray
from .keypoints import FLIP_INDEX
from .model import StackedHourglass, fuse_conv_bn
from .preprocess import apply_affine, invert_affine, letterbox_transform, standardize, warp
from .threads import torch_threads_for
from .weights import (
    bundled_int8_onnx,
    default_entry,
    download_from_hub,
    find_entry,
    load_bundled,
    load_model,
    save_model,
)


#: Inference backends: the torch network, its ONNX export run by onnxruntime, or "auto" (onnx on
#: CPU when onnxruntime is installed and fp32 is asked for, else torch).
BACKENDS = ("torch", "onnx", "auto")

#: ``precision`` values and the autocast dtype of each (None: no autocast). "int8" runs a
#: quantized ONNX graph on CPU (backend "onnx").
PRECISIONS = {"auto": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}


def resolve_backend(backend: str, device: torch.device, precision: str = "auto", compile: bool | str = False) -> str:
    """``"auto"`` -> ``"onnx"`` on CPU for fp32 without compile when onnxruntime is importable, else ``"torch"``.

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
    import importlib.util

    return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def resolve_precision(precision: str, device: torch.device, backend: str = "torch") -> str:
    """``"auto"`` -> ``"fp16"`` for the torch backend on CUDA, else ``"fp32"``; other values are checked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" and backend == "torch" else "fp32"
    return precision


def _check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int, or ``ValueError`` unless it is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


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


class Detector:
    """Finds facekp's 15 keypoints (see :data:`facekp.KEYPOINT_NAMES`) on face crops.

    Args:
        weights: ``None`` for the default model bundled with the package, a model name from
            ``weights_manifest.json``, a ``.safetensors`` file, or a folder written by
            :meth:`save_pretrained`.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or a :class:`torch.device`.
        batch_size: crops per forward pass in :meth:`predict_batch` (a positive int).
        flip_test: also run each crop mirrored and average the heatmaps, left and right points
            swapped. Doubles the network's cost. It can help a model trained on mirror-consistent
            labels, but the bundled model's training labels are not (``docs/training-notes.md``):
            with it, flip test makes the validation RMSE about 0.2 px worse (``val_rmse_flip_test``
            vs ``val_rmse`` in ``weights_manifest.json``).
        backend: ``None`` (default: ``"onnx"`` when ``precision="int8"`` or ``onnx_model`` asks for
            an ONNX graph, else ``"torch"``), ``"torch"``, ``"onnx"`` to run the network with onnxruntime
            (``pip install "facekp[onnx]"``; faster on CPU, see ``docs/benchmarks.md``; the export is cached in
            ``~/.cache/facekp/onnx``), or ``"auto"``: onnx on CPU when onnxruntime is installed,
            else torch. All give the same points to within 1e-3 px.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast of the torch network; the
            heatmap decode always runs in fp32), ``"auto"``: fp16 on CUDA, fp32 on CPU, or
            ``"int8"``: the quantized ONNX graph bundled with the model, on CPU (needs
            onnxruntime; the fastest CPU path). See
            ``docs/benchmarks.md`` for the speed and accuracy of each.
        onnx_model: for the onnx backend, an ``.onnx`` file from ``facekp export-onnx`` (e.g. the
            int8 graph of ``--int8``) to run instead of exporting the weights; the weights still
            provide the config (and ``.model``). ``precision="auto"`` follows the graph; an
            explicit precision must match it.
        compile: wrap the network in ``torch.compile`` (``True``, or a mode such as
            ``"max-autotune"``). Pays off for long runs on CUDA; the first call compiles.

    Coordinates everywhere are (x, y) in pixels of the image passed in, with the pixel-centre
    convention: the centre of the top-left pixel is (0, 0), its top-left corner (-0.5, -0.5).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        flip_test: bool = False,
        backend: str | None = None,
        precision: str = "auto",
        compile: bool | str = False,
        onnx_model: str | Path | None = None,
    ) -> None:
        entry = None
        if weights is None:
            entry = default_entry()
        elif Path(weights).exists():
            model, config = load_model(weights)
        elif isinstance(weights, str) and "/" not in weights and "\\" not in weights and not weights.endswith(".safetensors"):
            entry = find_entry(weights)
        else:
            raise FileNotFoundError(f"weights not found: {weights}")
        if entry is not None:
            model, config = load_bundled(entry)
            if precision == "int8" and onnx_model is None:
                onnx_model = bundled_int8_onnx(entry)
        self._init(model, config, device, batch_size, flip_test, backend=backend, precision=precision, compile=compile,
                   onnx_model=onnx_model)

    def _init(
        self,
        model: StackedHourglass,
        config: DetectorConfig,
        device,
        batch_size: int,
        flip_test: bool,
        *,
        backend: str | None = None,
        precision: str = "auto",
        compile: bool | str = False,
        onnx_model: str | Path | None = None,
    ) -> None:
        batch_size = _check_batch_size(batch_size)
        self.device = resolve_device(device)
        if backend is None:  # the default: torch, unless an ONNX graph is asked for
            backend = "onnx" if precision == "int8" or onnx_model is not None else "torch"
        backend = resolve_backend(backend, self.device, precision, compile)
        if onnx_model is not None and backend != "onnx":
            raise ValueError("onnx_model is run by backend='onnx'")
        requested = precision
        precision = resolve_precision(precision, self.device, backend)
        if backend == "onnx" and (precision not in ("fp32", "int8") or compile):
            raise ValueError("backend='onnx' runs an exported fp32 or int8 graph: use precision='fp32' or 'int8' and compile=False")
        if precision == "int8" and onnx_model is None:
            raise ValueError("precision='int8' needs an int8 ONNX graph: these weights bundle none; make one with "
                             "`facekp export-onnx OUT.onnx --int8 CROPS_DIR` and pass onnx_model='OUT.onnx'")
        self.config = config
        self.batch_size = batch_size
        self.flip_test = flip_test
        self.backend = backend
        self.precision = precision
        self.codec = HeatmapCodec(config.hourglass.input_size, config.hourglass.heatmap_stride, config.sigma)
        self._model = model.eval()
        self._flip_index = torch.tensor(FLIP_INDEX, device=self.device)
        self._ort = None
        if backend == "onnx":
            from .onnx import OnnxBackend, cached_onnx_bytes

            if onnx_model is None:
                self._ort = OnnxBackend(cached_onnx_bytes(model, config), self.device)
            else:
                self._ort = OnnxBackend(onnx_model, self.device)
                embedded = self._ort.config()
                if embedded is not None and embedded.hourglass != config.hourglass:
                    raise WeightsError(f"{onnx_model} holds another architecture ({embedded.hourglass}) than the weights ({config.hourglass})")
                if precision == "int8" and self._ort.precision != "int8":
                    raise WeightsError(f"precision='int8' was asked for, but {onnx_model} is a {self._ort.precision} graph")
                if requested == "fp32" and self._ort.precision != "fp32":
                    raise WeightsError(f"precision='fp32' was asked for, but {onnx_model} is an {self._ort.precision} graph; "
                                     "pass precision='auto' to run the graph as it is")
                self.precision = self._ort.precision
        # Inference runs a copy with BatchNorm folded into the convolutions, in channels-last
        # layout (faster on CPU); `model` stays the trainable, savable original.
        self._net = fuse_conv_bn(copy.deepcopy(model)).to(self.device, memory_format=torch.channels_last).eval()
        self._heatmaps = self._net.predict_heatmaps
        if compile:
            self._heatmaps = torch.compile(self._net.predict_heatmaps, mode=None if compile is True else compile)

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        device: str | torch.device = "auto",
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> "Detector":
        """Load ``config.json`` + ``model.safetensors`` from a Hugging Face Hub repository.

        Downloads go through ``huggingface_hub`` (so ``HF_ENDPOINT``, ``HF_HOME``,
        ``HF_HUB_OFFLINE`` and the shared cache apply) and are verified by sha256.
        """
        folder = download_from_hub(repo_id, revision=revision, cache_dir=cache_dir)
        return cls(folder, device=device, **kwargs)

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (the layout :meth:`from_pretrained` reads)."""
        save_model(self._model, self.config, folder, overwrite=overwrite)
        return Path(folder)

    @property
    def model(self) -> StackedHourglass:
        """The underlying network (unfused, in eval mode)."""
        return self._model

    # -- prediction ----------------------------------------------------------------------
    def predict(self, img: ImageInput, return_confidence: bool = False):
        """Keypoints of one face crop.

        The crop (any size, at least 8x8) is scaled uniformly so its longer side spans the
        network's 96 pixels and centred; the shorter side is padded by repeating the border
        (letterbox, no stretching). The transform is inverted on the output, so a crop scaled
        2.5x gives points scaled 2.5x.

        Returns:
            ``(15, 2)`` float32 (x, y) in the input image's pixels; with ``return_confidence``
            also ``(15,)`` float32 confidences in [0, 1] (heatmap peak heights).
        """
        points, confidence = self.predict_batch([img], return_confidence=True)
        return (points[0], confidence[0]) if return_confidence else points[0]

    def predict_batch(
        self, images: Sequence[ImageInput], batch_size: int | None = None, return_confidence: bool = False
    ):
        """Keypoints of many face crops, ``batch_size`` crops per forward pass.

        ``images`` is a sequence of anything :meth:`predict` accepts (sizes may differ), or one
        array / tensor stacking same-size images: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
        (channels-first when C is 1, 3 or 4 and W is not, as for single tensors). ``batch_size``
        (a positive int) defaults to the detector's.

        Returns:
            ``(N, 15, 2)`` float32 points (and ``(N, 15)`` confidences with ``return_confidence``),
            each in its own input image's pixel coordinates.
        """
        batch_size = self._batch_size(batch_size)
        stack = self._input_sized_stack(images)
        if stack is not None:
            # Already network-sized gray crops: the letterbox is the identity, so the per-image
            # load/warp loop is skipped (same points; much cheaper for big batches).
            points, confidence = self._run(stack, batch_size)
            return (points, confidence) if return_confidence else points
        if isinstance(images, np.ndarray) and images.ndim == 4 and channels_first(images.shape[1:]):
            images = images.transpose(0, 2, 3, 1)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim in (3, 4):
            images = list(images)  # one image per row
        if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
            raise InvalidImageError(f"predict_batch takes a sequence of images, got {type(images).__name__}")
        grays = [load_gray(img) for img in images]
        transforms = [letterbox_transform(g.shape[1], g.shape[0], self.config.hourglass.input_size) for g in grays]
        points, confidence = self.predict_framed(grays, np.stack(transforms) if grays else np.empty((0, 2, 3)), batch_size)
        return (points, confidence) if return_confidence else points

    def _batch_size(self, batch_size: int | None) -> int:
        """A ``batch_size`` argument, checked; None: the detector's."""
        return self.batch_size if batch_size is None else _check_batch_size(batch_size)

    def _input_sized_stack(self, images) -> np.ndarray | None:
        """``images`` as (N, S, S) float32 in [0, 1] when it is one uint8/uint16/float array or tensor
        of N gray S x S crops (S = network input side) with valid values; else None (general path)."""
        size = self.config.hourglass.input_size
        if not isinstance(images, (np.ndarray, torch.Tensor)) or tuple(images.shape[1:]) != (size, size) or len(images) == 0:
            return None
        arr = images.detach().cpu() if isinstance(images, torch.Tensor) else images
        if isinstance(arr, torch.Tensor):
            if arr.dtype in (torch.float16, torch.bfloat16):
                arr = arr.float()
            arr = arr.numpy()
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / np.float32(255)
        if arr.dtype == np.uint16:
            return arr.astype(np.float32) / np.float32(65535)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
            lo, hi = float(arr.min()), float(arr.max())  # NaN fails both tests
            if lo >= 0.0 and hi <= 1.0:
                return arr
        return None

    def detect(
        self,
        image: ImageInput,
        boxes=None,
        *,
        face_detector=None,
        calibration=None,
        refine: int | None = None,
        max_faces: int | None = None,
    ) -> list:
        """Find the faces of a whole photo and their keypoints, largest face first.

        Args:
            image: anything :meth:`predict` accepts.
            boxes: face boxes to use instead of running a face detector: ``(N, 4)``
                ``x0, y0, x1, y1`` in image pixels, or ``(N, 5)`` with a score column.
            face_detector: a callable ``rgb_image -> boxes`` or ``-> (boxes, scores)`` (see
                :class:`facekp.faces.FaceDetector`); default: OpenCV's frontal-face Haar cascade,
                shipped with OpenCV and run offline (:class:`facekp.faces.HaarFaceDetector`).
            calibration: how boxes map to the network's frame (:class:`facekp.faces.BoxCalibration`
                or its dict); default: the model config's ``box_to_frame``, else the calibration
                fitted for the Haar detector (which also applies to ``boxes`` passed in).
            refine: re-frame each face on its first prediction and predict again this many times
                (default 1; see ``docs/detection.md``).
            max_faces: keep only this many of the largest faces (an int >= 0; None: all).

        Returns:
            A list of :class:`facekp.faces.Face` (``box``, ``points`` (15, 2), ``confidence``
            (15,), ``score``), in the image's pixel coordinates; empty when no face is found.
            All faces go through the network in one batch.
        """
        from .faces import detect_faces

        return detect_faces(self, image, boxes, face_detector=face_detector, calibration=calibration,
                            refine=refine, max_faces=max_faces)

    def predict_framed(
        self, grays: Sequence[np.ndarray], transforms: np.ndarray, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the network on ``grays[i]`` warped through ``transforms[i]`` (2x3, image -> crop).

        The lower-level entry used by :meth:`predict_batch` and face detection. ``grays`` are
        (H, W) float32 in [0, 1], ``transforms`` ``(N, 2, 3)``: one per image. Returns points
        ``(N, 15, 2)`` in each image's pixels and confidences ``(N, 15)``.
        """
        if len(grays) != len(transforms):
            raise ValueError(f"predict_framed got {len(grays)} images but {len(transforms)} transforms; expected one per image")
        batch_size = self._batch_size(batch_size)
        k = self.config.hourglass.num_keypoints
        if len(grays) == 0:
            return np.empty((0, k, 2), np.float32), np.empty((0, k), np.float32)
        size = self.config.hourglass.input_size
        crops = np.empty((len(grays), size, size), np.float32)
        for gray, m, crop in zip(grays, transforms, crops):
            warp(gray, m, size, out=crop)  # straight into the batch: no per-crop array, no stack copy
        points, confidence = self._run(crops, batch_size)
        return apply_affine(invert_affine(transforms), points), confidence

    @torch.inference_mode()
    def _run(self, crops: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) crops in [0, 1] -> points (N, K, 2) in crop pixels and confidences (N, K)."""
        cuda = self.device.type == "cuda"
        points, confidence = [], []
        for start in range(0, len(crops), batch_size):
            x = torch.from_numpy(standardize(crops[start : start + batch_size]))[:, None]
            if cuda and self._ort is None:
                # Pinned host memory lets the copy run asynchronously with the previous batch.
                x = x.pin_memory().to(self.device, non_blocking=True)
            if self._ort is not None and not self.flip_test:
                p, c = (torch.from_numpy(a) for a in self._ort.keypoints(x.numpy()))  # decoded in the graph
            else:
                with torch_threads_for(len(x), self.device):
                    heatmaps = self._forward(x)
                    if self.flip_test:
                        mirrored = self._forward(x.flip(-1)).flip(-1).index_select(1, self._flip_index.to(heatmaps.device))
                        heatmaps = 0.5 * (heatmaps + mirrored)
                    p, c = self.codec.decode(heatmaps)
            points.append(p)  # stays on the device until the end: no sync per batch
            confidence.append(c)
        points, confidence = torch.cat(points), torch.cat(confidence)
        return points.cpu().numpy(), confidence.cpu().numpy().astype(np.float32)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized ``(B, 1, S, S)`` crops -> float32 heatmaps of the last stack."""
        if self._ort is not None:
            return torch.from_numpy(self._ort(x.cpu().numpy()))
        x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self._heatmaps(x)
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision]):
            return self._heatmaps(x).float()

    def __repr__(self) -> str:
        h = self.config.hourglass
        return (
            f"Detector(stacks={h.num_stacks}, channels={h.channels}, heatmap={h.heatmap_size}x{h.heatmap_size}, "
            f"device={self.device}, flip_test={self.flip_test}, backend={self.backend}, precision={self.precision})"
        )
