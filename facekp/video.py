"""Keypoints in video: read frames with OpenCV, track faces across frames, smooth their points.

>>> from facekp import Detector
>>> from facekp.video import track_video
>>> for frame in track_video("clip.mp4", Detector()):          # or a camera index: track_video(0, ...)
...     for face in frame.faces:                                # facekp.video.TrackedFace
...         print(frame.index, face.track_id, face.points[0])   # smoothed (15, 2) points

Each track's points go through a One-Euro filter (Casiez, Roussel and Vogel, CHI 2012): a
low-pass filter whose cutoff rises with the speed of the signal, so a still face stops
jittering while a moving one is followed with little lag. Faces are associated across frames
by the overlap (IoU) of their boxes. The face detector runs every ``detect_every`` frames (and
whenever no face is tracked); in between, each face is re-framed on its previous keypoints,
which is much faster than detecting and also follows faces the detector misses for a while.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import fileio, validate
from .calibration import BoxCalibration, reframe, resolve_calibration
from .errors import FacekpError
from .face_detection import box_iou
from .face_detectors import FaceDetectorLike
from .geometry import box_side_centre, face_angle
from .images import load_gray
from .preprocess import frame_crops
from .results import Face

if TYPE_CHECKING:  # pragma: no cover
    from .detector import Detector


# -- smoothing ------------------------------------------------------------------------------
class OneEuroFilter:
    """The One-Euro filter, element-wise on arrays of any fixed shape.

    Args:
        min_cutoff: cutoff frequency (Hz) when the signal is still: lower = less jitter.
        beta: how fast the cutoff rises with speed (Hz per unit/s of the signal): higher =
            less lag when the signal moves.
        d_cutoff: cutoff frequency (Hz) of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff and d_cutoff must be > 0 and beta >= 0")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x, t: float) -> np.ndarray:
        """Filter the value ``x`` observed at time ``t`` (seconds, increasing)."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter got shape {x.shape} after {self._x.shape}; reset() it first")
        dt = max(float(t) - self._t, 1e-3)  # a repeated timestamp counts as a very short step
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


# -- tracking -------------------------------------------------------------------------------
@dataclass
class TrackedFace(Face):
    """A :class:`~facekp.Face` with its track: ``points`` and ``box`` are smoothed;
    ``raw_points`` are the network's unsmoothed points of this frame."""

    track_id: int = -1
    raw_points: np.ndarray | None = None
    age: int = 0  # frames since the track started

    def to_dict(self) -> dict:
        return {"track_id": self.track_id, **super().to_dict()}


@dataclass
class _Track:
    id: int
    face: Face
    points_filter: OneEuroFilter
    box_filter: OneEuroFilter
    age: int = 0
    missed: int = 0
    smoothed: TrackedFace | None = field(default=None, repr=False)


class FaceTracker:
    """Associates faces across frames (greedy, by box IoU) and smooths each track.

    Args:
        iou_threshold: least IoU for a face to continue a track.
        max_missed: frames a track survives without a face before it is dropped.
        min_cutoff, beta, d_cutoff: the One-Euro filter's settings; ``beta`` is per face size,
            (Hz per box side per second), so the smoothing behaves the same for near and far faces.
        smooth: False to only associate (points pass through unchanged).
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_missed: int = 5,
        min_cutoff: float = 1.0,
        beta: float = 5.0,
        d_cutoff: float = 1.0,
        smooth: bool = True,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.smooth = smooth
        self.tracks: list[_Track] = []
        self._next_id = 0

    def reset(self) -> None:
        self.tracks, self._next_id = [], 0

    def update(self, faces: list[Face], t: float) -> list[TrackedFace]:
        """Feed the faces of the frame at time ``t`` (seconds); returns them tracked and smoothed."""
        matched = self._associate(faces)
        out = []
        seen = set()
        for face_idx, face in enumerate(faces):
            track = matched.get(face_idx)
            if track is None:
                track = _Track(self._next_id, face, OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff),
                               OneEuroFilter(self.min_cutoff, self.beta, self.d_cutoff))
                self._next_id += 1
                self.tracks.append(track)
            else:
                track.age += 1
            track.face, track.missed = face, 0
            seen.add(track.id)
            track.smoothed = self._smoothed(track, face, t)
            out.append(track.smoothed)
        for track in self.tracks:
            if track.id not in seen:
                track.missed += 1
        self.tracks = [tr for tr in self.tracks if tr.missed <= self.max_missed]
        return out

    def _associate(self, faces: list[Face]) -> dict[int, _Track]:
        if not faces or not self.tracks:
            return {}
        iou = box_iou(np.array([tr.face.box for tr in self.tracks]), np.array([f.box for f in faces]))
        pairs = sorted(((iou[i, j], i, j) for i in range(iou.shape[0]) for j in range(iou.shape[1])
                        if iou[i, j] >= self.iou_threshold), reverse=True)
        used_t, out = set(), {}
        for _, i, j in pairs:
            if i not in used_t and j not in out:
                used_t.add(i)
                out[j] = self.tracks[i]
        return out

    def _smoothed(self, track: _Track, face: Face, t: float) -> TrackedFace:
        points, box = np.asarray(face.points, np.float64), np.asarray(face.box, np.float64)
        if self.smooth:
            side = max(1.0, float(box_side_centre(box)[0]))
            track.points_filter.beta = track.box_filter.beta = self.beta / side
            points = track.points_filter(points, t)
            box = track.box_filter(box, t)
        return TrackedFace(tuple(float(v) for v in box), points.astype(np.float32), face.confidence, face.score,
                           face.angle, track_id=track.id, raw_points=np.asarray(face.points, np.float32), age=track.age)


class VideoTracker:
    """Faces, track ids and smoothed keypoints of a stream of frames.

    Args:
        detector: the keypoint :class:`~facekp.Detector`.
        detect_every: run the face detector on every N-th frame (1: every frame); in between,
            faces are followed by re-framing them on their previous keypoints.
        min_confidence: a face followed that way whose mean keypoint confidence falls below
            this is considered lost. With the bundled model, the 616 validation faces score at least
            0.55 (median 0.84), blank, flat or noise frames 0.13 to 0.42.
        min_presence: with a model that has a presence model (:mod:`facekp.presence`), a face followed
            that way whose presence falls below this is lost too; a lost face makes the next frame run
            the face detector. Also ``detect``'s threshold on detection frames. None: ``detect``'s default,
            under which a face the face check vouches for needs only its lower bar
            (:meth:`facekp.Detector.kept_by_presence`), between detections as on them.
        face_detector, min_score, calibration, refine: as in :meth:`Detector.detect`.
        **tracker: settings of :class:`FaceTracker`.
    """

    def __init__(
        self,
        detector: "Detector",
        detect_every: int = 5,
        min_confidence: float = 0.5,
        min_presence: float | None = None,
        face_detector: FaceDetectorLike = None,
        calibration=None,
        refine: int | None = None,
        min_score: float | None = None,
        **tracker,
    ) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.detector = detector
        self.detect_every = detect_every
        self.min_confidence = min_confidence
        self.face_detector, self.refine, _, self.min_presence = detector.detect_options(
            face_detector, refine, None, min_presence, min_score)
        self.calibration: BoxCalibration = resolve_calibration(detector, self.face_detector, calibration)
        self.tracker = FaceTracker(**tracker)
        self._frame = 0
        self._lost = False  # a followed face was lost: detect on the next frame

    def update(self, frame, t: float | None = None) -> list[TrackedFace]:
        """Faces of the next frame (anything :meth:`Detector.detect` takes); ``t`` in seconds
        (default: the frame number / 30)."""
        t = self._frame / 30.0 if t is None else t
        live = [tr for tr in self.tracker.tracks if tr.missed == 0]
        if self._frame % self.detect_every == 0 or not live or self._lost:
            faces = self.detector.detect(frame, face_detector=self.face_detector, calibration=self.calibration,
                                         refine=self.refine, min_presence=self.min_presence)
            self._lost = False
        else:
            gray = load_gray(frame)
            transforms = validate.transforms(np.stack([
                reframe(tr.face.points, self.calibration.frame(tr.face.box, tr.face.angle))
                for tr in live
            ]))
            crops = frame_crops([gray] * len(live), transforms, self.detector.config.hourglass.input_size)
            points, confidence = self.detector.points_of_crops(crops, transforms)
            keep = confidence.mean(axis=1) >= self.min_confidence
            if self.detector.presence_model is None:
                presence = [None] * len(live)
            else:  # the bar detect would set, the face check's vouching included
                presence = self.detector.presence(points, confidence)
                keep &= self.detector.kept_by_presence(crops, presence, self.min_presence)
            faces = [Face(self.calibration.box_from_points(p), p, c, tr.face.score, face_angle(p),
                          None if q is None else float(q))
                     for p, c, tr, q, k in zip(points, confidence, live, presence, keep) if k]
            self._lost = len(faces) < len(live)
        self._frame += 1
        return self.tracker.update(faces, t)


# -- video files and cameras ----------------------------------------------------------------
@dataclass
class VideoFrame:
    """One frame: its ``index``, time ``t`` (seconds), ``image`` (H, W, 3) uint8 RGB, ``faces``."""

    index: int
    t: float
    image: np.ndarray
    faces: list[TrackedFace] = field(default_factory=list)


def open_video(source: int | str | os.PathLike) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` of a camera index (``0``, or ``"0"``) or a video file, checked to be open."""
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        source = validate.integer("camera index", source, 0, 9999)  # OpenCV crashes on negative ones
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"video file not found: {path}")
        if not path.is_file():  # a FIFO or a folder would block or confuse OpenCV
            raise FacekpError(f"{path} is not a regular file; expected a video file")
        source = str(path)
    else:
        raise TypeError(f"a video source is a camera index (int) or a video file path, got {type(source).__name__}")
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = f"camera {source}" if isinstance(source, int) else f"video {source}"
        raise FacekpError(f"OpenCV cannot open {what}")
    return cap


def read_frames(source: int | str | os.PathLike, max_frames: int | None = None) -> Iterator[VideoFrame]:
    """Frames of a video file or camera as :class:`VideoFrame` (RGB), with their timestamps."""
    cap = open_video(source)
    live = isinstance(source, int) or (isinstance(source, str) and source.isdigit())
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not (0 < fps < 1000):
        fps = 30.0
    start = time.perf_counter()
    try:
        index = 0
        while max_frames is None or index < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            t = time.perf_counter() - start if live else index / fps
            yield VideoFrame(index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        cap.release()


def video_fps(source: int | str | os.PathLike, default: float = 30.0) -> float:
    cap = open_video(source)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    finally:
        cap.release()
    return fps if 0 < fps < 1000 else default


def track_video(
    source: int | str | os.PathLike,
    detector: "Detector",
    max_frames: int | None = None,
    **settings,
) -> Iterator[VideoFrame]:
    """Frames of a video file or camera with their tracked, smoothed faces (see :class:`VideoTracker`)."""
    tracker = VideoTracker(detector, **settings)
    for frame in read_frames(source, max_frames):
        frame.faces = tracker.update(frame.image, frame.t)
        yield frame


class VideoWriter:
    """Write RGB frames to a video file; the codec follows the extension (.mp4: mp4v, .avi: MJPG).

    Frames are (H, W, 3) uint8 RGB arrays (what :func:`read_frames` and :func:`facekp.draw`
    give; :func:`facekp.images.load_rgb` converts other images), all of the first frame's size.
    """

    CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mov": "mp4v", ".mkv": "MJPG"}

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, overwrite: bool = False) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in self.CODECS:
            raise ValueError(f"unsupported video extension {self.path.suffix!r}; use one of {sorted(self.CODECS)}")
        fileio.check_output(self.path, overwrite=overwrite)
        self.fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._closed = False
        self._size: tuple[int, int] | None = None  # (H, W) of the first frame
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame; ValueError if it is not one, or not the first frame's size."""
        if self._closed:
            raise ValueError(f"{self.path} is closed; a new VideoWriter would replace the file")
        rgb = np.asarray(rgb)
        self._check_frame(rgb)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = rgb.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*self.CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise FacekpError(f"OpenCV cannot write {self.path} (codec {self.CODECS[self.path.suffix.lower()]})")
            self._size = (h, w)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def _check_frame(self, rgb: np.ndarray) -> None:
        # OpenCV crashes on other dtypes and silently drops frames of another size.
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"video frames must be (H, W, 3) uint8 RGB arrays; frame {self.frames} has shape "
                             f"{rgb.shape} and dtype {rgb.dtype} (facekp.images.load_rgb converts other images)")
        if self._size is not None and rgb.shape[:2] != self._size:
            (h, w), (h0, w0) = rgb.shape[:2], self._size
            raise ValueError(f"frame {self.frames} is {w}x{h} pixels but the video is {w0}x{h0} (its first frame's size)")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._closed = True

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def has_display() -> bool:
    """Whether an OpenCV window can be shown here (a GUI build of OpenCV and a display)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        build = cv2.getBuildInformation()
    except Exception:  # pragma: no cover
        return False
    gui = [line for line in build.splitlines() if line.strip().startswith("GUI")]
    return bool(gui) and "NONE" not in gui[0].upper()
