"""Face detectors by name (``"facekp"``, ``"haar"``) through detect, the tracker, batch and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facekp import Detector
from facekp.batch import FaceKeypoints
from facekp.cli import main
from facekp.data import sample_photo
from facekp.face_detection import HaarFaceDetector
from facekp.face_detectors import DEFAULT_FACE_DETECTOR, FACE_DETECTORS, check_face_detector, resolve_face_detector
from facekp.finder import FaceFinder
from facekp.video import VideoTracker


def test_names_give_shared_detectors_of_their_kind():
    haar = resolve_face_detector("haar")
    assert isinstance(haar, HaarFaceDetector) and resolve_face_detector("haar") is haar
    finder = resolve_face_detector("facekp", min_score=0.35)
    assert isinstance(finder, FaceFinder) and finder.min_score == 0.35
    assert resolve_face_detector("facekp", 0.35) is finder
    assert resolve_face_detector("facekp").min_score != 0.35  # another threshold, another instance
    assert resolve_face_detector(None) is resolve_face_detector(DEFAULT_FACE_DETECTOR)
    assert DEFAULT_FACE_DETECTOR in FACE_DETECTORS


def test_a_callable_passes_through():
    def boxes(image):
        return np.array([[0.0, 0.0, 10.0, 10.0]])

    assert resolve_face_detector(boxes) is boxes


@pytest.mark.parametrize("face_detector, min_score, error, words", [
    ("haar", 0.5, ValueError, "has none"),
    ("dlib", None, ValueError, "unknown face detector 'dlib'"),
    (3, None, TypeError, "got int"),
    (lambda image: [], 0.5, ValueError, "your own detector"),
    ("facekp", 1.0, ValueError, "min_score must be in (0, 1)"),
    ("facekp", 0.0, ValueError, "min_score must be in (0, 1)"),
    ("facekp", float("nan"), ValueError, "finite"),
    ("facekp", "0.5", TypeError, "must be a number"),
])
def test_bad_choices_are_refused_before_anything_is_built(face_detector, min_score, error, words):
    with pytest.raises(error, match=None) as info:
        check_face_detector(face_detector, min_score)
    assert words in str(info.value)


def test_detect_by_name_equals_detect_with_the_instance(detector):
    photo = sample_photo()
    by_name = detector.detect(photo, face_detector="haar")
    by_instance = detector.detect(photo, face_detector=HaarFaceDetector())
    assert len(by_name) == len(by_instance) == 1
    np.testing.assert_allclose(by_name[0].points, by_instance[0].points, atol=1e-4)


def test_detect_refuses_min_score_with_boxes_given(detector):
    with pytest.raises(ValueError, match="no use with boxes"):
        detector.detect(sample_photo(), boxes=[[100, 100, 300, 300]], min_score=0.5)


def test_the_finders_threshold_reaches_its_faces():
    detector = Detector(device="cpu")
    photo = sample_photo()
    loose = detector.detect(photo, face_detector="facekp", min_score=0.02, min_presence=0)
    strict = detector.detect(photo, face_detector="facekp", min_score=0.98, min_presence=0)
    assert all(f.score >= 0.02 for f in loose) and all(f.score >= 0.98 for f in strict)
    assert len(loose) >= len(strict) and len(loose) > 0


def test_tracker_frames_the_named_detectors_boxes_with_its_calibration():
    detector = Detector(device="cpu")
    tracker = VideoTracker(detector, face_detector="facekp")
    assert tracker.face_detector is resolve_face_detector("facekp")
    assert tracker.calibration.detector == resolve_face_detector("facekp").calibration.detector != "haar_frontalface_default"
    with pytest.raises(ValueError, match="has none"):
        VideoTracker(detector, face_detector="haar", min_score=0.4)


def test_batch_worker_takes_the_detector_by_name(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "hopper.png"
    from PIL import Image

    Image.fromarray(sample_photo()).save(path)
    rows = FaceKeypoints(face_detector="haar", device="cpu")({"image": np.array([str(path)])}).to_pylist()
    expected = Detector(device="cpu").detect(path, face_detector="haar")
    assert len(rows) == len(expected) == 1
    assert rows[0]["nose_tip_x"] == pytest.approx(float(expected[0].points[10, 0]), abs=1e-3)
    with pytest.raises(ValueError, match="has none"):
        FaceKeypoints(face_detector="haar", min_score=0.5, device="cpu")


def test_cli_face_detector_and_min_score(tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "hopper.png"
    Image.fromarray(sample_photo()).save(path)
    assert main(["detect", str(path), "--face-detector", "haar", "--json", "--device", "cpu"]) == 0
    haar = json.loads(capsys.readouterr().out)[0]["faces"]
    assert len(haar) == 1 and abs(haar[0]["angle"]) < 5  # measured on the points of an upright portrait
    assert main(["detect", str(path), "--face-detector", "facekp", "--min-score", "0.02", "--min-presence", "0",
                 "--json", "--device", "cpu"]) == 0
    finder = json.loads(capsys.readouterr().out)[0]["faces"]
    assert finder and all(f["score"] >= 0.02 for f in finder)
    assert main(["detect", str(path), "--face-detector", "haar", "--min-score", "0.5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facekp: error:") and "has none" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["detect", str(path), "--face-detector", "dlib"])
    assert "invalid choice: 'dlib'" in capsys.readouterr().err
