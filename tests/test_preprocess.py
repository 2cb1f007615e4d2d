"""The crop builder (facekp.preprocess): resampling through an affine, the batch of crops, and the
normalization a model's config names."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import synthetic_face
from facekp.config import DetectorConfig
from facekp.geometry import apply_affine, letterbox_transform, similarity_transform
from facekp.preprocess import (
    NORMALIZATIONS,
    frame_crops,
    letterbox_transforms,
    network_input,
    normalize,
    standardize,
    warp,
)


@pytest.mark.parametrize("scale, angle", [(1, 0), (3, 0), (2, 90), (4, 180), (3, -90)])
def test_single_bright_pixel_lands_where_apply_affine_says(scale, angle):
    # Pixel-centre convention end to end: a bright pixel at (x0, y0), warped by a similarity with
    # an integer scale (and a multiple of 90 degrees), peaks exactly at apply_affine(m, (x0, y0)),
    # and bilinear interpolation spreads it symmetrically around that pixel.
    img = np.zeros((40, 50), np.float32)
    x0, y0 = 21, 13
    img[y0, x0] = 1.0
    m = similarity_transform((x0 + 0.0, y0 + 0.0), scale, angle, out_center=(47.0, 45.0))
    m[np.abs(m) < 1e-12] = 0.0
    crop = warp(img, m, 96)
    tx, ty = apply_affine(m, np.array([[x0, y0]], float))[0]
    iy, ix = np.unravel_index(np.argmax(crop), crop.shape)
    assert (ix, iy) == (round(tx), round(ty)) == (47, 45)
    assert crop[iy, ix] == pytest.approx(1.0, abs=1e-6)
    if scale > 1:
        # (OpenCV quantises interpolation weights, hence the 1e-3.)
        assert crop[iy, ix - 1] == pytest.approx(crop[iy, ix + 1], abs=1e-3)
        assert crop[iy - 1, ix] == pytest.approx(crop[iy + 1, ix], abs=1e-3)
        assert crop[iy, ix + 1] == pytest.approx(1 - 1 / scale, abs=0.02)


def _centroid(img: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    w = img.astype(np.float64)
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize("scale", [2.0, 0.9, 0.45, 0.2, 0.12])
def test_warp_keeps_blob_centre_where_apply_affine_says(scale):
    # Covers both resampling paths: direct bilinear (scale >= 0.5) and area-reduce-then-warp
    # (scale < 0.5), whose composed transform must still be exactly ``m``.
    size_src = int(np.ceil(96 / scale)) + 40
    cx, cy = 0.43 * size_src + 0.3, 0.57 * size_src - 0.2
    sd = 6.0 / scale  # 6 crop px wide blob, well inside the crop
    ys, xs = np.mgrid[:size_src, :size_src]
    img = np.exp(-0.5 * (((xs - cx) ** 2 + (ys - cy) ** 2) / sd**2)).astype(np.float32)
    m = similarity_transform((cx + 3.3 / scale, cy - 2.1 / scale), scale, 0.0)
    crop = warp(img, m, 96)
    expected = apply_affine(m, np.array([[cx, cy]]))[0]
    assert np.abs(_centroid(crop) - expected).max() < 0.05


def test_warp_repeats_the_border_outside_the_image():
    img = np.tile(np.linspace(0.2, 0.8, 20, dtype=np.float32), (10, 1))  # 20 wide, 10 high
    crop = warp(img, letterbox_transform(20, 10), 96)
    # The letterbox pads above and below: those rows repeat the top / bottom image rows.
    np.testing.assert_allclose(crop[0], crop[40], atol=1e-6)
    np.testing.assert_allclose(crop[95], crop[60], atol=1e-6)
    assert crop.min() >= 0.2 - 1e-6 and crop.max() <= 0.8 + 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fits", "float64-image"])
def test_warp_into_a_row_of_a_batch(dtype):
    img = np.random.default_rng(2).random((120, 100)).astype(dtype)
    m = letterbox_transform(100, 120, 96)
    batch = np.zeros((3, 96, 96), np.float32)
    row = batch[1]
    assert warp(img, m, 96, out=row) is row
    # Where OpenCV cannot write into ``out`` (a float64 image), the crop is copied there all the same.
    np.testing.assert_allclose(batch[1], warp(img, m, 96), atol=1e-6)
    assert not batch[0].any() and not batch[2].any()


def test_standardize_is_per_crop_and_safe_on_flat_crops():
    crops = np.stack([np.random.default_rng(1).uniform(0.2, 0.9, (96, 96)), np.full((96, 96), 0.5)])
    out = standardize(crops)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(out[0].std(), 1, atol=1e-4)
    assert np.isfinite(out[1]).all() and np.abs(out[1]).max() == 0


def test_frame_crops_is_warp_per_image_into_one_batch():
    grays = [synthetic_face(w, h, seed=i).astype(np.float32) for i, (w, h) in enumerate([(80, 64), (120, 150), (96, 96)])]
    transforms = letterbox_transforms(grays, 96)
    assert transforms.shape == (3, 2, 3)
    np.testing.assert_array_equal(transforms[1], letterbox_transform(120, 150, 96))
    crops = frame_crops(grays, transforms, 96)
    assert crops.shape == (3, 96, 96) and crops.dtype == np.float32
    for gray, m, crop in zip(grays, transforms, crops):
        np.testing.assert_array_equal(crop, warp(gray, m, 96))
    assert letterbox_transforms([], 96).shape == (0, 2, 3)
    with pytest.raises(ValueError, match="one per image"):
        frame_crops(grays, transforms[:2], 96)


def test_network_input_follows_the_config_normalization():
    crops = np.stack([synthetic_face(96, 96, seed=i).astype(np.float32) for i in range(4)])
    normalization = DetectorConfig().normalization
    assert normalization in NORMALIZATIONS
    x = network_input(crops, normalization)
    assert x.shape == (4, 1, 96, 96) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], normalize(crops, normalization))
    np.testing.assert_array_equal(x[:, 0], standardize(crops))
    with pytest.raises(ValueError, match="unknown normalization 'minmax'"):
        network_input(crops, "minmax")
