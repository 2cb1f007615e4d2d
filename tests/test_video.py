"""Video: the One-Euro filter, face tracking across frames, and reading/writing video files.

The face detector is pinned to Haar: the synthetic clip's small portrait tests the tracking, not the finding
(docs/detection.md has the finder's figures)."""

from __future__ import annotations

import numpy as np
import pytest

from facekp import Detector, Face
from facekp.data import sample_photo
from facekp.errors import FacekpError
from facekp.video import (
    FaceTracker,
    OneEuroFilter,
    VideoTracker,
    VideoWriter,
    box_iou,
    read_frames,
    track_video,
    video_fps,
)

FPS = 30.0


def _face(points, side=200.0, score=1.0) -> Face:
    c = np.asarray(points).mean(axis=0)
    box = (c[0] - side / 2, c[1] - side / 2, c[0] + side / 2, c[1] + side / 2)
    return Face(box, np.asarray(points, np.float32), np.ones(15, np.float32), score)


def _base(x=300.0, y=300.0) -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.array([x, y]) + rng.uniform(-60, 60, (15, 2))


# -- the filter -----------------------------------------------------------------------------
def test_one_euro_filter_basics():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    x = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(f(x, 0.0), x)  # the first value passes through
    for i in range(1, 20):
        np.testing.assert_allclose(f(x, i / FPS), x)  # a constant stays constant
    assert np.isfinite(f(x, 19 / FPS)).all()  # a repeated timestamp does not divide by zero
    with pytest.raises(ValueError):
        f(np.zeros(3), 1.0)
    f.reset()
    np.testing.assert_array_equal(f(np.zeros(3), 2.0), np.zeros(3))
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0.0)


def test_one_euro_filter_reduces_noise_more_when_still():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1.0, 300)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    out = np.array([f(v, i / FPS) for i, v in enumerate(noise)])
    assert out[30:].std() < 0.35 * noise[30:].std()


def test_tracker_smooths_jitter_without_lagging_real_motion():
    """A face shakes (1.5 px noise) while still, moves at 120 px/s for 40 frames, then stops."""

    def x_shift(i):
        return 0.0 if i < 40 else 4.0 * (i - 40) if i < 80 else 160.0

    n = 120
    base = _base()
    truth = np.array([base + [x_shift(i), 0.0] for i in range(n)])
    rng = np.random.default_rng(1)
    tracker = FaceTracker()
    smoothed, raw = [], []
    for i in range(n):
        (face,) = tracker.update([_face(truth[i] + rng.normal(0, 1.5, truth[i].shape))], i / FPS)
        smoothed.append(face.points)
        raw.append(face.raw_points)
        assert face.track_id == 0
    smoothed, raw = np.array(smoothed, np.float64), np.array(raw, np.float64)

    still = list(range(10, 40)) + list(range(95, 120))
    jitter_raw = np.sqrt(((raw[still] - truth[still]) ** 2).mean())
    jitter_smooth = np.sqrt(((smoothed[still] - truth[still]) ** 2).mean())
    assert jitter_smooth < 0.5 * jitter_raw

    # Lag during the motion: the delay (in frames) that best explains the smoothed x track.
    moving = np.arange(50, 80)
    x_smooth = smoothed[moving, :, 0].mean(axis=1) - base[:, 0].mean()
    delays = np.linspace(0, 5, 101)
    errors = [np.mean((x_smooth - np.interp(moving - d, np.arange(n), [x_shift(i) for i in range(n)])) ** 2)
              for d in delays]
    lag = delays[int(np.argmin(errors))]
    assert lag <= 1.5
    # ...and it settles within a few frames of the stop.
    settled = np.abs(smoothed[86:, :, 0].mean(axis=1) - truth[86:, :, 0].mean(axis=1))
    assert settled.max() < 1.0


def test_tracker_keeps_identities():
    tracker = FaceTracker(max_missed=2)
    a, b = _base(200, 200), _base(600, 220)
    first = tracker.update([_face(a), _face(b)], 0.0)
    ids = {round(f.box[0]): f.track_id for f in first}
    # Listed the other way round and moved a little: each keeps its track.
    second = tracker.update([_face(b + 5), _face(a + 5)], 1 / FPS)
    assert [f.track_id for f in second] == [ids[round(first[1].box[0])], ids[round(first[0].box[0])]]
    # b disappears for two frames and comes back: same track; a third face gets a new one.
    tracker.update([_face(a + 6)], 2 / FPS)
    tracker.update([_face(a + 7)], 3 / FPS)
    third = tracker.update([_face(a + 8), _face(b + 6), _face(_base(400, 600))], 4 / FPS)
    assert [f.track_id for f in third] == [second[1].track_id, second[0].track_id, 2]
    # Gone for longer than max_missed: the track ends, a returning face starts a new one.
    for k in range(3):
        tracker.update([_face(a + 8)], (5 + k) / FPS)
    (_, again) = tracker.update([_face(a + 8), _face(b + 6)], 9 / FPS)
    assert again.track_id == 3
    assert again.to_dict()["track_id"] == 3


def test_box_iou():
    a = np.array([[0, 0, 10, 10], [0, 0, 5, 5]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0], [0, 0]])
    np.testing.assert_allclose(box_iou(a, a).diagonal(), [1, 1])
    assert box_iou(np.empty((0, 4)), b).shape == (0, 2)


# -- video files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """An 8-frame 200x150 clip of the sample portrait (face about 50 px) drifting right."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    photo = cv2.resize(sample_photo(), (102, 120), interpolation=cv2.INTER_AREA)
    with VideoWriter(path, fps=10) as out:
        for i in range(8):
            frame = np.full((150, 200, 3), 110, np.uint8)
            frame[15:135, 20 + 4 * i : 122 + 4 * i] = photo
            out.write(frame)
        assert out.frames == 8
    return path


def test_video_round_trip(clip, tmp_path):
    frames = list(read_frames(clip))
    assert len(frames) == 8 and frames[0].image.shape == (150, 200, 3) and frames[0].image.dtype == np.uint8
    assert [f.index for f in frames] == list(range(8))
    np.testing.assert_allclose([f.t for f in frames], np.arange(8) / 10, atol=1e-6)
    assert video_fps(clip) == pytest.approx(10, abs=0.01)
    assert len(list(read_frames(clip, max_frames=3))) == 3
    with pytest.raises(FileExistsError):
        VideoWriter(clip)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "clip.gif")
    with pytest.raises(FileNotFoundError):
        list(read_frames(tmp_path / "missing.mp4"))
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video")
    with pytest.raises(FacekpError):
        list(read_frames(bogus))


def test_video_writer_rejects_frames_it_cannot_write(tmp_path):
    path = tmp_path / "out.avi"
    with VideoWriter(path, fps=10) as out:
        out.write(np.full((48, 64, 3), 100, np.uint8))
        with pytest.raises(ValueError, match=r"frame 1 is 32x48 pixels but the video is 64x48"):
            out.write(np.full((48, 32, 3), 100, np.uint8))
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB.*dtype float64"):
            out.write(np.full((48, 64, 3), 0.5))
        with pytest.raises(ValueError, match=r"shape \(48, 64\)"):
            out.write(np.full((48, 64), 100, np.uint8))
        out.write(np.full((48, 64, 3), 200, np.uint8))
        assert out.frames == 2
    with pytest.raises(ValueError, match="is closed"):  # writing again would silently start the file over
        out.write(np.full((48, 64, 3), 100, np.uint8))
    assert len(list(read_frames(path))) == 2


def test_track_video(clip, detector):
    frames = list(track_video(clip, detector, detect_every=1, face_detector="haar"))
    assert len(frames) == 8
    ids = {f.track_id for frame in frames for f in frame.faces}
    assert all(len(frame.faces) == 1 for frame in frames) and ids == {0}
    x = [frame.faces[0].box[0] for frame in frames]
    assert x[-1] - x[0] > 15  # the face moved right by 28 px; its box follows


@pytest.fixture(scope="module")
def bundled() -> Detector:
    """The trained model shipped in the package: its points land on real features."""
    return Detector(device="cpu")


def _rms(points) -> float:
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def test_video_tracker_follows_faces_between_detections(clip, bundled):
    """The portrait drifts 4 px right per frame; the detector runs on frames 0 and 4 only."""
    frames = list(track_video(clip, bundled, detect_every=4, smooth=False, face_detector="haar"))
    assert len(frames) == 8 and all(len(frame.faces) == 1 for frame in frames)
    assert {frame.faces[0].track_id for frame in frames} == {0}
    first = frames[0].faces[0].points
    # The model's repeatability: two framings of one face agree to about 1 px of its 96 px frame
    # on average, 2.5 px at most (tests/test_shipped_model.py); 1 frame px = RMS radius / 26 image px
    # (12 px / 26, about 0.5 image px, here). Reusing the last frame's points would be 4 px off.
    frame_px = _rms(first) / 26.0
    for frame in frames:
        face = frame.faces[0]
        np.testing.assert_array_equal(face.points, face.raw_points)  # smooth=False
        error = np.linalg.norm(face.points - (first + [4.0 * frame.index, 0.0]), axis=1)
        assert error.mean() < frame_px and error.max() < 2.5 * frame_px, (frame.index, error)
        detected = bundled.detect(frame.image, face_detector="haar")[0]
        if frame.index % 4 == 0:  # a detection frame: the face detector's box, detect()'s points
            assert face.box == detected.box
            np.testing.assert_allclose(face.points, detected.points, atol=1e-4)
        else:  # followed on the previous points: the box comes from the points, not the face detector
            assert face.box != detected.box
    # The tracked boxes move with the face, 4 px a frame, and keep their size.
    tracked = [frame.faces[0].box for frame in frames if frame.index % 4]
    centres = np.array([(b[0] + b[2]) / 2 for b in tracked])
    np.testing.assert_allclose(centres - centres[0], 4.0 * (np.array([1, 2, 3, 5, 6, 7]) - 1), atol=2 * frame_px)
    sides = np.array([b[2] - b[0] for b in tracked])
    assert np.ptp(sides) < 0.05 * sides.mean()
    with pytest.raises(ValueError):
        VideoTracker(bundled, detect_every=0, face_detector="haar")


def test_video_tracker_keeps_a_face_the_check_vouches_for_between_detections(clip, bundled, monkeypatch):
    import facekp.detector as detector_module

    # A default bar no presence reaches: only the face check's vouching keeps the face, on detection
    # frames and, with the same rule, on the frames in between.
    monkeypatch.setattr(detector_module, "DEFAULT_MIN_PRESENCE", 0.9999)
    frames = list(track_video(clip, bundled, detect_every=4, smooth=False, face_detector="haar"))
    assert all(len(frame.faces) == 1 for frame in frames) and {f.faces[0].track_id for f in frames} == {0}
    unchecked = Detector(device="cpu", face_check=False)
    assert all(len(frame.faces) == 0 for frame in track_video(clip, unchecked, detect_every=4, face_detector="haar"))
    # A threshold given is the bar for every frame's faces.
    assert all(len(f.faces) == 0 for f in track_video(clip, bundled, detect_every=4, face_detector="haar", min_presence=0.9999))


def test_video_tracker_drops_a_face_whose_confidence_falls(clip, bundled):
    """The face vanishes (a flat grey frame) between detections: a track below min_confidence ends."""
    face, *_ = [f.image for f in read_frames(clip, max_frames=1)]
    blank = np.full_like(face, 110)  # the clip's background, with no face on it
    # The bundled model's mean confidence is about 0.83 on this face and under 0.01 on a featureless crop
    # (it was trained to give no peak where there is no face).
    tracker = VideoTracker(bundled, detect_every=10, face_detector="haar")  # the default min_confidence, 0.5
    (start,) = tracker.update(face, 0.0)
    assert start.confidence.mean() > 0.7
    assert tracker.update(blank, 0.1) == []  # lost: below 0.5
    # With no live track the detector runs at once (not at frame 10), and the face keeps its track.
    (back,) = tracker.update(face, 0.2)
    assert back.track_id == start.track_id and back.box == bundled.detect(face, face_detector="haar")[0].box
    # With no thresholds the track follows the (now empty) place through the same blank frame.
    lenient = VideoTracker(bundled, detect_every=10, min_confidence=0, min_presence=0, face_detector="haar")
    lenient.update(face, 0.0)
    (weak,) = lenient.update(blank, 0.1)
    assert weak.confidence.mean() < 0.05 and weak.track_id == start.track_id
