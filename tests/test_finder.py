"""The face finder: decoding hand-made maps (boxes, angles, NMS), targets, a real training step
and resume on tiny generated scenes, the weights file, and the FaceFinder callable."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from facekp.errors import ChecksumError, WeightsError
from facekp.calibration import BoxCalibration
from facekp.face_detection import run_face_detector
from facekp.finder import FINDER_NAME, FaceFinder, decode
from facekp.finder_model import BOX_PER_RMS, FaceFinderNet, FinderConfig
from facekp.finder_weights import load_finder_file, save_finder
from facekp.geometry import apply_affine, similarity_transform
from facekp.train.data import Sample
from facekp.train.finder_fit import (FinderFitConfig, FinderTrainer, encode_targets, face_geometry_targets, finder_loss,
                                     make_batch)
from facekp.train.scenes import SceneComposer, SceneConfig, eye_distance
from facekp.weights import sha256_file
from conftest import randomize_batchnorm, tamper_bundled_graphs
from synthetic import MEAN_FACE, blob_face

TINY = FinderConfig(stem=4, stages=(4, 4, 8, 8), neck=4)


def _maps(size: int = 64) -> list[np.ndarray]:
    """Empty maps (every score logit -10) for a size x size input at strides 8, 16, 32."""
    maps = []
    for stride in (8, 16, 32):
        m = np.zeros((6, size // stride, size // stride), np.float32)
        m[0] = -10.0
        m[4] = 1.0
        maps.append(m)
    return maps


def _peak(m: np.ndarray, i: int, j: int, logit: float, dx=0.0, dy=0.0, side_cells=4.0, angle=0.0) -> None:
    a = np.radians(angle)
    m[:, i, j] = (logit, dx, dy, np.log(side_cells), 2 * np.cos(a), 2 * np.sin(a))  # (cos, sin) need not be unit


def test_decode_one_face_per_peak_in_pixels():
    maps = _maps(128)
    _peak(maps[0], 5, 3, 2.0, dx=0.25, dy=-0.5, side_cells=4.0, angle=-120.0)  # stride 8
    _peak(maps[2], 2, 1, 0.0, side_cells=2.0, angle=30.0)  # stride 32, score exactly 0.5
    maps[0][0, 5, 4] = 1.0  # a weaker neighbour of the first peak: not a local maximum
    boxes, scores, angles = decode(maps, min_score=0.4)
    # Cell (i, j) of stride s has its centre at ((j + 0.5) s - 0.5, (i + 0.5) s - 0.5).
    cx, cy, half = (3 + 0.25 + 0.5) * 8 - 0.5, (5 - 0.5 + 0.5) * 8 - 0.5, 0.5 * 4 * 8
    np.testing.assert_allclose(boxes[0], [cx - half, cy - half, cx + half, cy + half], atol=1e-4)
    np.testing.assert_allclose(boxes[1], [47.5 - 32, 79.5 - 32, 47.5 + 32, 79.5 + 32], atol=1e-4)
    np.testing.assert_allclose(scores, [1 / (1 + np.exp(-2.0)), 0.5], atol=1e-6)
    np.testing.assert_allclose(angles, [-120.0, 30.0], atol=1e-4)
    assert len(decode(maps, min_score=0.6)[0]) == 1  # the 0.5 face is below this threshold


def test_decode_suppresses_overlapping_faces_across_levels():
    maps = _maps(128)
    _peak(maps[0], 4, 4, 3.0, side_cells=5.0)  # 40 px box centred at (35.5, 35.5)
    _peak(maps[1], 2, 2, 1.0, side_cells=2.5)  # the same face seen by stride 16, weaker
    _peak(maps[0], 12, 12, 0.5, side_cells=3.0)  # another face, apart
    boxes, scores, _ = decode(maps, min_score=0.5, nms_iou=0.4)
    assert len(boxes) == 2
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.array([3.0, 0.5]))), atol=1e-6)
    assert len(decode(maps, min_score=0.5, nms_iou=1.0)[0]) == 3  # without suppression


def test_decode_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_score"):
        decode(_maps(), min_score=1.0)
    with pytest.raises(ValueError, match=r"\(6, h, w\)"):
        decode([np.zeros((5, 2, 2))] * 3)
    assert decode(_maps())[0].shape == (0, 4)


@pytest.mark.parametrize("turn", [0.0, 35.0, -90.0, 150.0])
def test_targets_angle_turns_the_face_upright_through_the_calibration(turn):
    """A face shown turned clockwise by ``turn`` gets angle ``turn``; framing its box with that
    angle puts the eyes level again, left eye on the crop's right."""
    points = apply_affine(similarity_transform((48, 48), 1.5, -turn, (200, 150)), MEAN_FACE.astype(np.float64))
    centre, side, angle = face_geometry_targets(points)
    upright = face_geometry_targets(MEAN_FACE)[2]
    assert angle == pytest.approx((turn + upright + 180) % 360 - 180, abs=1e-6)
    assert side == pytest.approx(1.5 * face_geometry_targets(MEAN_FACE)[1])
    box = np.concatenate([centre - side / 2, centre + side / 2])
    crop = apply_affine(BoxCalibration(1 / BOX_PER_RMS).frame(box, angle), points)
    eyes = crop[0] - crop[1]
    assert eyes[0] > 0 and abs(np.degrees(np.arctan2(eyes[1], eyes[0]))) < abs(upright) + 1.0
    np.testing.assert_allclose(crop.mean(axis=0), [48, 48], atol=1e-6)


def test_encoded_targets_decode_back_to_the_faces():
    faces = [apply_affine(similarity_transform((48, 48), s, a, c), MEAN_FACE.astype(np.float64))
             for s, a, c in [(0.3, 0, (40, 50)), (0.9, 100, (150, 150)), (2.0, -40, (100, 120))]]
    targets = encode_targets(faces, 256)
    maps = []
    for t in targets:
        m = t[:6].copy()
        m[0] = np.where(t[0] == 1, 5.0, -5.0)
        maps.append(m)
    boxes, _, angles = decode(maps)
    assert len(boxes) == 3
    for pts in faces:
        centre, side, angle = face_geometry_targets(pts)
        k = np.argmin(np.linalg.norm(0.5 * (boxes[:, :2] + boxes[:, 2:]) - centre, axis=1))
        np.testing.assert_allclose(0.5 * (boxes[k, :2] + boxes[k, 2:]), centre, atol=1e-3)
        assert boxes[k, 2] - boxes[k, 0] == pytest.approx(side, rel=1e-4)
        assert angles[k] == pytest.approx(angle, abs=1e-3)
    assert [int((t[0] == 1).sum()) for t in targets] == [1, 1, 1]  # one face per level, by size


def _samples(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, pts = blob_face(rng)
        out.append(Sample(img, pts, np.ones(15, bool), np.eye(2, 3), "s", f"id{i}", f"face{i}"))
    return out


def _backgrounds(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (120, 160), dtype=np.uint8) for _ in range(2)]


def test_composed_scenes_carry_their_faces_keypoints():
    composer = SceneComposer(_samples(4), _backgrounds(), SceneConfig(size=96, empty_p=0.0, occlusion_p=0.0))
    image, points = composer(np.random.default_rng(3))
    assert image.shape == (96, 96) and image.dtype == np.uint8
    assert points.ndim == 3 and points.shape[1:] == (15, 2) and len(points) >= 1
    again = composer(np.random.default_rng(3))
    np.testing.assert_array_equal(again[0], image)  # a scene depends on its generator alone
    assert all(eye_distance(p) >= 8.0 - 1e-3 for p in points)


def test_photo_scenes_carry_the_photo_with_its_face_turned_and_labelled():
    """A photo scene is one annotated photo warped into the scene: its left eye, marked by the
    brightest pixel, lands on the left or (mirrored, the labels swapped) the right eye's label."""
    rng = np.random.default_rng(0)
    faces = []
    for i in range(3):
        img, pts = blob_face(rng)
        img = (img // 2).astype(np.uint8)
        x, y = np.rint(pts[0]).astype(int)
        img[y - 1 : y + 2, x - 1 : x + 2] = 255
        faces.append(Sample(img, pts, np.ones(15, bool), np.eye(2, 3), "s", f"id{i}", f"face{i}"))
    config = SceneConfig(size=128, photo_p=1.0, occlusion_p=0.0, blur_p=0.0, noise_p=0.0, jpeg_p=0.0)
    composer = SceneComposer(faces, _backgrounds(), config)
    labels, angles = [], []
    for seed in range(24):
        image, points = composer(np.random.default_rng(seed))
        assert image.shape == (128, 128) and points.shape == (1, 15, 2)
        pts = points[0]
        assert 8.0 - 1e-3 <= eye_distance(pts) <= 128 / 2.6 + 1e-3
        assert ((pts.mean(axis=0) >= 0.15 * 127 - 1e-3) & (pts.mean(axis=0) <= 0.85 * 127 + 1e-3)).all()
        marker = np.unravel_index(np.argmax(image), image.shape)[::-1]
        d = np.linalg.norm(pts[:2] - marker, axis=1)
        assert d.min() <= max(1.5, 0.15 * eye_distance(pts)), (seed, d)
        labels.append(int(np.argmin(d)))
        angles.append(face_geometry_targets(pts)[2])
    assert set(labels) == {0, 1}  # mirrored about half the time, the labels following the face
    assert np.ptp(angles) > 90  # turned over the circle


def test_photo_scenes_are_off_by_default_and_leave_other_scenes_as_they_were():
    config = SceneConfig(size=96, empty_p=0.0)
    a = SceneComposer(_samples(4), _backgrounds(), config)(np.random.default_rng(5))
    b = SceneComposer(_samples(4), _backgrounds(), SceneConfig(size=96, empty_p=0.0, photo_p=0.0))(np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert config.photo_p == 0.0


def test_smooth_backgrounds_are_out_of_focus_and_off_by_default():
    """``smooth_p`` scenes stand on a background without fine detail (a portrait's, out of focus): on
    backgrounds of pixel noise, their mean absolute Laplacian is a small part of a plain scene's."""
    def detail(config: SceneConfig, seed: int) -> float:
        image = SceneComposer(_samples(2), _backgrounds(), config)(np.random.default_rng(seed))[0]
        return float(np.abs(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F)).mean())

    still = dict(size=256, empty_p=1.0, blur_p=0.0, noise_p=0.0, jpeg_p=0.0)  # the training scenes' side
    smooth = [detail(SceneConfig(**still, smooth_p=1.0), seed) for seed in range(12)]
    plain = [detail(SceneConfig(**still), seed) for seed in range(12)]
    assert max(smooth) < 0.1 * min(plain), (smooth, plain)
    a = SceneComposer(_samples(4), _backgrounds(), SceneConfig(size=96))(np.random.default_rng(5))
    b = SceneComposer(_samples(4), _backgrounds(), SceneConfig(size=96, smooth_p=0.0))(np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("flag", ["--photo-scenes", "--hard-negatives", "--smooth-backgrounds"])
def test_finder_cli_refuses_shares_outside_0_1_before_any_work(tmp_path, flag):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "facekp.train.cli", "finder", "--out", str(out), flag, "1.5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and f"{flag} must lie in [0, 1], got 1.5" in result.stderr
    assert not out.exists()


def _fit_config(tmp_path, **kw) -> FinderFitConfig:
    base = dict(data="unused", negatives="unused", out=str(tmp_path / "run"), model=TINY, scene_size=64,
                batch_size=4, steps=3, lr=1e-2, warmup_steps=1, val_scenes=4, eval_every=2, checkpoint_minutes=60.0)
    base.update(kw)
    return FinderFitConfig(**base)


def _trainer(config: FinderFitConfig) -> FinderTrainer:
    return FinderTrainer(config, _samples(6), _samples(3, seed=5), _backgrounds(), _backgrounds(seed=2))


def test_a_training_step_lowers_the_loss_on_its_batch():
    torch.manual_seed(0)
    model = FaceFinderNet(TINY)
    composer = SceneComposer(_samples(6), _backgrounds(), SceneConfig(size=64, empty_p=0.0))
    x, targets, _ = make_batch(composer, 0, 0, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss, parts = finder_loss(model(x), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        assert np.isfinite(list(parts.values())).all()
    assert losses[-1] < losses[0]


def test_training_checkpoints_resumes_and_refuses_changed_settings(tmp_path):
    history = _trainer(_fit_config(tmp_path)).fit()
    run = tmp_path / "run"
    assert [h["step"] for h in history] == [2, 3]
    assert {"last.pt", "best.pt", "log.jsonl", "curves.png", "fit_config.json"} <= {p.name for p in run.iterdir()}
    with pytest.raises(FileExistsError, match="--resume"):
        _trainer(_fit_config(tmp_path)).fit()
    with pytest.raises(ValueError, match="lr"):
        _trainer(_fit_config(tmp_path, steps=4, lr=5e-3)).fit(resume=True)
    resumed = _trainer(_fit_config(tmp_path, steps=4))
    history = resumed.fit(resume=True)
    assert resumed.step == 4 and [h["step"] for h in history] == [2, 3, 4]
    assert len((run / "log.jsonl").read_text().splitlines()) == 3


def test_fine_tuning_starts_from_a_finder_file_or_run_and_records_it(tmp_path):
    torch.manual_seed(3)
    start = FaceFinderNet(TINY).eval()
    randomize_batchnorm(start)
    path = save_finder(start, BoxCalibration(0.27, (0.0, 0.0), "facekp_finder"), tmp_path / "start.safetensors")
    tuned = _trainer(_fit_config(tmp_path, init=str(path), photo_scenes=0.5))
    for k, v in start.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[k], v)
    assert tuned.config.init_sha256 == sha256_file(path)
    tuned.fit()
    saved = json.loads((tmp_path / "run" / "fit_config.json").read_text())
    assert saved["init"] == str(path) and saved["init_sha256"] == sha256_file(path) and saved["photo_scenes"] == 0.5
    from_run = _trainer(_fit_config(tmp_path, out=str(tmp_path / "run2"), init=str(tmp_path / "run")))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    for k, v in best.items():
        torch.testing.assert_close(from_run.model.state_dict()[k], v)
    with pytest.raises(ValueError, match="widths"):
        _trainer(_fit_config(tmp_path, out=str(tmp_path / "run3"), init=str(path), model=FinderConfig(4, (4, 4, 8, 16), 4)))


def test_weights_file_round_trip_and_finder_callable(tmp_path):
    torch.manual_seed(0)
    model = FaceFinderNet(TINY).eval()
    calibration = BoxCalibration(0.27, (0.01, -0.02), "facekp_finder")
    path = save_finder(model, calibration, tmp_path / "finder.safetensors", min_score=0.3)
    with pytest.raises(FileExistsError):
        save_finder(model, calibration, path)
    loaded, cal, min_score, graph = load_finder_file(path)
    assert graph is None  # a file carries no graph; a bundled finder may
    assert cal == calibration and loaded.config == TINY and min_score == 0.3
    assert FaceFinder.from_file(path).min_score == 0.3
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b)
    # Under the lowest threshold every local maximum is a face: boxes come back in the photo's pixels.
    finder = FaceFinder(loaded, cal, min_score=1e-6, max_side=64)
    photo = np.random.default_rng(0).integers(0, 255, (100, 150), dtype=np.uint8)
    boxes, scores, angles = run_face_detector(finder, photo)
    assert len(boxes) and boxes.shape[1] == 4 and len(scores) == len(angles) == len(boxes)
    assert np.isfinite(boxes).all() and ((scores > 0) & (scores < 1)).all()
    small = finder.maps(np.ascontiguousarray(photo[::2, ::2][:, :75]))
    assert [m.shape[1:] for m in small] == [(7, 10), (4, 5), (2, 3)]  # cells of the 50 x 75 photo only
    (tmp_path / "keypoints.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="readable"):
        load_finder_file(tmp_path / "keypoints.safetensors")
    meta_free = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(meta_free))
    with pytest.raises(WeightsError, match="no face finder"):
        load_finder_file(meta_free)
    assert json.loads(json.dumps(TINY.to_dict())) == TINY.to_dict()


def test_onnx_maps_equal_torch_maps():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = randomize_batchnorm(FaceFinderNet(TINY)).eval()
    cal = BoxCalibration(0.27, (0.0, 0.0), "facekp_finder")
    photo = np.random.default_rng(1).integers(0, 255, (90, 130), dtype=np.uint8)
    on_torch = FaceFinder(model, cal, backend="torch").maps(photo)
    on_onnx = FaceFinder(model, cal, backend="onnx")
    assert on_onnx.backend == "onnx"
    for a, b in zip(on_torch, on_onnx.maps(photo)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="backend"):
        FaceFinder(model, cal, backend="tensorrt")


def test_threshold_choice_reports_every_threshold(detector):
    from facekp.train.finder_export import THRESHOLDS, choose_min_score

    composer = SceneComposer(_samples(4), _backgrounds(), SceneConfig(size=64))
    calibration = BoxCalibration(scale=0.3, detector=FINDER_NAME)
    chosen, table = choose_min_score(randomize_batchnorm(FaceFinderNet(TINY)).eval(), calibration, composer, detector,
                                     scenes=3)
    assert chosen in THRESHOLDS and [row["min_score"] for row in table] == list(THRESHOLDS)
    recall = [row["recall"] for row in table]
    false = [row["false_per_scene"] for row in table]
    assert recall == sorted(recall, reverse=True) and false == sorted(false, reverse=True)  # stricter: fewer of both
    kept = [row["detect_recall"] for row in table]
    assert kept == sorted(kept, reverse=True) and all(k <= r for k, r in zip(kept, recall))  # detect keeps a subset


def test_bundled_finders_match_the_manifest_and_load():
    """Each face finder the shipped manifest lists is installed with its sha256 and size, loads, and
    carries the calibration and threshold the manifest records."""
    from facekp.finder_weights import finder_entry, load_finder
    from facekp.weights import read_manifest, sha256_file
    from facekp.weights import bundled_path

    entries = read_manifest().get("face_finders", [])
    if not entries:
        pytest.skip("this build ships no face finder")
    for entry in entries:
        path = bundled_path(entry["file"])
        assert path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]
        weights = load_finder(entry["name"])
        assert weights.calibration.to_dict() == entry["config"]["box_to_frame"]
        assert weights.min_score == entry["config"]["min_score"] and finder_entry(entry["name"]) == entry
        graph = entry["onnx"]  # shipped, so that a plain install (no onnx extra) runs it
        assert weights.onnx == bundled_path(graph["file"]) and sha256_file(weights.onnx) == graph["sha256"]
    with pytest.raises(WeightsError, match="no face finder named"):
        load_finder("no-such-finder")


def test_the_bundled_finder_runs_its_own_graph_which_gives_the_torch_maps(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from facekp.finder_weights import load_finder

    finder = FaceFinder()
    assert finder.backend == "onnx"
    photo = np.random.default_rng(2).integers(0, 255, (120, 200), dtype=np.uint8)
    for a, b in zip(FaceFinder(backend="torch").maps(photo), finder.maps(photo)):
        np.testing.assert_allclose(a, b, atol=1e-3)
    # A changed graph file is refused, not run.
    tamper_bundled_graphs(monkeypatch, load_finder().onnx, tmp_path)
    with pytest.raises(ChecksumError, match="ONNX graph"):
        FaceFinder()


def test_a_read_only_photo_runs_on_torch_without_a_warning():
    import warnings

    from facekp.data import sample_photo
    from facekp.face_detection import to_u8
    from facekp.images import load_gray

    gray = to_u8(load_gray(sample_photo()))
    gray.setflags(write=False)  # as a memory-mapped or shared photo would be
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        boxes, scores, _ = FaceFinder(backend="torch")(gray)
    assert len(boxes) >= 1 and scores.max() > 0.5


@pytest.mark.parametrize("min_score", ["0", "1", "1.5", "-0.2"])
def test_finder_export_refuses_a_threshold_outside_zero_one_before_any_work(tmp_path, capsys, min_score):
    from facekp.train.cli import main as train_main

    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    argv = ["finder-export", "--run", str(tmp_path / "no-run"), "--package", str(tmp_path), "--manifest", str(manifest),
            "--min-score", min_score]
    assert train_main(argv) == 2
    assert f"min_score must be in (0, 1), got {float(min_score)}" in capsys.readouterr().err
    assert manifest.read_text() == "{}" and not (tmp_path / "weights").exists()
