"""Hard negatives: mining a finder's false faces on face-free photos, the scene backgrounds cut around
them, and a fine-tuning run that mines, keeps and resumes with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekp.calibration import BoxCalibration
from facekp.finder import FINDER_NAME, FaceFinder
from facekp.finder_model import FaceFinderNet
from facekp.finder_weights import save_finder
from facekp.train.hard_negatives import (HardNegative, HardNegativeCrops, load_hard_negatives, mine, random_views,
                                         save_hard_negatives, view)
from facekp.train.scenes import SceneComposer, SceneConfig
from conftest import randomize_batchnorm
from test_finder import TINY, _backgrounds, _fit_config, _samples, _trainer


def _eager(seed: int = 0) -> FaceFinderNet:
    """A tiny random finder that calls about half of every photo a face (its score bias at 0)."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(FaceFinderNet(TINY)).eval()
    with torch.no_grad():
        model.head[-1].bias[0] = 0.0
    return model


def _finder(model: FaceFinderNet) -> FaceFinder:
    return FaceFinder(model, BoxCalibration(1.0, (0.0, 0.0), FINDER_NAME), max_side=None, weak_score=None, backend="torch")


def test_mining_reports_each_false_face_where_the_finder_saw_it(tmp_path):
    photos = _backgrounds()
    finder = _finder(_eager())
    items = mine(finder, photos, sides=(80, 160), min_score=0.3)
    assert items and {h.side for h in items} <= {80, 160} and {h.turn for h in items} <= {0, 1, 2, 3}
    for h in items[:: max(1, len(items) // 10)]:  # each box is one the finder gives on that view
        boxes, scores, _ = finder(view(photos[h.photo], h.side, h.turn), min_score=0.3)
        assert np.isclose(boxes, h.box).all(axis=1).any() and h.score >= 0.3
    save_hard_negatives(items, tmp_path / "hn.json")
    assert load_hard_negatives(tmp_path / "hn.json") == items
    assert view(photos[0], 80, 1).shape == (80, 60)  # 160x120 shrunk to 80 long, a quarter turn


def test_crops_show_the_false_face_at_about_its_mined_size():
    photo = np.full((300, 400), 40, np.uint8)
    photo[100:140, 250:290] = 250  # the "false face": a bright 40 px square
    crops = HardNegativeCrops([photo], [HardNegative(0, 400, 0, (250.0, 100.0, 290.0, 140.0), 0.4)])
    for seed in range(20):
        crop = crops(np.random.default_rng(seed), 64)
        assert crop.shape == (64, 64) and crop.dtype == np.uint8
        ys, xs = np.nonzero(crop > 150)
        assert len(ys), seed  # the square is always in the crop
        side = max(np.ptp(xs), np.ptp(ys)) + 1
        assert 0.8 * 40 - 2 <= side <= 1.25 * 40 + 2, (seed, side)
    turned = HardNegativeCrops([photo], [HardNegative(0, 200, 1, (50.0, 55.0, 70.0, 75.0), 0.4)])
    crop = turned(np.random.default_rng(0), 64)  # mined at half size and a quarter turn: there it is 20 px
    ys, xs = np.nonzero(crop > 150)
    assert 0.8 * 20 - 2 <= np.ptp(xs) + 1 <= 1.25 * 20 + 2
    with pytest.raises(ValueError, match="no hard negatives"):
        HardNegativeCrops([photo], [])
    with pytest.raises(ValueError, match="photo 3"):
        HardNegativeCrops([photo], [HardNegative(3, 400, 0, (0.0, 0.0, 1.0, 1.0), 0.4)])


def test_random_views_are_crops_at_the_mining_sides_any_quarter_turn_and_seeded():
    photo = np.arange(300 * 400, dtype=np.uint32).reshape(300, 400).astype(np.float32)  # every pixel its own value
    shown = random_views(photo, 40, np.random.default_rng(5))
    assert len(shown) == 40 and all(v.flags.c_contiguous for v in shown)
    assert {max(v.shape) for v in shown} <= {320, 640, 1280} and len({max(v.shape) for v in shown}) == 3
    # A crop of 25-100% of the side keeps the photo's 4:3 sides, portrait when turned a quarter
    ratios = [max(v.shape) / min(v.shape) for v in shown]
    assert np.allclose(ratios, 4 / 3, atol=0.02) and {v.shape[0] > v.shape[1] for v in shown} == {True, False}
    again = random_views(photo, 40, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(shown, again))
    assert random_views(photo, 0, np.random.default_rng(5)) == []


def test_the_composer_takes_hard_negative_backgrounds_only_when_asked():
    photo = np.full((120, 160), 200, np.uint8)
    crops = HardNegativeCrops([photo], [HardNegative(0, 160, 0, (10.0, 10.0, 40.0, 40.0), 0.5)])
    config = SceneConfig(size=64, empty_p=1.0, hard_negative_p=1.0, blur_p=0, noise_p=0, jpeg_p=0)
    dark = [np.zeros((120, 160), np.uint8)]
    scenes = [SceneComposer(_samples(2), dark, config, crops)(np.random.default_rng(s))[0] for s in range(6)]
    assert min(s.mean() for s in scenes) > 20  # the bright hard-negative photo, relit, never the black background
    plain = SceneConfig(size=64, empty_p=1.0)
    a = SceneComposer(_samples(2), dark, plain, crops)(np.random.default_rng(1))[0]
    b = SceneComposer(_samples(2), dark, plain)(np.random.default_rng(1))[0]
    np.testing.assert_array_equal(a, b)  # hard_negative_p 0: the scenes of before, crops or not
    with pytest.raises(ValueError, match="hard negatives"):
        SceneComposer(_samples(2), dark, config)


def test_a_fine_tuning_run_mines_keeps_and_resumes_its_hard_negatives(tmp_path):
    with pytest.raises(ValueError, match="--init"):
        _trainer(_fit_config(tmp_path, hard_negatives=0.5))
    path = save_finder(_eager(), BoxCalibration(0.27, (0.0, 0.0), FINDER_NAME), tmp_path / "start.safetensors")
    trainer = _trainer(_fit_config(tmp_path, init=str(path), hard_negatives=0.5))
    assert trainer.hard_negatives  # mined from the initial network, before a step
    trainer.fit()
    kept = load_hard_negatives(tmp_path / "run" / "hard_negatives.json")
    assert kept == trainer.hard_negatives
    save_hard_negatives(kept[:1], tmp_path / "run" / "hard_negatives.json")
    resumed = _trainer(_fit_config(tmp_path, init=str(path), hard_negatives=0.5, steps=4))
    assert resumed.hard_negatives == kept[:1]  # the run's own list, not mined again
    resumed.fit(resume=True)
    assert resumed.step == 4
