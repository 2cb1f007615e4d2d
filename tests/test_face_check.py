"""The face check: its network and file, its labels and training step, the bundled check on real faces and
face-free crops, and its place in ``detect`` (candidates checked, boxes passed in not)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from facekp import Detector
from facekp.data import sample_photo
from facekp.errors import WeightsError
from facekp.face_check import FaceCheck, FaceCheckConfig, FaceCheckNet, load_face_check_file, save_face_check
from facekp.geometry import CANONICAL_SIZE, similarity_transform
from facekp.images import load_gray
from facekp.preprocess import frame_crops, warp
from facekp.train.face_check import (Examples, candidates, held_out_figures, label_candidates, readable, scores,
                                     train_face_check)
from facekp.train.negatives import negative_paths
from facekp.train.scenes import load_gray_u8

from conftest import HOPPER_BOX, ROOT, tamper_bundled_graphs
from test_presence import NEGATIVES, requires_negatives

FACE_CROP = ROOT / "examples" / "face_crop.jpg"


def _face(cx: float, cy: float, eyes: float) -> np.ndarray:
    """(15, 2) points of a face whose eye centres are ``eyes`` px apart, centroid near (cx, cy)."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.8, 0.8, size=(15, 2)) * eyes
    pts[0], pts[1] = (-eyes / 2, -0.3 * eyes), (eyes / 2, -0.3 * eyes)
    return (pts - pts.mean(axis=0) + (cx, cy)).astype(np.float32)


def _box(cx: float, cy: float, side: float) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def _face_crops(n: int, seed: int = 0) -> np.ndarray:
    """The sample portrait's face framed ``n`` times, a little differently each time, any angle."""
    gray = load_gray(sample_photo())
    x0, y0, x1, y1 = HOPPER_BOX
    rng = np.random.default_rng(seed)
    side = x1 - x0
    frames = [similarity_transform(((x0 + x1) / 2 + rng.uniform(-0.05, 0.05) * side, (y0 + y1) / 2),
                                   CANONICAL_SIZE / side * rng.uniform(0.9, 1.1), rng.uniform(-180, 180)) for _ in range(n)]
    return frame_crops([gray] * n, np.stack(frames))


def _plain_crops(n: int, seed: int = 0) -> np.ndarray:
    """Crops without a face: smooth random tones and stripes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tones = cv2.resize(rng.uniform(0, 1, (4, 4)).astype(np.float32), (CANONICAL_SIZE, CANONICAL_SIZE),
                           interpolation=cv2.INTER_CUBIC)
        stripes = 0.5 + 0.3 * np.sin(np.arange(CANONICAL_SIZE) * rng.uniform(0.1, 1.0))[None]
        out.append(np.clip(tones if i % 2 else tones * 0.5 + stripes * 0.5, 0, 1))
    return np.stack(out).astype(np.float32)


# -- labels ------------------------------------------------------------------------------------
def test_candidates_are_labelled_face_no_face_or_left_out():
    faces = np.stack([_face(100, 100, 20), _face(300, 120, 40)])
    boxes = np.array([
        _box(104, 98, 70),     # within half an eye distance (10 px) of the first face: a face
        _box(300, 150, 140),   # 30 px off the second face (over half its 40 px eye distance), which it holds: left out
        _box(500, 400, 60),    # nowhere near a face: no face
        _box(140, 100, 60),    # 40 px beside the first face, its box grown by half (45 px half side) reaching it: left out
        _box(180, 100, 60),    # 80 px beside it: the grown box (45 px half side) misses it: no face
    ])
    np.testing.assert_array_equal(label_candidates(boxes, faces), [1, -1, 0, -1, 0])
    assert label_candidates(boxes, np.zeros((0, 15, 2))).tolist() == [0] * 5
    assert label_candidates(np.zeros((0, 4)), faces).shape == (0,)


def test_only_faces_the_keypoint_network_reads_are_taught_as_faces():
    ex = Examples(np.arange(5, dtype=np.float32)[:, None, None], np.array([1.0, 1.0, 0.0, 0.0, 1.0]),
                  np.array(["scenes"] * 5), np.array([0.9, 0.2, 0.1, 0.95, 0.5]), np.array([0.3, 0.2, 0.2, 0.4, 0.9]))
    kept = readable(ex)
    assert kept.crops[:, 0, 0].tolist() == [0, 2, 3, 4] and kept.scores.tolist() == [0.3, 0.2, 0.4, 0.9]


# -- the network and its file ----------------------------------------------------------------------
def test_the_file_round_trips_and_bad_files_are_refused(tmp_path):
    torch.manual_seed(0)
    model = FaceCheckNet(FaceCheckConfig((4, 8, 8, 8))).eval()
    path = save_face_check(model, 0.25, tmp_path / "check.safetensors", {"note": "random"})
    loaded = load_face_check_file(path)
    x = torch.randn(3, 1, CANONICAL_SIZE, CANONICAL_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x))
    assert loaded.threshold == 0.25 and loaded.stats == {"note": "random"}
    assert loaded.model.config.widths == (4, 8, 8, 8)
    with pytest.raises(FileExistsError, match="already exists"):
        save_face_check(model, 0.25, path)
    with pytest.raises(ValueError, match="threshold"):
        save_face_check(model, 1.5, tmp_path / "other.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_face_check_file(truncated)
    broken = FaceCheckNet(FaceCheckConfig((4, 8, 8, 8)))
    with torch.no_grad():
        broken.head.weight[0, 0] = float("nan")
    with pytest.raises(WeightsError, match="NaN"):
        load_face_check_file(save_face_check(broken, 0.25, tmp_path / "nan.safetensors"))
    with pytest.raises(WeightsError, match="no face check description"):
        load_face_check_file(ROOT / "facekp" / "weights" / "finder-s8.safetensors")
    with pytest.raises(FileNotFoundError):
        load_face_check_file(tmp_path / "missing.safetensors")


def test_the_bundled_check_is_the_manifests_with_its_sha256_and_threshold():
    from facekp.face_check import load_face_check
    from facekp.weights import bundled_path, read_manifest, sha256_file

    (entry,) = read_manifest()["face_checks"]
    path = bundled_path(entry["file"])
    assert path.stat().st_size == entry["size"] < 1_000_000 and sha256_file(path) == entry["sha256"]
    loaded = load_face_check(entry["name"])
    assert loaded.threshold == pytest.approx(entry["threshold"], abs=1e-6) == FaceCheck().threshold
    assert loaded.stats["held_out"]["threshold"] == pytest.approx(loaded.threshold)
    with pytest.raises(WeightsError, match="no face check named"):
        load_face_check("no-such-check")


def test_the_bundled_check_runs_its_shipped_graph_which_scores_as_torch(tmp_path, monkeypatch):
    from facekp.errors import ChecksumError
    from facekp.face_check import load_face_check
    from facekp.weights import bundled_path, read_manifest, sha256_file

    (entry,) = read_manifest()["face_checks"]
    graph = entry["onnx"]  # shipped, so that a plain install (no onnx extra) runs it
    assert load_face_check().onnx == bundled_path(graph["file"]) and sha256_file(bundled_path(graph["file"])) == graph["sha256"]
    check = FaceCheck()
    assert check.backend == "onnx" and FaceCheck(backend="torch").backend == "torch"
    crops = np.concatenate([_face_crops(4), _plain_crops(4)])
    np.testing.assert_allclose(check(crops), FaceCheck(backend="torch")(crops), atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        FaceCheck(backend="tensorrt")
    tamper_bundled_graphs(monkeypatch, bundled_path(graph["file"]), tmp_path)
    with pytest.raises(ChecksumError, match="ONNX graph"):
        FaceCheck()


def test_without_onnxruntime_the_check_runs_on_torch_or_says_how_to_install(no_onnxruntime):
    assert FaceCheck().backend == "torch"
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        FaceCheck(backend="onnx")


def test_a_check_of_ones_own_is_exported_for_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = FaceCheckNet(FaceCheckConfig((4, 8, 8, 8)))
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so that folding them is tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    path = save_face_check(model.eval(), 0.3, tmp_path / "mine.safetensors")
    crops = _plain_crops(5)
    mine = FaceCheck(path)
    assert mine.backend == "onnx" and mine.threshold == 0.3
    np.testing.assert_allclose(mine(crops), FaceCheck(path, backend="torch")(crops), atol=1e-5)


def test_crops_of_another_size_are_refused_with_the_expected_shape():
    check = FaceCheck()
    with pytest.raises(ValueError, match=r"\(N, 96, 96\) crops, got shape \(2, 64, 64\)"):
        check(np.zeros((2, 64, 64), np.float32))
    assert check(np.zeros((0, CANONICAL_SIZE, CANONICAL_SIZE), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FaceCheck(threshold=1.0)


# -- training ------------------------------------------------------------------------------------
def test_a_few_epochs_on_tiny_data_learn_faces_from_plain_crops():
    faces, plain = _face_crops(48), _plain_crops(48)
    train = Examples(np.concatenate([faces[:32], plain[:32]]), np.r_[np.ones(32), np.zeros(32)].astype(np.float32),
                     np.array(["scenes"] * 64))
    logs = []
    model = train_face_check(train, FaceCheckConfig((4, 8, 8, 8)), epochs=8, batch_size=16, lr=1e-2, progress=logs.append)
    assert len(logs) == 8 and float(logs[-1].split("loss ")[1].split(",")[0]) < float(logs[0].split("loss ")[1].split(",")[0])
    held = scores(model, np.concatenate([faces[32:], plain[32:]]))
    assert held[:16].min() > held[16:].max(), "the held-out faces should all score above the held-out plain crops"
    figures = held_out_figures(held, Examples(np.zeros((32, 1, 1)), np.r_[np.ones(16), np.zeros(16)],
                                              np.array(["scenes"] * 32)), keep_share=1.0)
    assert figures["at"]["shipped"]["faces_detect_keeps_kept"] == 1.0 and figures["at"]["shipped"]["false_kept_scenes"] == 0.0
    # With the finder's scores, only the candidates detect sees (from the weak faces' 0.15) count.
    low = Examples(np.zeros((4, 1, 1)), np.array([1.0, 1.0, 0.0, 0.0]), np.array(["scenes"] * 4),
                   scores=np.array([0.5, 0.12, 0.5, 0.12]))
    figures = held_out_figures(np.array([0.9, 0.0, 0.1, 0.95]), low, keep_share=1.0)
    assert figures["faces"] == 1 and figures["threshold"] == pytest.approx(0.9)
    assert figures["at"]["shipped"]["false_kept_scenes"] == 0.0
    with pytest.raises(ValueError, match="faces and non-faces"):
        train_face_check(Examples(faces, np.ones(len(faces), np.float32), np.array(["scenes"] * len(faces))))


def test_candidates_are_framed_as_detect_frames_them():
    detector = Detector(device="cpu")
    photo = load_gray_u8(ROOT / "facekp" / "data" / "grace_hopper.jpg")
    finder = detector_finder()
    x0, y0, x1, y1 = HOPPER_BOX
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    found = candidates(finder, photo, _face(cx, cy, 0.4 * (x1 - x0))[None], "scenes")
    assert (found.labels == 1).sum() == 1 and found.crops.shape[1:] == (CANONICAL_SIZE, CANONICAL_SIZE)
    face = found.crops[found.labels == 1]
    # The same framing detect's first pass gives: the finder's box through its calibration.
    boxes, _, angles = finder(photo, min_score=0.1)
    best = np.argmin(np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - (cx, cy), axis=1))
    expected = warp(photo.astype(np.float32) / 255, finder.calibration.frame(boxes[best], angles[best]))
    np.testing.assert_allclose(face[0], expected, atol=1e-5)
    assert detector.face_check(face)[0] >= detector.face_check.threshold


def detector_finder():
    from facekp.finder import FaceFinder

    return FaceFinder(max_side=None, weak_score=None)


# -- the bundled check --------------------------------------------------------------------------
def test_the_bundled_check_passes_faces_at_any_angle_and_drops_plain_crops():
    check = FaceCheck()
    faces = check(_face_crops(24))
    assert (faces >= check.threshold).mean() >= 0.95, faces
    assert check(np.full((1, CANONICAL_SIZE, CANONICAL_SIZE), 0.5, np.float32))[0] < check.threshold
    crop = load_gray(FACE_CROP)
    framed = cv2.resize(crop, (CANONICAL_SIZE, CANONICAL_SIZE), interpolation=cv2.INTER_AREA)
    assert check(framed[None])[0] >= check.threshold


@requires_negatives
def test_the_bundled_check_drops_most_patches_of_held_out_negatives():
    from facekp.train.negative_crops import load_negatives, patch_crops

    check = FaceCheck()
    patches = patch_crops(load_negatives(negative_paths(NEGATIVES, held_out=True)), 300, np.random.default_rng(0))
    assert (check(patches) >= check.threshold).mean() < 0.1  # 7% with the shipped check; the finder proposes fewer


# -- detect ----------------------------------------------------------------------------------------
def test_detect_checks_a_face_detectors_candidates_but_not_boxes_passed_in(small_photo):
    checked, unchecked = Detector(device="cpu"), Detector(device="cpu", face_check=False)
    assert unchecked.face_check is None and isinstance(checked.face_check, FaceCheck)
    faces = checked.detect(small_photo)
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].points, unchecked.detect(small_photo)[0].points, atol=1e-4)
    # A face detector that reports a box on a plain wall: checked, the candidate goes no further.
    wall = np.full((300, 300), 128, np.uint8)
    wall_box = lambda image: (np.array([[100.0, 100.0, 200.0, 200.0]]), np.array([0.9]))
    assert checked.detect(wall, face_detector=wall_box, min_presence=0) == []
    assert len(unchecked.detect(wall, face_detector=wall_box, min_presence=0)) == 1
    # The same box passed in is the caller's word: not checked.
    assert len(checked.detect(wall, boxes=[[100.0, 100.0, 200.0, 200.0]], min_presence=0)) == 1
    with pytest.raises(TypeError, match="face_check must be"):
        Detector(device="cpu", face_check=0.5)


def test_a_face_the_check_is_sure_of_needs_less_presence_unless_a_threshold_is_given(monkeypatch):
    import facekp.detector as detector_module
    from facekp.candidates import VOUCHED_CHECK, VOUCHED_MIN_PRESENCE
    from facekp.data import sample_photo_path
    from facekp.face_detectors import resolve_face_detector

    photo = sample_photo_path()
    checked, unchecked = Detector(device="cpu"), Detector(device="cpu", face_check=False)
    (face,) = checked.detect(photo)
    finder = resolve_face_detector(None)
    boxes, _, angles = finder(photo)
    frame = finder.calibration.frame(boxes[0], angles[0])
    assert checked.face_check(frame_crops([load_gray(photo)], frame[None]))[0] >= VOUCHED_CHECK
    assert VOUCHED_MIN_PRESENCE <= face.presence < 0.9999
    # A default bar that no presence here reaches: the face the check vouches for is kept all the same ...
    monkeypatch.setattr(detector_module, "DEFAULT_MIN_PRESENCE", 0.9999)
    (vouched,) = checked.detect(photo)
    np.testing.assert_allclose(vouched.points, face.points, atol=1e-4)
    assert unchecked.detect(photo) == []  # ... and without the check, nothing is
    # A threshold the caller gives is the bar for every face.
    assert checked.detect(photo, min_presence=0.9999) == []
    assert checked.detect_options(min_presence=None).min_presence is None  # the default travels as such


def test_weak_faces_and_the_turns_need_the_checks_word(monkeypatch):
    import facekp.candidates as candidates_module
    from facekp.candidates import TURN_MIN_CHECK, WEAK_MIN_CHECK
    from facekp.data import sample_photo_path
    from facekp.finder import FaceFinder

    photo = sample_photo_path()
    checked, unchecked = Detector(device="cpu"), Detector(device="cpu", face_check=False)
    calibration = FaceFinder().calibration

    def check_of(angle: float) -> float:  # the check's score of the sample face framed at this angle
        return float(checked.face_check(frame_crops([load_gray(photo)], calibration.frame(np.array(HOPPER_BOX), angle)[None]))[0])

    class OneBox:  # the sample face's box at a fixed score and angle, with the finder's weak faces
        min_score, weak_score, calibration = 0.5, 0.1, FaceFinder().calibration

        def __init__(self, score: float, angle: float) -> None:
            self.score, self.angle = score, angle

        def __call__(self, image, min_score=None):
            keep = np.array([self.score >= (self.min_score if min_score is None else min_score)])
            return np.array([HOPPER_BOX])[keep], np.array([self.score])[keep], np.array([self.angle])[keep]

    # A weak face the check passes with WEAK_MIN_CHECK goes on and is kept; a bar it misses stops it before the
    # keypoint network, and without the check there is no such bar.
    assert check_of(0.0) >= WEAK_MIN_CHECK
    assert len(checked.detect(photo, face_detector=OneBox(0.3, 0.0))) == 1
    monkeypatch.setattr(candidates_module, "WEAK_MIN_CHECK", 1.01)
    assert checked.detect(photo, face_detector=OneBox(0.3, 0.0)) == []
    assert len(checked.detect(photo, face_detector=OneBox(0.6, 0.0))) == 1  # not a weak one: the bar is not for it
    assert len(unchecked.detect(photo, face_detector=OneBox(0.3, 0.0))) == 1
    # The face framed upside down is turned back when the check scores it from TURN_MIN_CHECK ...
    assert check_of(180.0) >= TURN_MIN_CHECK
    assert len(checked.detect(photo, face_detector=OneBox(0.6, 180.0))) == 1
    monkeypatch.setattr(candidates_module, "TURN_MIN_CHECK", 1.01)  # ... and not when the check doubts it
    assert checked.detect(photo, face_detector=OneBox(0.6, 180.0)) == []
    assert len(unchecked.detect(photo, face_detector=OneBox(0.6, 180.0))) == 1


def test_the_cli_turns_the_face_check_off_on_request(capsys, tmp_path, small_photo):
    from PIL import Image

    from facekp.cli import _detector, _parser, main

    on = _detector(_parser().parse_args(["detect", "photo.jpg", "--device", "cpu"]))
    off = _detector(_parser().parse_args(["detect", "photo.jpg", "--device", "cpu", "--no-face-check"]))
    assert isinstance(on.face_check, FaceCheck) and off.face_check is None
    assert _parser().parse_args(["batch", "photos", "--out", "o.parquet", "--no-face-check"]).no_face_check
    path = tmp_path / "photo.png"
    Image.fromarray(small_photo).save(path)
    assert main(["detect", str(path), "--json", "--device", "cpu", "--no-face-check"]) == 0
    import json

    (face,) = json.loads(capsys.readouterr().out)[0]["faces"]
    np.testing.assert_allclose(np.array([[face["keypoints"][k]["x"], face["keypoints"][k]["y"]] for k in face["keypoints"]]),
                               off.detect(path)[0].points, atol=1e-3)
