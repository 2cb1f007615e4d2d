"""The face-presence score: its model, its place in the config and manifest, its training, and what
the bundled model's score does on real faces and face-free photos."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from facekp import Detector
from facekp.cli import main as facekp_main
from facekp.config import DetectorConfig
from facekp.data import sample_photo_path
from facekp.errors import WeightsError
from facekp.face_detection import HaarFaceDetector
from facekp.geometry import similarity_transform, apply_affine
from facekp.calibration import resolve_calibration
from facekp.images import load_gray
from facekp.presence import DEFAULT_MIN_PRESENCE, PresenceModel, shape_residual
from facekp.train.cli import main as train_main
from facekp.train.negatives import HELD_OUT_NEGATIVES, negative_paths
from facekp.train.presence import low_resolution
from facekp.video import VideoTracker
from facekp.weights import load_model, save_model, sha256_file

from conftest import DATA, HOPPER_BOX, ROOT, requires_faces68
from synthetic import write_kaggle_csv, write_negatives_folder

NEGATIVES = DATA.parent / "negatives"
requires_negatives = pytest.mark.skipif(not NEGATIVES.is_dir(), reason=f"negatives not found at {NEGATIVES}")
FACE_CROP = ROOT / "examples" / "face_crop.jpg"
#: A held-out face-free wallpaper on which the default Haar cascade reports a face.
FALSE_FACE_PHOTO = NEGATIVES / "plasma-Kite-1280x1024.jpg"


@pytest.fixture(scope="module")
def bundled() -> Detector:
    return Detector(device="cpu")


def _model(k: int = 15, seed: int = 0) -> PresenceModel:
    rng = np.random.default_rng(seed)
    shape = rng.uniform(20, 76, size=(k, 2))
    return PresenceModel(shape, rng.normal(size=k + 1), rng.uniform(0.5, 2, size=k + 1), rng.normal(size=k + 1), 0.3,
                         {"note": "random"})


# -- the model itself ------------------------------------------------------------------------
def test_the_shape_residual_is_zero_on_the_mean_shape_and_similarity_invariant():
    m = _model()
    pts = m.mean_shape + np.random.default_rng(1).normal(0, 3, size=m.mean_shape.shape)
    assert shape_residual(m.mean_shape[None], m.mean_shape)[0] == pytest.approx(0, abs=1e-9)
    moved = apply_affine(similarity_transform((40, 50), 3.7, 123.0, (900, 20)), pts)
    np.testing.assert_allclose(shape_residual(moved[None], m.mean_shape), shape_residual(pts[None], m.mean_shape), rtol=1e-9)
    # All points at one place: nothing of a face is left.
    assert shape_residual(np.full((1, 15, 2), 5.0), m.mean_shape)[0] == pytest.approx(1.0)
    conf = np.random.default_rng(2).uniform(size=15)
    assert m.score(moved, conf)[0] == pytest.approx(m.score(pts, conf)[0], abs=1e-6)
    assert m.score(pts[None], conf[None]).shape == (1,) and m.score(pts, conf).dtype == np.float32


def test_the_model_round_trips_and_bad_entries_are_refused():
    m = _model()
    again = PresenceModel.from_dict(json.loads(json.dumps(m.to_dict())))
    pts, conf = np.random.default_rng(3).uniform(0, 96, size=(4, 15, 2)), np.random.default_rng(4).uniform(size=(4, 15))
    np.testing.assert_allclose(again.score(pts, conf), m.score(pts, conf), atol=1e-5)
    assert again.stats == {"note": "random"}
    good = m.to_dict()
    bad = {
        "another feature set": good | {"features": ["confidence"]},
        "weights of another length": good | {"weights": good["weights"][:-1]},
        "a zero scale": good | {"feature_scale": [0.0] * 16},
        "NaN": good | {"bias": float("nan")},
        "text": good | {"weights": ["a"] * 16},
        "a missing field": {k: v for k, v in good.items() if k != "mean_shape"},
    }
    for what, data in bad.items():
        with pytest.raises(ValueError):
            PresenceModel.from_dict(data)
    with pytest.raises(ValueError, match=r"\(N, 15, 2\)"):
        m.score(np.zeros((2, 14, 2)), np.zeros((2, 14)))
    with pytest.raises(ValueError, match="NaN"):
        m.score(np.full((1, 15, 2), np.nan), np.zeros((1, 15)))


def test_the_config_carries_the_presence_model_through_save_and_load(tmp_path, make_model, tiny_config):
    config = replace(tiny_config, presence=_model().to_dict())
    assert DetectorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "presence" not in tiny_config.to_dict()  # absent, not null: older readers see the same file
    save_model(make_model(), config, tmp_path / "m")
    det = Detector(tmp_path / "m", device="cpu")
    assert det.presence_model is not None and det.config.presence == config.presence
    _, embedded = load_model(tmp_path / "m" / "model.safetensors")  # the safetensors metadata has it too
    assert embedded.presence == config.presence
    # A broken entry in config.json is a clear weights error.
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    data["presence"]["weights"] = data["presence"]["weights"][:3]
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="presence weights must hold 16 values"):
        Detector(tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match="scores 4 keypoints"):
        replace(tiny_config, presence=_model(k=4).to_dict())


def test_a_model_without_presence_says_so(detector, face_u8):
    assert detector.presence_model is None
    assert detector.predict(face_u8, return_confidence=True)[1].shape == (15,)
    with pytest.raises(WeightsError, match="no presence model"):
        detector.predict(face_u8, return_presence=True)
    with pytest.raises(WeightsError, match="no presence model"):
        detector.detect(face_u8, boxes=[[0, 0, 79, 63]], min_presence=0.5)
    faces = detector.detect(face_u8, boxes=[[0, 0, 79, 63]])  # no filtering by default
    assert len(faces) == 1 and faces[0].presence is None and faces[0].to_dict()["presence"] is None
    with pytest.raises(ValueError, match="min_presence must be a number in"):
        detector.detect(face_u8, boxes=[[0, 0, 79, 63]], min_presence=1.5)


def test_the_manifest_may_add_a_presence_model_but_must_match_the_weights(tiny_manifest, tiny_weights):
    config = json.loads((tiny_weights.parent / "config.json").read_text())
    entry = {"name": "tiny", "file": str(tiny_weights), "sha256": sha256_file(tiny_weights), "size": tiny_weights.stat().st_size}
    tiny_manifest([entry | {"config": config | {"presence": _model().to_dict()}}])
    assert Detector(device="cpu").presence_model is not None  # the safetensors file has none of its own
    tiny_manifest([entry | {"config": config | {"sigma": 2.0}}])
    with pytest.raises(WeightsError, match=r"differ in \['sigma'\]"):
        Detector(device="cpu")


# -- the bundled model's presence on real images ---------------------------------------------
def test_the_bundled_model_has_a_presence_model_fitted_on_held_out_figures(bundled):
    assert bundled.presence_model is not None
    held = bundled.presence_model.stats["held_out"]
    assert set(held["negative_photos"]) == set(HELD_OUT_NEGATIVES)
    assert held["at"]["default"]["val_faces_kept"] >= 0.99


def test_presence_is_high_on_faces_and_low_on_flat_and_face_free_crops(bundled):
    _, _, on_crop = bundled.predict(FACE_CROP, return_confidence=True, return_presence=True)
    (face,) = bundled.detect(sample_photo_path())
    grey = np.full((96, 96), 0.5, np.float32)
    noise = np.random.default_rng(0).uniform(size=(96, 96)).astype(np.float32)
    _, off = bundled.predict_batch(np.stack([grey, noise]), return_presence=True)
    assert on_crop > 0.9 and face.presence > 0.9
    assert (off < 0.1).all(), off


@requires_negatives
def test_presence_is_low_on_held_out_negative_patches(bundled):
    rng = np.random.default_rng(0)
    crops = []
    for path in negative_paths(NEGATIVES, held_out=True):
        g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
        for _ in range(4):
            side = rng.uniform(48, min(g.shape))
            cx, cy = rng.uniform(side / 2, g.shape[1] - side / 2), rng.uniform(side / 2, g.shape[0] - side / 2)
            crops.append(cv2.warpAffine(g, similarity_transform((cx, cy), 96 / side, 0.0), (96, 96),
                                        flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
    _, presence = bundled.predict_batch(np.stack(crops), return_presence=True)
    assert (presence < DEFAULT_MIN_PRESENCE).mean() >= 0.95, np.sort(presence)[-5:]


@requires_faces68
def test_presence_is_high_on_validation_faces(bundled):
    from facekp.train.data import load_dataset, split_by_identity
    from facekp.train.evaluate import make_eval_crops
    from facekp.train.augment import EVAL_PERTURBATION

    _, val = split_by_identity(load_dataset(DATA, subsets=("afw",)), 0.15, seed=0)
    crops = make_eval_crops(val[:60], EVAL_PERTURBATION, seed=1)[0]
    _, presence = bundled.predict_batch(crops, return_presence=True)
    assert (presence >= DEFAULT_MIN_PRESENCE).mean() >= 0.95, np.sort(presence)[:5]


@requires_negatives
def test_detect_drops_the_false_face_haar_finds_on_a_face_free_photo(bundled):
    boxes, _, _ = HaarFaceDetector()(FALSE_FACE_PHOTO)
    assert len(boxes) >= 1  # the cascade reports a face on this wallpaper
    everything = bundled.detect(FALSE_FACE_PHOTO, face_detector="haar", min_presence=0)
    assert len(everything) == len(boxes) and all(f.presence < DEFAULT_MIN_PRESENCE for f in everything)
    assert bundled.detect(FALSE_FACE_PHOTO, face_detector="haar") == []
    assert len(bundled.detect(sample_photo_path())) == 1  # the real face stays


@pytest.mark.parametrize("wrong_by, needs_turns", [(180.0, True), (-90.0, True), (120.0, False)])
def test_detect_turns_a_face_its_face_detector_framed_at_the_wrong_angle(bundled, wrong_by, needs_turns):
    upright = bundled.detect(sample_photo_path(), boxes=[HOPPER_BOX])[0]

    def wrong_angle(image):  # the right box, the angle off by far more than the network's +/-25 degrees
        return np.array([HOPPER_BOX]), np.ones(1), np.array([wrong_by])

    # Framed as told, the crop is on its side or upside down: presence says no face there, and the
    # turns find it. At 120 degrees off the first points already give the face's angle: the
    # re-framing turns it upright and the extra pass for faces seen turned (SETTLE_DEGREES) settles it.
    framed = resolve_calibration(bundled, wrong_angle).frame(np.array(HOPPER_BOX), wrong_by)
    refined = bundled.presence(*bundled.predict_refined(load_gray(sample_photo_path()), framed[None], 1))[0]
    assert (refined < 0.5) == needs_turns
    (face,) = bundled.detect(sample_photo_path(), face_detector=wrong_angle)
    assert face.presence >= DEFAULT_MIN_PRESENCE and abs(face.angle - upright.angle) < 5
    # px, on a face ~220 px wide: one and two re-framings of the upright box differ by 2.9 px here.
    assert np.linalg.norm(face.points - upright.points, axis=1).mean() < 3.0


def test_only_the_best_turn_of_a_face_is_refined(bundled, monkeypatch):
    from facekp.turns import RETRY_TURNS, best_turns

    gray = load_gray(sample_photo_path())
    upside_down = resolve_calibration(bundled, None).frame(np.array(HOPPER_BOX), 180.0)
    batches = []
    real = bundled.predict_crops
    monkeypatch.setattr(bundled, "predict_crops", lambda crops, batch_size=None: batches.append(len(crops)) or real(crops, batch_size))
    # The face framed upside down: every turn once in one batch, then the re-framing passes (refine + 1)
    # for its best turn, the 180-degree one, alone.
    points, _, presence = best_turns(bundled, gray, upside_down[None], 1)
    assert batches == [len(RETRY_TURNS), 1, 1]
    upright = bundled.detect(sample_photo_path(), boxes=[HOPPER_BOX])[0]
    assert presence[0] >= DEFAULT_MIN_PRESENCE and np.linalg.norm(points[0] - upright.points, axis=1).mean() < 3.0
    # Two faces: still one batch for all their turns, and one per pass for their best ones.
    batches.clear()
    both = best_turns(bundled, gray, np.stack([upside_down, upside_down]), 1)
    assert batches == [2 * len(RETRY_TURNS), 2, 2]
    np.testing.assert_allclose(both[0][1], points[0], atol=1e-2)  # px; batch sizes differ by ~1e-3 in onnxruntime


def test_detect_keeps_a_weak_face_only_on_its_presence_and_tries_no_turns_on_it(bundled):
    from facekp.candidates import WEAK_MIN_PRESENCE
    from facekp.finder import FaceFinder

    photo = sample_photo_path()
    score = FaceFinder()(photo)[1].max()  # the face's (the finder's other candidates are false faces)
    strict = FaceFinder(min_score=0.999, weak_score=0.1)  # the sample face is only a weak one for it
    assert score < strict.min_score and len(strict(photo)[0]) == 0 and score in strict(photo, min_score=0.1)[1]
    (face,) = bundled.detect(photo, face_detector=strict)
    assert face.score == pytest.approx(score) and face.presence >= WEAK_MIN_PRESENCE
    assert bundled.detect(photo, face_detector="facekp", min_score=0.999) == []  # a chosen threshold: no weak faces
    assert FaceFinder(min_score=0.2, weak_score=0.3).weak_score is None  # not under min_score: none

    class UpsideDown:  # the right box, the angle 180 degrees off: only the turns can find the face
        min_score, weak_score = 0.5, 0.1

        def __init__(self, score: float) -> None:
            self.score = score

        def __call__(self, image, min_score=None):
            keep = np.array([self.score >= (self.min_score if min_score is None else min_score)])
            return np.array([HOPPER_BOX])[keep], np.array([self.score])[keep], np.array([180.0])[keep]

    assert len(bundled.detect(photo, face_detector=UpsideDown(0.6))) == 1  # a confident face: turned upright
    assert bundled.detect(photo, face_detector=UpsideDown(0.3)) == []  # a weak one: no turns, no face
    assert len(bundled.detect(photo, face_detector=UpsideDown(0.3), min_presence=0)) == 0  # weak faces always need presence


def test_both_runners_give_the_same_presence(bundled):
    pytest.importorskip("onnxruntime")
    images = [FACE_CROP, sample_photo_path(), np.full((64, 64), 0.3, np.float32)]
    _, torch_p = bundled.predict_batch(images, return_presence=True)
    _, onnx_p = Detector(device="cpu", backend="onnx").predict_batch(images, return_presence=True)
    _, int8_p = Detector(device="cpu", precision="int8").predict_batch(images, return_presence=True)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-3)
    np.testing.assert_allclose(int8_p, torch_p, atol=0.05)


def test_the_video_tracker_drops_a_face_that_leaves(bundled):
    photo = cv2.cvtColor(cv2.imread(str(sample_photo_path())), cv2.COLOR_BGR2RGB)
    blank = np.full_like(photo, 128)
    tracker = VideoTracker(bundled, detect_every=10)
    assert len(tracker.update(photo)) == 1
    assert len(tracker.update(photo)) == 1  # followed on its points, still present
    assert tracker.update(blank) == []  # followed onto a grey frame: its presence falls, it is lost
    assert len(tracker.update(photo)) == 1  # the next frame detects it again


# -- the CLIs ---------------------------------------------------------------------------------
def test_detect_cli_reports_presence_and_filters_on_min_presence(capsys, tmp_path):
    out = tmp_path / "faces.csv"
    assert facekp_main(["detect", str(sample_photo_path()), "--csv", str(out)]) == 0
    (row,) = list(csv.DictReader(out.open(newline="")))
    assert float(row["presence"]) > 0.9
    assert facekp_main(["detect", str(sample_photo_path()), "--json", "--min-presence", "0.9999"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["faces"] == [] or result["faces"][0]["presence"] >= 0.9999
    assert facekp_main(["detect", str(sample_photo_path()), "--min-presence", "2"]) == 2
    assert "min_presence must be a number in [0, 1]" in capsys.readouterr().err


def test_train_presence_on_tiny_data_writes_a_model_folder(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "train.csv"
    write_kaggle_csv(data, 12, seed=0)
    negatives = write_negatives_folder(tmp_path / "negatives", (*HELD_OUT_NEGATIVES[:2], "wall-a.jpg", "wall-b.png"))
    out = tmp_path / "with-presence"
    argv = ["presence", "--weights", str(tiny_model_dir), "--data", str(data), "--negatives", str(negatives),
            "--out", str(out), "--patches", "16", "--badly-framed", "8", "--json", str(tmp_path / "p.json"),
            "--border-cut", "0.5", "--low-res", "0.5", "--finder-views"]
    assert train_main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "hard negatives" in captured.err and "faces kept" in captured.out  # progress and the held-out table
    assert "on 24 views of 2 face-free photos" in captured.err  # the finder: 3 sides x 4 turns of each
    det = Detector(out, device="cpu")
    stats = det.presence_model.stats
    assert stats["trained_on"]["patches"] == 16 and stats["trained_on"]["negative_photos"] == 2
    assert stats["trained_on"]["border_cut"] == 0.5 and stats["trained_on"]["low_res"] == 0.5
    assert stats["trained_on"]["hard_views"] == ["finder_loose"]
    assert set(stats["held_out"]["negative_photos"]) == set(HELD_OUT_NEGATIVES[:2])
    # Hard negatives from both face detectors, each scored on the held-out photos too.
    assert set(stats["trained_on"]["hard_negatives"]) == {"haar_loose", "finder_loose"}
    assert {"haar_loose", "finder_loose"} <= set(stats["held_out"]["false_faces_found"])
    assert json.loads((tmp_path / "p.json").read_text()) == det.config.presence
    assert det.presence(*det.predict(np.full((96, 96), 0.5, np.float32), return_confidence=True)).shape == (1,)
    # The network is the one it started from; nothing is replaced without --force.
    np.testing.assert_array_equal(det.predict(FACE_CROP), Detector(tiny_model_dir, device="cpu").predict(FACE_CROP))
    assert train_main(argv) == 2 and "already exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no held-out negative photos"):
        negative_paths(tmp_path, held_out=True)


def test_negative_views_show_each_photo_shrunk_and_turned_as_the_finder_mines_it():
    from facekp.train.hard_negatives import MINING_SIDES
    from facekp.train.presence import negative_views

    photo = np.random.default_rng(0).random((500, 900)).astype(np.float32)  # a longer side between the sides
    views = negative_views([photo, photo[:100, :200]])
    assert len(views) == 2 * len(MINING_SIDES) * 4
    for k, side in enumerate(MINING_SIDES):
        upright, quarter, half, three_quarters = views[4 * k : 4 * k + 4]
        assert max(upright.shape) == min(side, 900)  # shrunk, never enlarged
        assert quarter.shape == upright.shape[::-1] and half.shape == upright.shape
        np.testing.assert_array_equal(half, upright[::-1, ::-1])
        np.testing.assert_array_equal(three_quarters, np.rot90(upright, 3))
    assert all(v.shape in ((100, 200), (200, 100)) for v in views[12:])


def test_low_resolution_positives_look_like_a_small_face_enlarged():
    crop = cv2.resize(cv2.imread(str(FACE_CROP), cv2.IMREAD_GRAYSCALE), (96, 96), interpolation=cv2.INTER_AREA)
    crop = crop.astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    detail = lambda c: float(np.abs(cv2.Laplacian(c, cv2.CV_32F)).mean())
    for _ in range(5):
        low = low_resolution(crop, rng)
        assert low.shape == crop.shape and low.dtype == np.float32 and 0.0 <= low.min() <= low.max() <= 1.0
        assert abs(float(low.mean()) - float(crop.mean())) < 0.02  # the same face, its fine detail gone
        assert detail(cv2.GaussianBlur(low, (0, 0), 1.0)) < detail(cv2.GaussianBlur(crop, (0, 0), 1.0))


def test_upside_down_negatives_show_the_face_turned_over():
    """The eyes, marked by the brightest pixels, land 120-240 degrees from where an upright crop has them."""
    from facekp.train.data import Sample
    from facekp.train.negative_crops import upside_down_crops
    from facekp.geometry import canonical_transform
    from synthetic import MEAN_FACE

    image = np.zeros((120, 120), np.uint8)
    pts = MEAN_FACE + 12.0
    for k in (0, 1):
        x, y = np.rint(pts[k]).astype(int)
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    sample = Sample(image, pts, np.ones(15, bool), canonical_transform(pts), "s", "id", "face")
    crops = upside_down_crops([sample], 12, np.random.default_rng(0))
    assert crops.shape == (12, 96, 96)
    upright = apply_affine(canonical_transform(pts), pts[:2]).mean(axis=0) - 48.0
    for crop in crops:
        ys, xs = np.nonzero(crop > 0.8 * crop.max())
        eyes = np.array([xs.mean(), ys.mean()]) - 48.0
        cos = eyes @ upright / (np.linalg.norm(eyes) * np.linalg.norm(upright))
        assert cos < np.cos(np.radians(105)), cos  # 120 at least, less a few degrees of marker rounding
