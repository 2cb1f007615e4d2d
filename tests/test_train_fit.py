"""Real training steps on tiny generated data: loss goes down, resume, export, CLI, submission."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from facekp import Detector
from facekp.calibration import default_calibration
from facekp.model import HourglassConfig
from facekp.train.cli import main as train_main
from facekp.train.data import load_kaggle_csv, split_by_identity
from facekp.train.export import export_run
from facekp.train.fit import Trainer, add_negatives, heatmap_loss, make_batch, peak_height
from facekp.train.negative_crops import negative_crops
from facekp.train.negatives import HELD_OUT_NEGATIVES
from facekp.train.run import FitConfig
from facekp.config import DetectorConfig
from facekp.weights import load_model, save_model, sha256_file
from synthetic import write_kaggle_csv, write_negatives_folder

TINY = HourglassConfig(num_stacks=2, depth=2, channels=16)


@pytest.fixture(scope="module")
def kaggle_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("kaggle") / "training.csv"
    write_kaggle_csv(path, 48, seed=0, missing=0.2)
    return path


def _config(csv_path, out, **kw) -> FitConfig:
    base = dict(data=str(csv_path), out=str(out), hourglass=TINY, epochs=2, batch_size=8, lr=5e-3,
                warmup_epochs=0.2, val_fraction=0.25, checkpoint_minutes=60.0)
    base.update(kw)
    return FitConfig(**base)


def test_heatmap_loss_ignores_masked_keypoints():
    target = torch.rand(2, 15, 24, 24)
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[0, 3] = False
    out = target.clone()
    out[0, 3] += 5.0  # a wild prediction for a missing keypoint costs nothing
    assert heatmap_loss([out], target, mask).item() == 0.0
    out[0, 4] += 1.0
    assert heatmap_loss([out, out], target, mask).item() == pytest.approx(2 * 24 * 24 / (29 * 24 * 24))


def test_training_steps_lower_the_loss(kaggle_csv, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_config(kaggle_csv, tmp_path / "run", epochs=6))
    fixed = make_batch(trainer.train, np.arange(16), trainer.augmenter, trainer.codec, seed=9, epoch=0)

    def loss_on_fixed() -> float:
        trainer.model.train()
        with torch.no_grad():
            return heatmap_loss(trainer.model(fixed[0]), fixed[1], fixed[2]).item()

    before = loss_on_fixed()
    history = trainer.fit()
    after = loss_on_fixed()
    assert after < 0.5 * before
    assert len(history) == 6 and all("val_rmse" in h for h in history)
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_resume_continues_exactly_where_it_stopped(kaggle_csv, tmp_path):
    samples = load_kaggle_csv(kaggle_csv)
    train, val = split_by_identity(samples, 0.25, 0)
    torch.manual_seed(0)
    straight = Trainer(_config(kaggle_csv, tmp_path / "a", max_steps=8), train, val)
    straight.fit()
    torch.manual_seed(0)
    first = Trainer(_config(kaggle_csv, tmp_path / "b", max_steps=4), train, val)
    first.fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_config(kaggle_csv, tmp_path / "b", max_steps=8), train, val).fit()
    torch.manual_seed(123)  # a resumed run must not depend on the fresh init
    resumed = Trainer(_config(kaggle_csv, tmp_path / "b", max_steps=8), train, val)
    resumed.fit(resume=True)
    assert resumed.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="holds a"):
        Trainer(_config(kaggle_csv, tmp_path / "b", max_steps=9, hourglass=HourglassConfig(num_stacks=1, depth=2, channels=8)),
                train, val).fit(resume=True)


def test_resume_refuses_other_settings_and_keeps_one_record_per_epoch(kaggle_csv, tmp_path):
    samples = load_kaggle_csv(kaggle_csv)
    train, val = split_by_identity(samples, 0.25, 0)
    run = tmp_path / "run"
    first = Trainer(_config(kaggle_csv, run, max_steps=3), train, val)  # 5 steps per epoch: stops inside epoch 0
    first.fit()
    for changed in (dict(seed=7), dict(lr=1e-3), dict(data=str(tmp_path / "other.csv"))):
        with pytest.raises(ValueError, match=f"other settings \\({next(iter(changed))}: "):
            Trainer(_config(kaggle_csv, run, max_steps=12, **changed), train, val).fit(resume=True)
    resumed = Trainer(_config(kaggle_csv, run, max_steps=12, epochs=3), train, val)  # more epochs: allowed
    resumed.fit(resume=True)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2] and [r["step"] for r in records] == [5, 10, 12]
    assert records == resumed.history


def test_fresh_run_never_writes_into_a_finished_run_folder(kaggle_csv, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(kaggle_csv, run, max_steps=2)).fit()
    (run / "last.pt").unlink()  # the big file, deleted to save space
    best = (run / "best.pt").read_bytes()
    for resume in (False, True):
        with pytest.raises(FileExistsError, match="without last.pt to resume from"):
            Trainer(_config(kaggle_csv, run, max_steps=2)).fit(resume=resume)
    assert (run / "best.pt").read_bytes() == best


def test_an_empty_validation_split_is_refused_up_front(kaggle_csv, tmp_path):
    with pytest.raises(ValueError, match="validation split is empty"):
        Trainer(_config(kaggle_csv, tmp_path / "run", val_fraction=0.0))


def test_negative_crops_join_the_batch_with_flat_targets_and_their_peak_is_recorded(kaggle_csv, tmp_path):
    negatives = write_negatives_folder(tmp_path / "negatives", (*HELD_OUT_NEGATIVES[:2], "wall-a.jpg", "wall-b.png"))
    with pytest.raises(ValueError, match="negatives folder"):
        _config(kaggle_csv, tmp_path / "x", negatives_per_batch=4)
    trainer = Trainer(_config(kaggle_csv, tmp_path / "taught", epochs=2, negatives=str(negatives), negatives_per_batch=8))
    assert len(trainer.negative_photos) == 2  # the held-out photos are never cut for training
    assert trainer.val_negatives.shape == (256, 1, 96, 96)
    for n in (1, 2):  # fewer than three: no badly framed face among them, still n crops
        assert negative_crops(trainer.negative_photos, trainer.train, n, np.random.default_rng(0)).shape == (n, 96, 96)

    faces = make_batch(trainer.train, np.arange(4), trainer.augmenter, trainer.codec, 0, 0)
    x, target, mask = add_negatives(faces, np.full((3, 96, 96), 0.5, np.float32), trainer.augmenter, np.random.default_rng(0))
    assert x.shape[0] == target.shape[0] == mask.shape[0] == 7
    assert target[4:].abs().sum() == 0 and mask[4:].all() and target[:4].amax() > 0.5
    # Every pixel of a negative's heatmaps counts: a peak there costs as much as a missed one on a face.
    out = target.clone()
    out[5, 2, 3, 3] = 1.0
    assert heatmap_loss([out], target, mask).item() == pytest.approx(1.0 / (int(mask.sum()) * target.shape[-1] ** 2))

    history = trainer.fit()
    assert len(history) == 2 and all(0 <= h["val_negative_peak"] <= 2 for h in history)
    assert history[-1]["val_negative_peak"] == pytest.approx(peak_height(trainer.model.eval(), trainer.val_negatives), rel=1e-5)
    recorded = json.loads((tmp_path / "taught" / "fit_config.json").read_text())
    assert recorded["negatives_per_batch"] == 8 and recorded["negatives"] == str(negatives)
    card = tmp_path / "card.md"
    assert train_main(["export", "--run", str(tmp_path / "taught"), "--name", "tiny", "--package", str(tmp_path / "pkg"),
                       "--manifest", str(tmp_path / "manifest.json"), "--model-card", str(card), "--no-onnx"]) == 0
    text = card.read_text()
    assert "--negatives ../shared/data/negatives --negatives-per-batch 8" in text
    assert "| yes | - | 8 |" in text  # the stage's row: flips, no mirror offsets, 8 face-free crops per batch


def test_border_cuts_end_the_photo_inside_the_face_and_reach_the_batch_and_the_card(kaggle_csv, tmp_path):
    from facekp.train.augment import cut_at_border

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 140), dtype=np.uint8)
    points = rng.uniform(40, 90, size=(15, 2))
    lo, hi = points.min(0), points.max(0)
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)
    sides = set()
    for _ in range(40):
        cut = cut_at_border(image, points, rng)
        assert cut.shape == image.shape and cut.dtype == image.dtype
        changed = [axis for axis in (0, 1) if not np.array_equal(cut, image)
                   and ((cut.T if axis == 0 else cut) != (image.T if axis == 0 else image)).all(axis=1).any()]
        assert len(changed) == 1  # whole columns (axis 0: x) or whole rows (axis 1: y) replaced, never both
        axis = changed[0]
        lines, original = (cut.T, image.T) if axis == 0 else (cut, image)
        replaced = np.nonzero((lines != original).any(axis=1))[0]
        if replaced.min() == 0:  # the photo now starts at line k: before it, line k repeated
            k = replaced.max() + 1
            assert (lines[:k] == lines[k]).all() and np.array_equal(lines[k:], original[k:])
            past, side = k - lo[axis], (axis, "start")
        else:  # the photo now ends before line k: from it on, line k - 1 repeated
            k = replaced.min()
            assert replaced.max() == len(lines) - 1 and (lines[k:] == lines[k - 1]).all()
            past, side = hi[axis] - k, (axis, "end")
        assert 0.15 - 0.02 <= past / (hi - lo)[axis] <= 0.45 + 0.02  # that share of the face lies past the border
        sides.add(side)
    assert len(sides) == 4  # every side of the photo
    trainer = Trainer(_config(kaggle_csv, tmp_path / "cut", border_cut_p=1.0, max_steps=2))
    x_cut = make_batch(trainer.train, np.arange(4), trainer.augmenter, trainer.codec, 0, 0)[0]
    plain = Trainer(_config(kaggle_csv, tmp_path / "plain", max_steps=2))
    x_plain = make_batch(plain.train, np.arange(4), plain.augmenter, plain.codec, 0, 0)[0]
    assert not torch.equal(x_cut, x_plain)
    trainer.fit()
    assert json.loads((tmp_path / "cut" / "fit_config.json").read_text())["border_cut_p"] == 1.0
    card = tmp_path / "card.md"
    assert train_main(["export", "--run", str(tmp_path / "cut"), "--name", "tiny", "--package", str(tmp_path / "pkg"),
                       "--manifest", str(tmp_path / "manifest.json"), "--model-card", str(card), "--no-onnx"]) == 0
    assert "--border-cut 1" in card.read_text()
    with pytest.raises(ValueError, match="border_cut_p"):
        _config(kaggle_csv, tmp_path / "bad", border_cut_p=1.5)


def test_fine_tune_starts_from_saved_weights_without_flips(kaggle_csv, tmp_path):
    first = Trainer(_config(kaggle_csv, tmp_path / "first", max_steps=2))
    first.fit()
    saved = save_model(first.model, DetectorConfig(hourglass=TINY), tmp_path / "saved")
    tuned = Trainer(_config(kaggle_csv, tmp_path / "tuned", init=str(saved), flip=False, max_steps=2))
    for k, v in first.model.state_dict().items():  # starts where the saved model stopped
        torch.testing.assert_close(tuned.model.state_dict()[k], v)
    rng = np.random.default_rng(0)
    assert all(np.linalg.det(tuned.augmenter.transform(rng)[:, :2]) > 0 for _ in range(50))  # never mirrored
    tuned.fit()
    recorded = json.loads((tmp_path / "tuned" / "fit_config.json").read_text())
    assert recorded["flip"] is False
    # The starting weights are identified by hash: a file of that name may be replaced later.
    assert recorded["init_sha256"] == sha256_file(saved)
    save_model(Trainer(_config(kaggle_csv, tmp_path / "third")).model, DetectorConfig(hourglass=TINY), saved.parent, overwrite=True)
    Trainer(_config(kaggle_csv, tmp_path / "tuned", init=str(saved), flip=False, max_steps=3)).fit(resume=True)
    resumed = json.loads((tmp_path / "tuned" / "fit_config.json").read_text())
    assert resumed["init_sha256"] == recorded["init_sha256"] != sha256_file(saved)  # replaced since the run began
    card = tmp_path / "card.md"
    assert train_main(["export", "--run", str(tmp_path / "tuned"), "--name", "tiny", "--data", str(kaggle_csv),
                       "--package", str(tmp_path / "pkg"), "--manifest", str(tmp_path / "manifest.json"),
                       "--model-card", str(card), "--no-onnx"]) == 0
    assert f"Stage 1 starts from the weights `{saved.name}` (sha256 `{recorded['init_sha256']}`)" in card.read_text()
    # A model exported beside the default one gets its own card and curves; the default's stay.
    assert train_main(["export", "--run", str(tmp_path / "tuned"), "--name", "extra", "--no-default", "--no-onnx",
                       "--package", str(tmp_path / "pkg"), "--manifest", str(tmp_path / "manifest.json"),
                       "--model-card", str(tmp_path / "model-card-extra.md")]) == 0
    assert (tmp_path / "model-card-extra.md").read_text().startswith("# Model card: `extra`\n\nA facekp keypoint model")
    assert (tmp_path / "training-curves-extra.png").stat().st_size > 5000
    assert json.loads((tmp_path / "manifest.json").read_text())["default"] == "tiny"
    with pytest.raises(ValueError, match="init"):
        Trainer(_config(kaggle_csv, tmp_path / "other", init=str(saved), hourglass=HourglassConfig(num_stacks=1, channels=8)))


def test_export_then_detector_round_trip(kaggle_csv, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(kaggle_csv, run, max_steps=3)).fit()
    package = tmp_path / "pkg"
    manifest = tmp_path / "weights_manifest.json"
    entry = export_run(run, "tiny", package, manifest, {"val_rmse": 1.0}, out_folder=tmp_path / "hub")
    weights = package / "weights" / "tiny.safetensors"
    assert entry["sha256"] == sha256_file(weights) and entry["size"] == weights.stat().st_size
    saved = json.loads(manifest.read_text())
    assert saved["default"] == "tiny" and saved["models"][0]["config"]["hourglass"]["channels"] == 16
    model, config = load_model(weights)
    assert config.box_to_frame == default_calibration().to_dict()  # Detector.detect frames faces as fitted
    trained = torch.load(run / "best.pt", weights_only=True)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, trained[k])
    crop = (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)
    np.testing.assert_allclose(Detector(weights, device="cpu").predict(crop),
                               Detector(tmp_path / "hub", device="cpu").predict(crop), atol=1e-5)
    # A second export whose Hub folder is taken fails before it touches the package or the manifest.
    other = tmp_path / "other"
    Trainer(_config(kaggle_csv, other, max_steps=3, seed=1)).fit()
    before = (weights.read_bytes(), manifest.read_text())
    with pytest.raises(FileExistsError):
        export_run(other, "tiny", package, manifest, {"val_rmse": 2.0}, out_folder=tmp_path / "hub")
    assert (weights.read_bytes(), manifest.read_text()) == before


def test_cli_fit_eval_submit(kaggle_csv, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", "--data", str(kaggle_csv), "--out", str(run), "--epochs", "1", "--batch-size", "8",
            "--stacks", "1", "--depth", "2", "--channels", "8", "--device", "cpu"]
    assert train_main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 0
    assert (run / "log.jsonl").exists() and (run / "train.log").exists()
    assert train_main(args) == 2  # the run exists: refuses to start over it
    assert "--resume" in capsys.readouterr().err

    metrics = tmp_path / "metrics.json"
    # Without --data / --val-fraction / --seed, eval scores the run's own validation faces.
    assert train_main(["eval", "--weights", str(run), "--json", str(metrics), "--plots", str(tmp_path / "plots"),
                       "--device", "cpu"]) == 0
    assert json.loads(metrics.read_text())["canonical"]["faces"] == len(split_by_identity(load_kaggle_csv(kaggle_csv), 0.15, 0)[1])
    table = capsys.readouterr().out
    assert "| canonical |" in table and "| perturbed |" in table and "nose_tip" in table
    assert "Mean error (x, y) px" in table and "once each subset's mean error" in table
    report = json.loads(metrics.read_text())
    canonical = report["canonical"]
    assert canonical["rmse_without_subset_bias"] <= canonical["rmse"] + 1e-9
    for png in ("val-predictions.png", "val-errors.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 5000
    assert report["canonical"]["faces"] > 0 and np.isfinite(report["perturbed"]["rmse"])

    weights = tmp_path / "model"
    from facekp.train.run import load_run
    from facekp.weights import save_model

    model, config, _ = load_run(run)
    save_model(model, config, weights)
    test_csv, lookup = tmp_path / "test.csv", tmp_path / "IdLookupTable.csv"
    write_kaggle_csv(test_csv, 3, seed=5, with_points=False)
    with lookup.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["RowId", "ImageId", "FeatureName", "Location"])
        rows = [(1, 1, "left_eye_center_x"), (2, 1, "nose_tip_y"), (3, 3, "mouth_center_bottom_lip_x")]
        w.writerows([(*r, "") for r in rows])
    out = tmp_path / "submission.csv"
    assert train_main(["submit", "--weights", str(weights), "--test", str(test_csv), "--lookup", str(lookup),
                       "--out", str(out), "--device", "cpu"]) == 0
    with out.open() as f:
        got = list(csv.DictReader(f))
    assert [int(r["RowId"]) for r in got] == [1, 2, 3]
    assert all(0.0 <= float(r["Location"]) <= 96.0 for r in got)
    det = Detector(weights, device="cpu")
    from facekp.train.data import parse_kaggle_image

    with test_csv.open() as f:
        first = parse_kaggle_image(next(csv.DictReader(f))["Image"], "test")
    assert float(got[0]["Location"]) == pytest.approx(float(np.clip(det.predict(first)[0, 0], 0, 96)), abs=1e-3)
    assert train_main(["submit", "--weights", str(weights), "--test", str(test_csv), "--lookup", str(lookup),
                       "--out", str(out)]) == 2  # never overwrites
    with lookup.open("a", newline="") as f:
        csv.writer(f).writerow([4, 9, "nose_tip_x", ""])  # an ImageId the test set lacks
    partial = tmp_path / "partial.csv"
    assert train_main(["submit", "--weights", str(weights), "--test", str(test_csv), "--lookup", str(lookup),
                       "--out", str(partial), "--device", "cpu"]) == 2
    assert "ImageId 9 is not in" in capsys.readouterr().err
    assert not partial.exists() and not list(tmp_path.glob("partial.csv*"))  # no half-written file left behind


def test_keypoint_metrics_separate_bias_from_scatter():
    from facekp.train.evaluate import keypoint_metrics

    rng = np.random.default_rng(0)
    truth = rng.uniform(10, 80, size=(6, 15, 2))
    offset = rng.uniform(-2, 2, size=(15, 2))  # a labelling convention: the same shift on every face
    sign = np.where(np.arange(6) % 2 == 0, 1.0, -1.0)[:, None, None]
    scatter = sign * np.array([0.6, -0.3])  # mean zero over the six faces
    pred = truth + offset + scatter
    mask = np.ones((6, 15), bool)
    m = keypoint_metrics(pred, truth, mask)
    np.testing.assert_allclose(np.array(list(m["per_keypoint_bias"].values())), offset, atol=1e-9)
    assert m["rmse_unbiased"] == pytest.approx(np.sqrt((0.6**2 + 0.3**2) / 2))
    assert m["rmse"] == pytest.approx(np.sqrt(((offset + scatter) ** 2).sum(-1).mean() / 2))
    # A masked point is ignored, however wrong the prediction there.
    pred[0, 3] += 50.0
    mask[0, 3] = False
    masked = keypoint_metrics(pred, truth, mask)
    assert masked["rmse_unbiased"] == pytest.approx(m["rmse_unbiased"], abs=0.05)
    assert abs(masked["per_keypoint_bias"]["left_eye_outer_corner"][0] - offset[3, 0]) < 0.2


def test_console_script_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "facekp.train.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("fit", "eval", "export", "submit"):
        assert command in out


def test_mirror_offsets_measure_a_planted_labelling_offset(kaggle_csv):
    """Labels moved 0.5 px right raise the measured offset by exactly 0.5, whatever the model."""
    from dataclasses import replace

    from facekp.codec import HeatmapCodec
    from facekp.model import StackedHourglass
    from facekp.train.evaluate import mirror_offsets

    torch.manual_seed(0)
    model = StackedHourglass(TINY).eval()
    codec = HeatmapCodec(96, TINY.heatmap_stride)
    samples = load_kaggle_csv(kaggle_csv)[:16]
    shifted = [replace(s, points=s.points + np.linalg.solve(s.frame[:, :2], [0.5, 0.0]).astype(np.float32))
               for s in samples]
    before, after = mirror_offsets(model, codec, samples), mirror_offsets(model, codec, shifted)
    assert before.keys() == after.keys() == {samples[0].subset}
    for name in before:
        assert after[name] - before[name] == pytest.approx(0.5, abs=1e-3)


def test_cli_mirror_offset_flags(kaggle_csv, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["fit", "--data", str(kaggle_csv), "--out", str(run), "--max-steps", "1", "--batch-size", "4",
                       "--stacks", "1", "--depth", "2", "--channels", "8", "--device", "cpu",
                       "--mirror-offset", "kaggle=0.8", "--mirror-offset", "other=-0.25"]) == 0
    assert json.loads((run / "fit_config.json").read_text())["mirror_offsets"] == {"kaggle": 0.8, "other": -0.25}
    assert train_main(["eval", "--weights", str(run), "--data", str(kaggle_csv), "--split", "train",
                       "--mirror-offsets", "--device", "cpu"]) == 0
    assert "--mirror-offset " in capsys.readouterr().out
    for bad, message in ((["--mirror-offset", "ytf"], "expected SUBSET=PX"), (["--mirror-offset", "ytf=nan"], "finite PX"),
                         (["--val-fraction", "0"], "between 0 and 1"), (["--val-fraction", "1.5"], "between 0 and 1")):
        with pytest.raises(SystemExit):
            train_main(["fit", "--data", str(kaggle_csv), "--out", str(tmp_path / "bad"), *bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def two_stage_runs(kaggle_csv, tmp_path_factory):
    """Stage 1 (a mirror offset), then stage 2 fine-tuned from the stage-1 run folder without flips.

    Returns the two run folders, stage 1's best weights and stage 2's weights before it trained.
    """
    runs = tmp_path_factory.mktemp("runs")
    first = runs / "stage1"
    Trainer(_config(kaggle_csv, first, epochs=1, mirror_offsets={"kaggle": 0.5})).fit()
    second = runs / "default"
    tuned = Trainer(_config(kaggle_csv, second, epochs=1, init=str(first), flip=False))
    start = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    tuned.fit()
    best = torch.load(first / "best.pt", weights_only=True)
    return first, second, best.get("model", best), start


def _export_args(run, kaggle_csv, folder) -> list[str]:
    return ["export", "--run", str(run), "--name", "tiny", "--data", str(kaggle_csv), "--package", str(folder / "pkg"),
            "--manifest", str(folder / "manifest.json"), "--model-card", str(folder / "card" / "model-card.md")]


def test_two_stage_run_fine_tunes_from_a_run_folder_and_the_card_shows_both(two_stage_runs, kaggle_csv, tmp_path):
    first, second, stage1_best, stage2_start = two_stage_runs
    for k, v in stage2_start.items():  # stage 2 starts from the first stage's best epoch
        torch.testing.assert_close(v, stage1_best[k])
    assert train_main([*_export_args(second, kaggle_csv, tmp_path), "--no-onnx"]) == 0
    card = tmp_path / "card" / "model-card.md"
    text = card.read_text()
    assert "| 1 | `runs/stage1` | 1 |" in text and "kaggle +0.50" in text
    assert "| 2 | `runs/default` | 1 |" in text
    assert "--out runs/stage1" in text and "--mirror-offset kaggle=0.5" in text
    assert "facekp-train fit --data training.csv" in text and "--batch-size 8 --val-fraction 0.25" in text  # not the defaults
    assert "--no-flip --init runs/stage1" in text and "facekp-train export --run runs/default --name tiny" in text
    assert (card.parent / "training-curves.png").stat().st_size > 5000
    assert not {"int8_onnx", "fp32_onnx"} & set(json.loads((tmp_path / "manifest.json").read_text())["models"][0])
    assert "ONNX graph" not in text and not list((tmp_path / "pkg" / "weights").glob("*.onnx"))


def test_export_writes_scored_fp32_and_int8_graphs_beside_the_weights(two_stage_runs, kaggle_csv, tmp_path):
    pytest.importorskip("onnxruntime")  # the int8 graph is quantized and scored with onnxruntime (the onnx extra)
    _, second, _, _ = two_stage_runs
    assert train_main(_export_args(second, kaggle_csv, tmp_path)) == 0
    # The int8 graph is written beside the weights, recorded with its hash and scored.
    entry = json.loads((tmp_path / "manifest.json").read_text())["models"][0]
    int8, fp32 = entry["int8_onnx"], entry["fp32_onnx"]
    weights = tmp_path / "pkg" / "weights" / "tiny.safetensors"
    for record, precision in ((int8, "int8"), (fp32, "fp32")):
        graph = tmp_path / "pkg" / "weights" / record["file"]
        assert record["sha256"] == sha256_file(graph) and np.isfinite(record["metrics"]["val_rmse_perturbed"])
        assert Detector(weights, device="cpu", backend="onnx", onnx_model=graph).precision == precision
    assert fp32["file"] == "tiny.onnx" and abs(fp32["metrics"]["val_rmse"] - entry["metrics"]["val_rmse"]) < 1e-3
    card = (tmp_path / "card" / "model-card.md").read_text()
    assert "int8 ONNX graph" in card and "fp32 ONNX graph `facekp/weights/tiny.onnx`" in card


@pytest.fixture(scope="module")
def strided_run(kaggle_csv, tmp_path_factory):
    """A one-step CLI run with a wider target (sigma 2) on a finer heatmap (stride 2: 48 x 48)."""
    run = tmp_path_factory.mktemp("strided") / "run"
    assert train_main(["fit", "--data", str(kaggle_csv), "--out", str(run), "--max-steps", "1", "--batch-size", "4",
                       "--stacks", "1", "--depth", "2", "--channels", "8", "--sigma", "2", "--stride", "2",
                       "--val-fraction", "0.25", "--device", "cpu"]) == 0
    return run


def test_cli_fit_records_sigma_and_stride_through_export(strided_run, kaggle_csv, tmp_path):
    recorded = json.loads((strided_run / "fit_config.json").read_text())
    assert recorded["sigma"] == 2.0 and recorded["hourglass"]["heatmap_stride"] == 2
    assert train_main(["export", "--run", str(strided_run), "--name", "s2", "--package", str(tmp_path / "pkg"),
                       "--manifest", str(tmp_path / "manifest.json"), "--model-card", str(tmp_path / "card.md"),
                       "--no-onnx", "--no-default"]) == 0
    weights = tmp_path / "pkg" / "weights" / "s2.safetensors"
    _, config = load_model(weights)
    assert config.sigma == 2.0 and config.hourglass.heatmap_stride == 2 and config.hourglass.heatmap_size == 48
    assert json.loads((tmp_path / "manifest.json").read_text())["models"][0]["config"] == config.to_dict()
    det = Detector(weights, device="cpu")
    assert (det.codec.sigma, det.codec.stride, det.codec.heatmap_size) == (2.0, 2, 48)  # decoded as trained
    crop = (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)
    points = det.predict(crop)
    assert points.shape == (15, 2) and np.isfinite(points).all()


def test_cli_eval_flip_test_averages_with_the_mirrored_crop(strided_run, tmp_path, capsys):
    reports = {}
    for flag in ([], ["--flip-test"]):
        out = tmp_path / f"metrics{len(flag)}.json"
        assert train_main(["eval", "--weights", str(strided_run), "--json", str(out), "--device", "cpu", *flag]) == 0
        reports[bool(flag)] = json.loads(out.read_text())
    capsys.readouterr()
    plain, flipped = reports[False], reports[True]
    for kind in ("canonical", "perturbed"):
        assert flipped[kind]["faces"] == plain[kind]["faces"] > 0  # the same faces...
        assert np.isfinite(flipped[kind]["rmse"]) and flipped[kind]["rmse"] != plain[kind]["rmse"]  # ...other predictions


def test_fit_without_matplotlib_stops_before_any_work_and_a_short_run_resumes(kaggle_csv, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    argv = ["fit", "--data", str(kaggle_csv), "--out", str(run), "--stacks", "2", "--depth", "2", "--channels", "16",
            "--batch-size", "8", "--val-fraction", "0.25", "--device", "cpu"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)  # what Python does for a package that is not installed
        assert train_main([*argv, "--max-steps", "2"]) == 2
        err = capsys.readouterr().err
        assert err == 'facekp-train: error: facekp-train draws its plots with matplotlib: pip install "facekp[train]"\n'
        assert not run.exists()
        assert train_main(["eval", "--weights", "default", "--data", str(kaggle_csv), "--plots", str(tmp_path / "p")]) == 2
        assert "facekp[train]" in capsys.readouterr().err and not (tmp_path / "p").exists()
    assert train_main([*argv, "--max-steps", "2"]) == 0
    assert {"last.pt", "best.pt", "curves.png", "log.jsonl"} <= {p.name for p in run.iterdir()}
    assert train_main([*argv, "--max-steps", "4", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 4
