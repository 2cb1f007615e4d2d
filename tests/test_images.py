"""Image inputs (facekp.images) and the affine framing (facekp.preprocess)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekp import InvalidImageError
from facekp.images import load_gray, load_rgb, upright_size
from facekp.geometry import apply_affine, compose_affine, invert_affine, letterbox_transform, similarity_transform
from facekp.preprocess import standardize, warp


@pytest.fixture
def colour_u8(face_u8) -> np.ndarray:
    """A colour version of the face: channels differ, so the luma weights matter."""
    g = face_u8.astype(np.int32)
    return np.clip(np.dstack([g + 30, g, g - 20]), 0, 255).astype(np.uint8)


# -- accepted inputs ------------------------------------------------------------------------
def test_gray_forms_are_identical(face_u8, tmp_path):
    ref = face_u8.astype(np.float32) / 255
    Image.fromarray(face_u8).save(tmp_path / "g.png")
    rgb = np.repeat(face_u8[..., None], 3, axis=2)
    forms = {
        "uint8 HxW": face_u8,
        "uint8 HxWx1": face_u8[..., None],
        "float32 [0,1]": ref,
        "float64 [0,1]": face_u8 / 255.0,
        "float16 [0,1]": (face_u8 / 255.0).astype(np.float16),
        "uint16": face_u8.astype(np.uint16) * 257,
        "RGB replicated": rgb,
        "RGBA": np.dstack([rgb, np.full_like(face_u8, 17)]),
        "PIL L": Image.fromarray(face_u8),
        "PIL RGB": Image.fromarray(rgb),
        "PIL I;16": Image.fromarray(face_u8.astype(np.uint16) * 257),
        "str path": str(tmp_path / "g.png"),
        "Path": tmp_path / "g.png",
        "tensor HW uint8": torch.from_numpy(face_u8),
        "tensor HWC": torch.from_numpy(rgb),
        "tensor CHW": torch.from_numpy(rgb).permute(2, 0, 1),
        "tensor 1HW float": torch.from_numpy(ref)[None],
        "tensor requiring grad": torch.from_numpy(ref.copy()).requires_grad_(),
    }
    for name, img in forms.items():
        gray = load_gray(img)
        assert gray.dtype == np.float32 and gray.shape == face_u8.shape, name
        tol = 5e-4 if "float16" in name else 1e-6
        assert np.abs(gray - ref).max() <= tol, name


def test_colour_uses_bt601_luma_and_ignores_alpha(colour_u8):
    r, g, b = (colour_u8[..., i].astype(np.float64) / 255 for i in range(3))
    expected = 0.299 * r + 0.587 * g + 0.114 * b
    rgba = np.dstack([colour_u8, np.zeros(colour_u8.shape[:2], np.uint8)])
    for img in (colour_u8, rgba, Image.fromarray(colour_u8), Image.fromarray(rgba), torch.from_numpy(colour_u8).permute(2, 0, 1)):
        assert np.abs(load_gray(img) - expected).max() < 3e-3  # PIL rounds to uint8 luma


def test_sixteen_bit_png_is_scaled_not_clipped(face_u8, tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(face_u8.astype(np.uint16) * 257).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # Pillow opens it as a 16/32-bit integer image
    np.testing.assert_allclose(load_gray(path), face_u8 / 255.0, atol=1e-6)
    # Drawing (facekp.draw, facekp predict --draw) shows the same picture, not a white one.
    expected = np.repeat(face_u8[..., None], 3, axis=2)
    assert np.array_equal(load_rgb(path), expected)
    with Image.open(path) as im:
        assert np.array_equal(load_rgb(im), expected)


def test_load_rgb_for_drawing(face_u8, colour_u8):
    assert np.array_equal(load_rgb(face_u8), np.repeat(face_u8[..., None], 3, axis=2))
    assert np.array_equal(load_rgb(colour_u8 / 255.0), colour_u8)
    assert np.array_equal(load_rgb(torch.from_numpy(colour_u8).permute(2, 0, 1)), colour_u8)
    assert load_rgb(face_u8.astype(np.uint16) * 257).dtype == np.uint8


def test_load_rgb_clips_float_overshoot_instead_of_wrapping():
    white = np.full((16, 16, 3), 1 + 0.5 / 255)  # within load_gray's tolerance; 255.5 rounds to 256
    assert load_gray(white).max() == 1.0
    assert (load_rgb(white) == 255).all()


def test_exif_orientation_is_applied_to_files(face_u8, colour_u8, tmp_path):
    # A phone photo stored sideways: the sensor's pixels plus an EXIF tag saying "rotate 90 degrees clockwise".
    stored = np.ascontiguousarray(np.rot90(colour_u8))  # the upright face turned 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    tagged, plain = tmp_path / "tagged.jpg", tmp_path / "plain.jpg"
    Image.fromarray(stored).save(tagged, quality=95, exif=exif)
    Image.fromarray(stored).save(plain, quality=95)
    gray = load_gray(tagged)
    assert gray.shape == face_u8.shape  # (64, 80): upright, not the stored (80, 64)
    np.testing.assert_array_equal(gray, np.rot90(load_gray(plain), -1))
    expected = load_gray(colour_u8)
    assert np.abs(gray - expected).mean() < 0.01  # the upright face, up to JPEG loss
    rgb = load_rgb(tagged)
    assert rgb.shape == (*face_u8.shape, 3)
    np.testing.assert_array_equal(rgb, np.rot90(load_rgb(plain), -1))
    h, w = face_u8.shape
    assert upright_size(tagged) == (w, h) and upright_size(plain) == (h, w)  # read from the header alone


# -- rejected inputs ------------------------------------------------------------------------
def _garbage_png(tmp_path):
    p = tmp_path / "garbage.png"
    p.write_bytes(np.random.default_rng(0).bytes(500))
    return p


def _truncated_png(tmp_path, face_u8):
    p = tmp_path / "truncated.png"
    Image.fromarray(face_u8).save(p)
    p.write_bytes(p.read_bytes()[:60])
    return p


BAD_INPUTS = [
    ("empty array", lambda t, f: np.zeros((0, 0), np.uint8), InvalidImageError, "empty"),
    ("empty colour array", lambda t, f: np.zeros((0, 5, 3), np.uint8), InvalidImageError, "empty"),
    ("1-D array", lambda t, f: np.zeros(100, np.uint8), InvalidImageError, r"shape \(100,\)"),
    ("HxWx2", lambda t, f: np.zeros((32, 32, 2), np.uint8), InvalidImageError, r"shape \(32, 32, 2\)"),
    ("HxWx5", lambda t, f: np.zeros((32, 32, 5), np.uint8), InvalidImageError, r"shape \(32, 32, 5\)"),
    ("4-D", lambda t, f: np.zeros((1, 32, 32, 3), np.uint8), InvalidImageError, r"shape \(1, 32, 32, 3\).*stack of images goes to Detector.predict_batch"),
    ("NaN", lambda t, f: np.where(np.eye(32) > 0, np.nan, 0.5), InvalidImageError, "NaN or infinite"),
    ("inf", lambda t, f: np.full((32, 32), np.inf), InvalidImageError, "NaN or infinite"),
    ("float > 1", lambda t, f: f.astype(np.float32), InvalidImageError, r"\[0, 1\]"),
    ("float < 0", lambda t, f: np.full((32, 32), -0.25), InvalidImageError, r"\[-0.25, -0.25\]"),
    ("bool", lambda t, f: np.ones((32, 32), bool), InvalidImageError, "dtype bool"),
    ("int64", lambda t, f: f.astype(np.int64), InvalidImageError, "dtype int64"),
    ("int32 tensor", lambda t, f: torch.from_numpy(f.astype(np.int32)), InvalidImageError, "dtype int32"),
    ("complex", lambda t, f: f.astype(np.complex64), InvalidImageError, "dtype complex64"),
    ("object", lambda t, f: f.astype(object), InvalidImageError, "dtype object"),
    ("tiny crop", lambda t, f: f[:7, :20], InvalidImageError, r"20x7 pixels.*8x8"),
    ("tiny PIL", lambda t, f: Image.fromarray(f[:20, :5]), InvalidImageError, r"5x20 pixels"),
    ("PIL float NaN", lambda t, f: Image.fromarray(np.full((16, 16), np.nan, np.float32)), InvalidImageError, "NaN"),
    ("PIL float out of range", lambda t, f: Image.fromarray(np.full((16, 16), 5.0, np.float32)), InvalidImageError, r"\[0, 1\]"),
    ("PIL 32-bit int above 16 bits", lambda t, f: Image.fromarray(np.full((16, 16), 70000, np.int32)), InvalidImageError,
     r"32-bit integer image values span \[70000, 70000\]; expected the 16-bit range \[0, 65535\]"),
    ("list of lists", lambda t, f: [[0.5] * 16] * 16, InvalidImageError, "unsupported image type list"),
    ("dict", lambda t, f: {"image": f}, InvalidImageError, "unsupported image type dict"),
    ("bytes", lambda t, f: b"\x89PNG", InvalidImageError, "unsupported image type bytes"),
    ("None", lambda t, f: None, InvalidImageError, "unsupported image type NoneType"),
    ("garbage .png", lambda t, f: _garbage_png(t), InvalidImageError, "cannot read .*garbage.png as an image"),
    ("truncated .png", lambda t, f: _truncated_png(t, f), InvalidImageError, "cannot read .*truncated.png"),
    ("directory", lambda t, f: t, InvalidImageError, "is a directory"),
    ("missing path", lambda t, f: t / "nope.png", FileNotFoundError, "not found.*nope.png"),
    ("missing str path", lambda t, f: str(t / "nope.jpg"), FileNotFoundError, "nope.jpg"),
]


@pytest.mark.parametrize("name, make, exc, match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_specific_error(name, make, exc, match, tmp_path, face_u8, detector):
    img = make(tmp_path, face_u8)
    with pytest.raises(exc, match=match):
        detector.predict(img)
    with pytest.raises(exc, match=match):
        load_gray(img)


def test_invalid_image_error_is_a_value_error():
    # Callers catching the broad built-in type keep working.
    with pytest.raises(ValueError):
        load_gray(np.zeros((3, 3)))


# -- affine framing -------------------------------------------------------------------------
@pytest.mark.parametrize("width, height", [(96, 96), (40, 40), (200, 120), (37, 91), (1000, 13)])
def test_letterbox_round_trip_is_exact(width, height):
    m = letterbox_transform(width, height, 96)
    rng = np.random.default_rng(width * height)
    pts = rng.uniform(-0.5, [width - 0.5, height - 0.5], size=(15, 2))
    back = apply_affine(invert_affine(m), apply_affine(m, pts))
    assert np.abs(back - pts).max() < 1e-4
    # Uniform scale (no stretching), longer side spanning the crop edge to edge, content centred.
    assert m[0, 0] == m[1, 1] and m[0, 1] == m[1, 0] == 0
    corners = apply_affine(m, np.array([[-0.5, -0.5], [width - 0.5, height - 0.5]]))
    np.testing.assert_allclose(corners.mean(axis=0), [47.5, 47.5], atol=1e-9)
    long_axis = 0 if width >= height else 1
    np.testing.assert_allclose(corners[:, long_axis], [-0.5, 95.5], atol=1e-9)


def test_letterbox_of_resized_crop_is_consistent():
    # Resizing a W x H crop by 2.5 maps pixel x to (x + 0.5) * 2.5 - 0.5 (pixel-centre convention,
    # as cv2.resize does). Framing the big crop after that resize must equal framing the small one,
    # so predictions on the big crop are exactly the small crop's predictions, scaled.
    for w, h in [(40, 40), (40, 32), (36, 48)]:
        resize = np.array([[2.5, 0, 0.75], [0, 2.5, 0.75]])
        small = letterbox_transform(w, h)
        big = letterbox_transform(round(2.5 * w), round(2.5 * h))
        np.testing.assert_allclose(compose_affine(big, resize), small, atol=1e-12)
        pts = np.random.default_rng(w).uniform(0, 95, size=(15, 2))  # network output in crop pixels
        p_small = apply_affine(invert_affine(small), pts)
        p_big = apply_affine(invert_affine(big), pts)
        np.testing.assert_allclose(p_big, (p_small + 0.5) * 2.5 - 0.5, atol=1e-9)


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


def test_affine_helpers_on_stacks():
    rng = np.random.default_rng(0)
    ms = np.concatenate([rng.normal(size=(4, 2, 2)) + 2 * np.eye(2), rng.normal(size=(4, 2, 1))], axis=-1)
    pts = rng.normal(size=(4, 15, 2))
    round_trip = apply_affine(invert_affine(ms), apply_affine(ms, pts))
    np.testing.assert_allclose(round_trip, pts, atol=1e-9)
    composed = compose_affine(ms[0], ms[1])
    np.testing.assert_allclose(apply_affine(composed, pts[0]), apply_affine(ms[0], apply_affine(ms[1], pts[0])), atol=1e-9)
    assert apply_affine(ms[0], pts[0].astype(np.float32)).dtype == np.float32


def test_standardize_is_per_crop_and_safe_on_flat_crops():
    crops = np.stack([np.random.default_rng(1).uniform(0.2, 0.9, (96, 96)), np.full((96, 96), 0.5)])
    out = standardize(crops)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(out[0].std(), 1, atol=1e-4)
    assert np.isfinite(out[1]).all() and np.abs(out[1]).max() == 0


def test_float_overshoot_from_resampling_is_clipped_not_rejected():
    base = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    overshoot = base.copy()
    overshoot[0, 0], overshoot[-1, -1] = -0.001, 1.001
    clipped = np.clip(overshoot, 0, 1)
    np.testing.assert_array_equal(load_gray(overshoot), clipped)
    with pytest.raises(InvalidImageError, match=r"span \[0, 1.01\]"):
        load_gray(np.where(base > 0.5, 1.01, base).astype(np.float32))
