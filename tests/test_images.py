"""Image inputs (facekp.images): every supported form, EXIF orientation, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekp import InvalidImageError
from facekp.images import load_gray, load_rgb, upright_size


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


def test_float_overshoot_from_resampling_is_clipped_not_rejected():
    base = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    overshoot = base.copy()
    overshoot[0, 0], overshoot[-1, -1] = -0.001, 1.001
    clipped = np.clip(overshoot, 0, 1)
    np.testing.assert_array_equal(load_gray(overshoot), clipped)
    with pytest.raises(InvalidImageError, match=r"span \[0, 1.01\]"):
        load_gray(np.where(base > 0.5, 1.01, base).astype(np.float32))
