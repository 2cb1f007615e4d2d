"""The user-facing :class:`Detector`: face crop in, 15 sub-pixel keypoints out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import validate
from .candidates import VOUCHED_CHECK, VOUCHED_MIN_PRESENCE, Candidates
from .calibration import CalibrationLike, reframe, resolve_calibration
from .codec import HeatmapCodec
from .errors import InvalidImageError, WeightsError
from .face_detection import as_detections, gray_u8, run_face_detector, usable_detections
from .face_check import FaceCheck, resolve_face_check
from .face_detectors import FaceDetectorLike, resolve_face_detector
from .geometry import apply_affine, face_angle, invert_affine
from .images import ImageInput, channels_first, check_color, load_gray, load_rgb, network_sized_stack
from .model import StackedHourglass
from .preprocess import frame_crops, letterbox_transforms
from .presence import DEFAULT_MIN_PRESENCE, EVEN_ODDS, PresenceModel
from .results import Face
from .runtime import bundled_graph, make_runner, resolve_device, run_crops
from .turns import retry_turned
from .weights import ResolvedWeights, resolve_weights, save_model

#: Re-framing passes :meth:`Detector.detect` runs by default (see ``docs/detection.md``).
DEFAULT_REFINE = 1
#: A face that a pass saw turned by more than this in its crop (degrees; the network was trained on
#: +/-25) gets one re-framing pass more than ``refine`` (:meth:`Detector.predict_refined`): its first
#: re-framing only turned it upright.
SETTLE_DEGREES = 25.0


def _check_batch_size(batch_size: int) -> int:
    """``batch_size`` as an int, or ``ValueError`` unless it is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


class DetectOptions(NamedTuple):
    """:meth:`Detector.detect`'s options, checked and with their defaults filled in
    (:meth:`Detector.detect_options`); ``detect(image, **options._asdict())`` uses them as they are.
    ``min_presence`` stays None for detect's default (:meth:`Detector.resolve_min_presence` gives its value),
    which lets the face check vouch for faces (:data:`facekp.candidates.VOUCHED_CHECK`); a threshold given is
    kept as given."""

    face_detector: Any
    refine: int
    max_faces: int | None
    min_presence: float | None


def _check_max_faces(max_faces: int | None) -> None:
    if max_faces is None:
        return
    if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 0:
        raise ValueError(f"max_faces must be None or an integer >= 0, got {max_faces!r}")


class Detector:
    """Finds facekp's 15 keypoints (see :data:`facekp.KEYPOINT_NAMES`) on face crops.

    Args:
        weights: ``None`` for the default model bundled with the package, a model name from
            ``weights_manifest.json``, a ``.safetensors`` file, a folder written by
            :meth:`save_pretrained`, or a loaded :class:`facekp.weights.ResolvedWeights`.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or a :class:`torch.device`.
        batch_size: crops per forward pass in :meth:`predict_batch` (a positive int).
        flip_test: also run each crop mirrored and average the heatmaps, left and right points
            swapped. Doubles the network's cost. It can help a model trained on mirror-consistent
            labels, but the bundled model's training labels are not (``docs/training-notes.md``):
            with it, flip test makes the validation RMSE about 0.2 px worse (``val_rmse_flip_test``
            vs ``val_rmse`` in ``weights_manifest.json``).
        backend: ``None`` (default: ``"onnx"`` when ``precision="int8"`` or ``onnx_model`` asks for
            an ONNX graph, or on the CPU in fp32 when the weights are a manifest model that bundles
            its fp32 graph, as the default model does; else ``"torch"``), ``"torch"``, ``"onnx"`` to
            run the network with onnxruntime (3-4x faster on CPU, see ``docs/benchmarks.md``; weights
            without a bundled graph are exported once, which needs the ``onnx`` extra, and cached in
            ``~/.cache/facekp/onnx``), or ``"auto"``: onnx on CPU when a graph is bundled or can be
            exported, else torch. All give the same points to within 1e-3 px.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast of the torch network; the
            heatmap decode always runs in fp32), ``"auto"``: fp16 on CUDA, fp32 on CPU, or
            ``"int8"``: the quantized ONNX graph bundled with the model, on CPU (needs
            onnxruntime; the fastest CPU path). See
            ``docs/benchmarks.md`` for the speed and accuracy of each.
        onnx_model: for the onnx backend, an ``.onnx`` file from ``facekp export-onnx`` (e.g. the
            int8 graph of ``--int8``) to run instead of exporting the weights; the weights still
            provide the config (and ``.model``). ``precision="auto"`` follows the graph; an
            explicit precision must match it.
        threads: intra-op CPU threads of the backend (None: its default; see :mod:`facekp.threads`).
        face_check: what asks of each face detector candidate in :meth:`detect` whether it holds a face,
            before the keypoint network runs (:mod:`facekp.face_check`): ``True`` the bundled check, ``False``
            none, a ``.safetensors`` file or a :class:`facekp.face_check.FaceCheck` (another threshold).
        compile: wrap the network in ``torch.compile`` (``True``, or a mode such as
            ``"max-autotune"``). Pays off for long runs on CUDA; the first call compiles.

    Coordinates everywhere are (x, y) in pixels of the image passed in, with the pixel-centre
    convention: the centre of the top-left pixel is (0, 0), its top-left corner (-0.5, -0.5).
    """

    def __init__(
        self,
        weights: str | Path | ResolvedWeights | None = None,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        flip_test: bool = False,
        backend: str | None = None,
        precision: str = "auto",
        compile: bool | str = False,
        onnx_model: str | Path | None = None,
        threads: int | None = None,
        face_check: bool | str | Path | FaceCheck = True,
    ) -> None:
        resolved = weights if isinstance(weights, ResolvedWeights) else resolve_weights(weights)
        self.batch_size = _check_batch_size(batch_size)
        self.device = resolve_device(device)
        if resolved.entry is not None and onnx_model is None:
            onnx_model = bundled_graph(resolved.entry, self.device, backend, precision, compile)
        self.config = resolved.config
        self.flip_test = flip_test
        #: the face-presence model of the config (:mod:`facekp.presence`), or None when it has none
        self.presence_model: PresenceModel | None = self.config.presence_model()
        self._model = resolved.model.eval()
        self.face_check: FaceCheck | None = resolve_face_check(face_check)  #: detect's candidates' check, or None
        #: what runs the network (:class:`facekp.runtime.TorchRunner` or :class:`~facekp.runtime.OnnxRunner`)
        self.runner = make_runner(self._model, self.config, self.device, backend=backend, precision=precision,
                                  compile=compile, onnx_model=onnx_model, threads=threads)

    @property
    def codec(self) -> HeatmapCodec:
        """The heatmap codec of the model (its decode turns the network's heatmaps into points)."""
        return self.runner.codec

    @property
    def backend(self) -> str:
        """``"torch"`` or ``"onnx"``: the backend that runs the network."""
        return self.runner.backend

    @property
    def precision(self) -> str:
        """``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``: the precision the network runs in."""
        return self.runner.precision

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str | Path,
        *,
        revision: str | None = None,
        device: str | torch.device = "auto",
        cache_dir: str | Path | None = None,
        **kwargs,
    ) -> "Detector":
        """Load ``config.json`` + ``model.safetensors`` from a Hugging Face Hub repository, or from a
        local folder of that layout (as huggingface_hub's mixins do).

        Downloads go through ``huggingface_hub`` (so ``HF_ENDPOINT``, ``HF_HOME``,
        ``HF_HUB_OFFLINE`` and the shared cache apply) and are verified by sha256.
        """
        return cls(resolve_weights(repo_id, hub=True, revision=revision, cache_dir=cache_dir), device=device, **kwargs)

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (the layout :meth:`from_pretrained` reads)."""
        save_model(self._model, self.config, folder, overwrite=overwrite)
        return Path(folder)

    @property
    def model(self) -> StackedHourglass:
        """The underlying network (unfused, in eval mode)."""
        return self._model

    # -- prediction ----------------------------------------------------------------------
    def predict(self, img: ImageInput, return_confidence: bool = False, return_presence: bool = False,
                color: str = "rgb"):
        """Keypoints of one face crop.

        The crop (any size, at least 8x8) is scaled uniformly so its longer side spans the
        network's 96 pixels and centred; the shorter side is padded by repeating the border
        (letterbox, no stretching). The transform is inverted on the output, so a crop scaled
        2.5x gives points scaled 2.5x. ``color``: the channel order of a colour array or tensor,
        ``"rgb"`` or ``"bgr"`` (OpenCV's, as ``cv2.imread`` returns); files and PIL images ignore it.

        Returns:
            ``(15, 2)`` float32 (x, y) in the input image's pixels; with ``return_confidence``
            also ``(15,)`` float32 confidences in [0, 1] (heatmap peak heights); with
            ``return_presence`` also the float probability in [0, 1] that the crop holds a face
            (:meth:`presence`), in that order.
        """
        points, confidence = self.predict_batch([img], return_confidence=True, color=color)
        out = (points[0],) + ((confidence[0],) if return_confidence else ())
        if return_presence:
            out += (float(self.presence(points, confidence)[0]),)
        return out if len(out) > 1 else out[0]

    def predict_batch(
        self, images: Sequence[ImageInput], batch_size: int | None = None, return_confidence: bool = False,
        return_presence: bool = False, color: str = "rgb",
    ):
        """Keypoints of many face crops, ``batch_size`` crops per forward pass.

        ``images`` is a sequence of anything :meth:`predict` accepts (sizes may differ), or one
        array / tensor stacking same-size images: ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
        (channels-first when C is 1, 3 or 4 and W is not, as for single tensors). ``batch_size``
        (a positive int) defaults to the detector's; ``color`` (``"rgb"`` or ``"bgr"``) is the
        channel order of colour arrays and tensors, as in :meth:`predict`.

        Returns:
            ``(N, 15, 2)`` float32 points, each in its own input image's pixel coordinates; with
            ``return_confidence`` also ``(N, 15)`` confidences, with ``return_presence`` also ``(N,)``
            float32 presence probabilities (:meth:`presence`), in that order.
        """
        batch_size = self._batch_size(batch_size)
        check_color(color)
        stack = network_sized_stack(images, self.config.hourglass.input_size)
        if stack is not None:
            # Already network-sized gray crops: the letterbox is the identity, so the per-image
            # load/warp loop is skipped (same points; much cheaper for big batches).
            points, confidence = self.predict_crops(stack, batch_size)
            return self._outputs(points, confidence, return_confidence, return_presence)
        if isinstance(images, np.ndarray) and images.ndim == 4 and channels_first(images.shape[1:]):
            images = images.transpose(0, 2, 3, 1)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim in (3, 4):
            images = list(images)  # one image per row
        if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
            raise InvalidImageError(f"predict_batch takes a sequence of images, got {type(images).__name__}")
        grays = [load_gray(img, color) for img in images]
        transforms = letterbox_transforms(grays, self.config.hourglass.input_size)
        points, confidence = self.predict_framed(grays, transforms, batch_size)
        return self._outputs(points, confidence, return_confidence, return_presence)

    def _outputs(self, points: np.ndarray, confidence: np.ndarray, return_confidence: bool, return_presence: bool):
        """``points``, then what was asked for: confidences, presence."""
        out = (points,) + ((confidence,) if return_confidence else ())
        if return_presence:
            out += (self.presence(points, confidence),)
        return out if len(out) > 1 else points

    def presence(self, points: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """``(N,)`` float32 probabilities in [0, 1] that the crops which gave ``points`` ``(N, 15, 2)`` (any
        pixel frame) and ``confidence`` ``(N, 15)`` hold a face; ``WeightsError`` when the model has
        no presence model."""
        if self.presence_model is None:
            raise WeightsError("these weights carry no presence model (their config.json has no 'presence' entry); "
                               "fit one with `facekp-train presence`, or use the bundled model")
        return self.presence_model.score(points, confidence)

    def _batch_size(self, batch_size: int | None) -> int:
        """A ``batch_size`` argument, checked; None: the detector's."""
        return self.batch_size if batch_size is None else _check_batch_size(batch_size)

    def detect(
        self,
        image: ImageInput,
        boxes=None,
        *,
        face_detector: FaceDetectorLike = None,
        calibration: CalibrationLike = None,
        refine: int | None = None,
        max_faces: int | None = None,
        min_presence: float | None = None,
        min_score: float | None = None,
        color: str = "rgb",
    ) -> list[Face]:
        """Find the faces of a whole photo and their keypoints, largest face first.

        A face detector's candidates that the :attr:`face_check` scores under its threshold are dropped before
        the keypoint network runs (boxes passed in are not checked); see ``docs/detection.md``.

        Args:
            image: anything :meth:`predict` accepts.
            boxes: face boxes to use instead of running a face detector: ``(N, 4)``
                ``x0, y0, x1, y1`` in image pixels, or ``(N, 5)`` with a score column. A box the
                image cannot frame (wholly outside it, under 1 pixel or over 10 image sides) raises
                ``ValueError``; such boxes from a face detector are dropped (``docs/robustness.md``).
            face_detector: ``"facekp"`` (facekp's learned face finder: any in-plane rotation) or
                ``"haar"`` (OpenCV's frontal-face cascade: upright faces), see
                :mod:`facekp.face_detectors`; or a callable ``rgb_image -> boxes``, ``-> (boxes, scores)``
                or ``-> (boxes, scores, angles)`` (:class:`facekp.face_detection.FaceDetector`).
                None: :data:`facekp.face_detectors.DEFAULT_FACE_DETECTOR`.
            min_score: the ``"facekp"`` finder's face-probability threshold, in (0, 1) (None: its
                weights' own, and the weak faces scored from :data:`facekp.finder.WEAK_SCORE` up to it
                are kept when their presence reaches :data:`facekp.candidates.WEAK_MIN_PRESENCE`; a
                threshold given here has no weak faces under it); refused with other face detectors.
            calibration: how boxes map to the network's frame (:class:`facekp.calibration.BoxCalibration`
                or its dict); default: the model config's ``box_to_frame``, else the calibration
                fitted for the Haar detector (which also applies to ``boxes`` passed in).
            refine: re-frame each face on its first prediction and predict again this many times
                (default 1; see ``docs/detection.md``).
            max_faces: keep only this many of the largest faces (an int >= 0; None: all).
            color: the channel order of a colour array or tensor, ``"rgb"`` or ``"bgr"``
                (OpenCV's); files and PIL images ignore it.
            min_presence: drop the faces whose presence (:meth:`presence`) is below this (in [0, 1];
                0 keeps all but weak faces, which always need :data:`facekp.candidates.WEAK_MIN_PRESENCE`).
                None: :data:`facekp.presence.DEFAULT_MIN_PRESENCE` (0.9) when the model has a presence
                model, else no filtering, and a face the face check scores from
                :data:`facekp.candidates.VOUCHED_CHECK` needs only :data:`facekp.candidates.VOUCHED_MIN_PRESENCE`;
                a number with a model without one raises ``WeightsError``. See ``docs/detection.md`` for what
                it keeps and drops (:mod:`facekp.candidates` holds the bars).

        Returns:
            A list of :class:`facekp.Face` (``box``, ``points`` (15, 2), ``confidence``
            (15,), ``score``, ``angle``, ``presence``), in the image's pixel coordinates; empty when
            no face is found. All faces go through the network in one batch.
        """
        given = boxes is not None  # the caller's boxes: trusted, not checked
        if not given:
            fd, refine, max_faces, min_presence = self.detect_options(face_detector, refine, max_faces, min_presence,
                                                                      min_score)
        else:  # the boxes are framed with the given face detector's calibration, or Haar's
            if min_score is not None:
                raise ValueError("min_score thresholds a face detector's faces; it has no use with boxes given")
            refine, max_faces, min_presence = self._checked_options(refine, max_faces, min_presence)
            fd = None if face_detector is None else resolve_face_detector(face_detector)
        vouching = min_presence is None  # a threshold given is the caller's bar for every face
        min_presence = self.resolve_min_presence(min_presence)
        gray = load_gray(image, color)
        if max_faces == 0:
            return []
        weak_floor = None
        if not given:
            source = gray_u8(image, gray) if getattr(fd, "wants_gray", False) else load_rgb(image, color)
            # Weak faces need a presence model to vouch for them.
            weak_floor = getattr(fd, "weak_score", None) if self.presence_model is not None else None
            find = fd if weak_floor is None else (lambda photo: fd(photo, min_score=weak_floor))
            boxes, scores, angles = usable_detections(run_face_detector(find, source), gray.shape, drop=True)
        else:
            boxes, scores, angles = usable_detections(as_detections(boxes), gray.shape, drop=False)
        if len(boxes) == 0:
            return []
        weak = scores < fd.min_score if weak_floor is not None else np.zeros(len(boxes), bool)
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        if max_faces is not None and min_presence == 0 and not weak.any():  # else the largest faces are kept
            order = order[:max_faces]                                       # once the false ones are dropped
        boxes, scores, angles, weak = boxes[order], scores[order], angles[order], weak[order]
        calib = resolve_calibration(self, fd, calibration)
        transforms = validate.transforms(np.stack([calib.frame(b, a) for b, a in zip(boxes, angles)]))
        crops = frame_crops([gray] * len(transforms), transforms, self.config.hourglass.input_size)
        cands = Candidates.framed(boxes, scores, angles, transforms, crops, weak)
        if self.face_check is not None and not given:  # candidates the face check says hold no face go no further
            cands = cands.checked(self.face_check, vouching)
        if len(cands.boxes) == 0:
            return []
        first = self.points_of_crops(cands.crops, cands.transforms)  # every face's first pass, one batch
        if cands.weak.any():  # most weak faces are false: only the likely faces go on
            keep = cands.screen(self.presence(*first))
            cands, first = cands.take(keep), tuple(v[keep] for v in first)
            if len(cands.boxes) == 0:
                return []
        points, confidence = self.predict_refined(gray, cands.transforms, refine, first)
        presence, bar = [None] * len(points), cands.presence_bars(min_presence)
        if self.presence_model is not None:
            presence = self.presence(points, confidence)
            points, confidence, presence = retry_turned(self, gray, cands.transforms, refine, min_presence,
                                                        points, confidence, presence, cands.turnable)
        # After a refine pass, the face's own measure: finer than a face detector's guess (0 for Haar's upright search).
        angles = np.array([face_angle(p) for p in points]) if refine else cands.angles
        faces = [Face(tuple(float(v) for v in b), p, c, float(s), float(a), None if q is None else float(q))
                 for b, p, c, s, a, q, least in zip(cands.boxes, points, confidence, cands.scores, angles, presence, bar)
                 if q is None or q >= least]
        return faces[:max_faces]

    def detect_options(self, face_detector: FaceDetectorLike = None, refine: int | None = None,
                       max_faces: int | None = None, min_presence: float | None = None,
                       min_score: float | None = None) -> DetectOptions:
        """:meth:`detect`'s options checked, with their defaults filled in and the face detector
        built (``min_score`` folded into it): callers that run ``detect`` on many photos do this
        once, up front, and pass ``**options._asdict()``."""
        return DetectOptions(resolve_face_detector(face_detector, min_score),
                             *self._checked_options(refine, max_faces, min_presence))

    def _checked_options(self, refine: int | None, max_faces: int | None,
                         min_presence: float | None) -> tuple[int, int | None, float | None]:
        _check_max_faces(max_faces)
        refine = DEFAULT_REFINE if refine is None else validate.integer("refine", refine, 0, 100)
        self.resolve_min_presence(min_presence)  # checked now; None stays None (detect's default)
        return refine, max_faces, None if min_presence is None else float(min_presence)

    def kept_by_presence(self, crops: np.ndarray, presence: np.ndarray, min_presence: float | None) -> np.ndarray:
        """``(N,)`` bool: which faces framed into ``crops`` (``(N, S, S)``) with ``presence`` (N,) :meth:`detect`'s
        bar keeps: ``min_presence`` resolved, or under the default (None)
        :data:`facekp.candidates.VOUCHED_MIN_PRESENCE` for a face the face check vouches for (it scores only the
        faces under the default bar)."""
        keep = presence >= self.resolve_min_presence(min_presence)
        doubted = np.flatnonzero(~keep & (presence >= VOUCHED_MIN_PRESENCE))
        if self.face_check is not None and min_presence is None and len(doubted):
            keep[doubted] = self.face_check(crops[doubted]) >= VOUCHED_CHECK
        return keep

    def resolve_min_presence(self, min_presence: float | None) -> float:
        """``detect``'s threshold: checked, or its default for this model (0 without a presence model)."""
        if min_presence is None:
            return 0.0 if self.presence_model is None else DEFAULT_MIN_PRESENCE
        if isinstance(min_presence, bool) or not isinstance(min_presence, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(min_presence) <= 1.0:
            raise ValueError(f"min_presence must be a number in [0, 1] or None, got {min_presence!r}")
        if self.presence_model is None and min_presence > 0:
            raise WeightsError(f"min_presence={min_presence} was asked for, but these weights carry no presence model "
                               "(their config.json has no 'presence' entry); fit one with `facekp-train presence`")
        return float(min_presence)

    def predict_refined(self, gray: np.ndarray, transforms: np.ndarray, refine: int = 0,
                        first: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Points and confidences of the faces framed by ``transforms`` in one photo, one batch per pass.

        ``gray``: the (H, W) float32 photo in [0, 1]; ``transforms`` ``(N, 2, 3)``, image -> crop;
        ``first``: the first pass's points and confidences, when :meth:`predict_framed` gave them already.
        Each of the ``refine`` passes re-frames every face on its previous prediction (centroid,
        size and in-plane angle: :func:`facekp.calibration.reframe`) and predicts again. A face that a
        pass saw turned by more than :data:`SETTLE_DEGREES` in its crop, and that presence then calls
        more likely a face than not (:data:`facekp.presence.EVEN_ODDS`), is re-framed once more.
        """
        if refine < 0:
            raise ValueError(f"refine must be >= 0, got {refine}")
        transforms = np.array(transforms, dtype=np.float64)
        first = first or self.predict_framed([gray] * len(transforms), transforms)
        points, confidence = first[0].copy(), first[1].copy()
        turned = np.zeros(len(transforms), bool)  # a pass saw the face turned past the network's training range
        for _ in range(refine):
            turned |= [abs(face_angle(apply_affine(m, p))) > SETTLE_DEGREES for p, m in zip(points, transforms)]
            transforms = np.stack([reframe(p, m) for p, m in zip(points, transforms)])
            points, confidence = self.predict_framed([gray] * len(transforms), transforms)
        # Such a face's first re-framing only turned it upright: one more, for the faces presence says are
        # faces (false ones, whose scattered points give any angle, would only cost time; without a
        # presence model there is no telling, and no extra pass).
        if turned.any() and self.presence_model is not None:
            turned &= self.presence(points, confidence) >= EVEN_ODDS
            if turned.any():
                again = np.stack([reframe(p, m) for p, m in zip(points[turned], transforms[turned])])
                points[turned], confidence[turned] = self.predict_framed([gray] * len(again), again)
        return points, confidence

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
        transforms = validate.transforms(transforms)
        return self.points_of_crops(frame_crops(grays, transforms, self.config.hourglass.input_size), transforms, batch_size)

    def points_of_crops(self, crops: np.ndarray, transforms: np.ndarray,
                        batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(N, 15, 2)`` in image pixels and confidences ``(N, 15)`` of ``(N, S, S)`` crops cut through
        ``transforms`` ``(N, 2, 3)`` (image -> crop; :func:`facekp.preprocess.frame_crops`)."""
        points, confidence = self.predict_crops(crops, batch_size)
        points = apply_affine(invert_affine(transforms), points)
        validate.finite_points(points, confidence)
        return points, confidence

    def predict_crops(self, crops: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Network-sized ``(N, S, S)`` float32 crops in [0, 1] -> points ``(N, K, 2)`` in crop pixels
        and confidences ``(N, K)``, ``batch_size`` crops per call of the runner."""
        if len(crops) == 0:
            k = self.config.hourglass.num_keypoints
            return np.empty((0, k, 2), np.float32), np.empty((0, k), np.float32)
        return run_crops(self.runner, crops, self._batch_size(batch_size), self.flip_test, self.config.normalization)

    def __repr__(self) -> str:
        h = self.config.hourglass
        return (
            f"Detector(stacks={h.num_stacks}, channels={h.channels}, heatmap={h.heatmap_size}x{h.heatmap_size}, "
            f"device={self.device}, flip_test={self.flip_test}, backend={self.backend}, precision={self.precision})"
        )
