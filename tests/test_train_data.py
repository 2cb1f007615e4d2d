"""Training data: the 68->15 mapping, flips, readers, the canonical frame, augmentation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facekp.keypoints import FLIP_INDEX, KEYPOINT_NAMES
from facekp.geometry import CANONICAL_RMS, apply_affine, canonical_transform, compose_affine
from facekp.train.augment import MIRROR, Augmenter, Perturbation, make_crop
from facekp.train.data import (
    IBUG68_TO_15,
    load_dataset,
    load_kaggle_csv,
    load_pts_folder,
    map_68_to_15,
    read_pts,
    split_by_identity,
)
from conftest import DATA, requires_faces68
from synthetic import blob_image, write_kaggle_csv, write_pts_folder



def test_68_to_15_mapping_follows_the_ibug_definition():
    pts68 = np.arange(136, dtype=np.float64).reshape(68, 2)
    pts15 = map_68_to_15(pts68)
    assert pts15.shape == (15, 2) and pts15.dtype == np.float32
    named = dict(zip(KEYPOINT_NAMES, pts15))
    np.testing.assert_allclose(named["left_eye_center"], pts68[42:48].mean(0))
    np.testing.assert_allclose(named["right_eye_center"], pts68[36:42].mean(0))
    expected_single = {
        "left_eye_inner_corner": 42, "left_eye_outer_corner": 45, "right_eye_inner_corner": 39,
        "right_eye_outer_corner": 36, "left_eyebrow_inner_end": 22, "left_eyebrow_outer_end": 26,
        "right_eyebrow_inner_end": 21, "right_eyebrow_outer_end": 17, "nose_tip": 30,
        "mouth_left_corner": 54, "mouth_right_corner": 48, "mouth_center_top_lip": 51,
        "mouth_center_bottom_lip": 57,
    }
    for name, index in expected_single.items():
        np.testing.assert_allclose(named[name], pts68[index], err_msg=name)
    assert len(IBUG68_TO_15) == 15
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        map_68_to_15(np.zeros((5, 2)))


def test_flip_index_swaps_left_and_right():
    assert sorted(FLIP_INDEX) == list(range(15))
    for k, j in enumerate(FLIP_INDEX):
        assert FLIP_INDEX[j] == k
        a, b = KEYPOINT_NAMES[k], KEYPOINT_NAMES[j]
        if "left" in a or "right" in a:
            assert a.replace("left", "#").replace("right", "left").replace("#", "right") == b
        else:
            assert a == b


def test_flipped_crop_puts_each_keypoint_on_its_mirrored_feature():
    rng = np.random.default_rng(3)
    pts = np.array(rng.uniform(20, 76, (15, 2)), dtype=np.float32)
    image = blob_image(pts, 96, rng)
    mirror = np.array([[-1.0, 0, 95], [0, 1, 0]])
    crop, flipped_pts, mask = make_crop(image, pts, np.ones(15, bool), np.eye(2, 3), mirror)
    assert mask.all()
    # Keypoint k of the flipped crop is the mirror of keypoint FLIP_INDEX[k] of the original.
    swapped = pts[list(FLIP_INDEX)]
    np.testing.assert_allclose(flipped_pts, np.stack([95 - swapped[:, 0], swapped[:, 1]], -1), atol=1e-4)
    mirrored = image[:, ::-1].astype(np.float32) / 255
    np.testing.assert_allclose(crop, mirrored, atol=1e-5)


def test_mirror_offset_keeps_the_labelling_convention_on_mirrored_crops():
    rng = np.random.default_rng(5)
    pts = np.array(rng.uniform(30, 130, (15, 2)), dtype=np.float32)
    image, mask = blob_image(pts, 160, rng), np.ones(15, bool)
    frame = canonical_transform(pts)  # image -> canonical: scale != 1, so the offset is converted
    _, plain, _ = make_crop(image, pts, mask, frame)
    _, same, _ = make_crop(image, pts, mask, frame, None, mirror_offset=1.5)
    np.testing.assert_array_equal(same, plain)  # unmirrored crops are left alone
    zoom = np.array([[1.2, 0.0, -9.6], [0.0, 1.2, -9.6]])  # 1.2x about the centre
    for jitter, scale in ((MIRROR, 1.0), (compose_affine(MIRROR, zoom), 1.2)):
        _, mirrored, _ = make_crop(image, pts, mask, frame, jitter)
        _, kept, _ = make_crop(image, pts, mask, frame, jitter, mirror_offset=1.5)
        # Labels 1.5 px right of the features are 1.5 px left once mirrored; the offset moves them back.
        np.testing.assert_allclose(kept[:, 0] - mirrored[:, 0], 2 * 1.5 * scale, atol=1e-4)
        np.testing.assert_allclose(kept[:, 1], mirrored[:, 1], atol=1e-4)


def test_read_pts_and_folder_loader(tmp_path):
    truth = write_pts_folder(tmp_path, 6)
    pts = read_pts(next(tmp_path.rglob("*.pts")))
    assert pts.shape == (68, 2)
    samples = load_pts_folder(tmp_path)
    assert len(samples) == 6
    assert {s.subset for s in samples} == {"a", "b"}
    by_name = {s.name: s for s in samples}
    np.testing.assert_allclose(by_name[str(Path("b") / "face0.png")].points, truth[0], atol=1e-3)
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape == (160, 160)
        assert s.mask.all()
    bad = tmp_path / "bad.pts"
    bad.write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(ValueError, match="declares 68 points; expected 68 lines of 'x y', found 1 lines of 2 values"):
        read_pts(bad)
    bad.write_text("version: 1\nn_points: 2\n{\n1 2 3\n4 5 6\n}\n")
    with pytest.raises(ValueError, match="found 2 lines of 3 values"):  # was "declares 2 points but holds 2"
        read_pts(bad)
    with pytest.raises(FileNotFoundError):
        load_pts_folder(tmp_path / "nope")


def test_kaggle_csv_reader_masks_missing_keypoints(tmp_path):
    path = tmp_path / "training.csv"
    truth = write_kaggle_csv(path, 12, seed=1, missing=0.4)
    samples = load_kaggle_csv(path)
    assert len(samples) == 12
    masks = np.stack([s.mask for s in samples])
    assert 0 < (~masks).sum() < masks.size  # some, not all, missing
    for s, t in zip(samples, truth):
        assert s.image.shape == (96, 96) and s.image.dtype == np.uint8
        np.testing.assert_allclose(s.points[s.mask], t[s.mask], atol=1e-3)
        assert (s.points[~s.mask] == 0).all()  # not imputed: masked out, value irrelevant
        np.testing.assert_array_equal(s.frame, np.eye(2, 3))
    assert load_dataset(path)[0].subset == "kaggle"


def test_kaggle_csv_reader_rejects_bad_rows(tmp_path):
    path = tmp_path / "training.csv"
    write_kaggle_csv(path, 2)
    lines = path.read_text().splitlines()
    cells = lines[2].rsplit(",", 1)
    path.write_text("\n".join([lines[0], lines[1], cells[0] + ",1 2 3"]) + "\n")
    with pytest.raises(ValueError, match="row 3: Image has 3 pixel values, expected 9216"):
        load_kaggle_csv(path)
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks Kaggle columns"):
        load_kaggle_csv(path)


def _kaggle_row_variant(path, edit) -> None:
    """Rewrite the CSV's first data row as ``edit(cells)`` (cells: 30 coordinates + Image)."""
    header, row = path.read_text().splitlines()[:2]
    path.write_text(header + "\n" + ",".join(edit(row.split(","))) + "\n")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c[:-1], r"row 2: 30 fields, expected 31"),
    (lambda c: c[:-1] + ["7", c[-1]], r"row 2: 32 fields, expected 31"),
    (lambda c: ["abc"] + c[1:], r"row 2: left_eye_center_x is 'abc'; expected a number"),
    (lambda c: ["inf"] + c[1:], r"row 2: left_eye_center_x is 'inf'; expected a finite number"),
    (lambda c: c[:-1] + [c[-1].replace(" ", ";", 1)], r"row 2: Image holds '\d+;\d+'"),
    (lambda c: c[:-1] + ["nan " + c[-1].split(" ", 1)[1]], r"row 2: pixel values must be finite numbers in \[0, 255\]"),
])
def test_kaggle_csv_reader_names_the_row_and_cell_of_a_malformed_line(tmp_path, edit, message):
    path = tmp_path / "training.csv"
    write_kaggle_csv(path, 1)
    _kaggle_row_variant(path, edit)
    with pytest.raises(ValueError, match=message):
        load_kaggle_csv(path)


def test_kaggle_csv_reader_takes_a_byte_order_mark_and_rounds_fractional_pixels(tmp_path):
    path = tmp_path / "training.csv"
    write_kaggle_csv(path, 1)
    header, row = path.read_text().splitlines()[:2]
    cells = row.split(",")
    pixels = [int(v) for v in cells[-1].split()]
    cells[-1] = " ".join([f"{pixels[0]}.6"] + [str(v) for v in pixels[1:]])
    path.write_bytes(("\ufeff" + header + "\n" + ",".join(cells) + "\n").encode("utf-8"))
    sample = load_kaggle_csv(path)[0]
    assert sample.image[0, 0] == min(pixels[0] + 1, 255) and sample.image.ravel()[1] == pixels[1]


def test_canonical_frame_centroid_and_scale():
    rng = np.random.default_rng(0)
    pts = rng.uniform(100, 300, (15, 2))
    m = canonical_transform(pts)
    out = apply_affine(m, pts)
    np.testing.assert_allclose(out.mean(0), [48, 48], atol=1e-9)
    np.testing.assert_allclose(np.sqrt(((out - out.mean(0)) ** 2).sum(1).mean()), CANONICAL_RMS, atol=1e-9)
    assert abs(m[0, 1]) < 1e-12 and abs(m[1, 0]) < 1e-12  # no rotation


def test_an_image_listed_twice_in_the_index_is_loaded_once(tmp_path):
    write_pts_folder(tmp_path, 6, seed=3)
    rows = [{"image": p.relative_to(tmp_path).as_posix(), "subset": "s", "identity": p.stem}
            for p in sorted(tmp_path.rglob("*.png"))]
    with (tmp_path / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "subset", "identity"])
        writer.writeheader()
        writer.writerows(rows + rows[:2])
    with pytest.warns(UserWarning, match="lists 2 images more than once"):
        samples = load_pts_folder(tmp_path)
    assert sorted(s.name for s in samples) == sorted(r["image"] for r in rows)
    with (tmp_path / "index.csv").open("a", newline="") as f:
        csv.writer(f).writerow([rows[0]["image"], "s", "someone else"])
    with pytest.raises(ValueError, match="under two subsets or identities"):
        load_pts_folder(tmp_path)


def test_without_an_index_frames_of_one_person_share_an_identity(tmp_path):
    write_pts_folder(tmp_path, 3, seed=4)
    for old, new in (("b/face0", "b/Ann_Lee_00"), ("a/face1", "b/Ann_Lee_07"), ("b/face2", "b/1051618982_1")):
        for ext in (".png", ".pts"):
            (tmp_path / (old + ext)).rename(tmp_path / (new + ext))
    identities = {s.name: s.identity for s in load_pts_folder(tmp_path)}
    assert identities == {str(Path("b") / "Ann_Lee_00.png"): "Ann_Lee", str(Path("b") / "Ann_Lee_07.png"): "Ann_Lee",
                          str(Path("b") / "1051618982_1.png"): "1051618982"}


def test_split_by_identity_is_disjoint_and_reproducible(tmp_path):
    write_pts_folder(tmp_path, 40, seed=2)
    samples = load_pts_folder(tmp_path)
    train, val = split_by_identity(samples, 0.3, seed=5)
    assert train and val
    assert not {(s.subset, s.identity) for s in train} & {(s.subset, s.identity) for s in val}
    again_train, again_val = split_by_identity(list(reversed(samples)), 0.3, seed=5)
    assert {s.name for s in val} == {s.name for s in again_val}
    _, other = split_by_identity(samples, 0.3, seed=6)
    assert {s.name for s in other} != {s.name for s in val}


def test_augmentation_keeps_points_on_the_image_content():
    rng = np.random.default_rng(11)
    pts = np.array(rng.uniform(30, 130, (15, 2)), dtype=np.float32)
    image = blob_image(pts, 160, rng)
    frame = canonical_transform(pts)
    aug = Augmenter(geometry=Perturbation(scale=0.2, rotation=30, shift=10))
    checked = 0
    for _ in range(40):
        crop, out, mask = make_crop(image, pts, np.ones(15, bool), frame, aug.transform(rng))
        background = np.median(crop)
        for (x, y), visible in zip(out, mask):
            if not visible:
                continue
            xi, yi = int(round(x)), int(round(y))
            if 1 <= xi <= 94 and 1 <= yi <= 94:
                assert crop[yi, xi] > background + 0.2, "a keypoint moved off its blob"
                checked += 1
    assert checked > 300


def test_points_pushed_outside_the_crop_are_masked():
    rng = np.random.default_rng(0)
    pts = np.array(rng.uniform(30, 130, (15, 2)), dtype=np.float32)
    image = blob_image(pts, 160, rng)
    shift_right = np.array([[1.0, 0, 60], [0, 1, 0]])
    _, out, mask = make_crop(image, pts, np.ones(15, bool), canonical_transform(pts), shift_right)
    outside = out[:, 0] > 95.5
    assert outside.any()
    np.testing.assert_array_equal(mask, ~outside)


@requires_faces68
def test_real_faces68_helen_subset_loads_in_a_sane_frame():
    samples = load_pts_folder(DATA, subsets=("helen",))
    assert len(samples) > 500
    for s in samples[:200]:
        h, w = s.image.shape
        assert (s.points >= -1).all() and (s.points[:, 0] <= w) .all() and (s.points[:, 1] <= h).all()
        framed = apply_affine(s.frame, s.points)
        np.testing.assert_allclose(framed.mean(0), [48, 48], atol=1e-3)
        # the subject's left eye is on the image's right
        assert framed[0, 0] > framed[1, 0]
