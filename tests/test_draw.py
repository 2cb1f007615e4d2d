"""Drawing keypoints and faces onto images (facekp.draw): each dot where its (x, y) says, in its
facial part's colour, boxes around faces, and nothing else changed."""

from __future__ import annotations

import numpy as np
import pytest

import facekp
from facekp import Face, draw


def test_draw_faces(small_photo, detector):
    faces = detector.detect(small_photo, face_detector="haar")
    out = facekp.draw(small_photo, faces)
    assert out.shape == small_photo.shape and out.dtype == np.uint8
    assert not np.array_equal(out, small_photo)
    assert np.array_equal(draw(small_photo, faces[0]), out)  # one face, not in a list
    x0, y0, x1, y1 = (int(round(v)) for v in faces[0].box)
    edge = (out[y0 + 2 : y1 - 2, x0 - 1 : x0 + 1] != small_photo[y0 + 2 : y1 - 2, x0 - 1 : x0 + 1]).any(axis=(1, 2))
    assert edge.mean() > 0.9  # the box's left edge is drawn
    assert np.array_equal(draw(small_photo, []), small_photo)
    no_box = draw(small_photo, faces, boxes=False)
    assert not np.array_equal(no_box, out)
    grey = draw(small_photo[:, :, 0], faces)
    assert grey.shape == small_photo.shape


def test_draw_radius(small_photo):
    points = np.stack([np.linspace(40, 200, 15), np.full(15, 150.0)], axis=1)
    changed = lambda r: (draw(small_photo, points, radius=r) != small_photo).any(axis=2).sum()  # noqa: E731
    assert 0 < changed(0) < changed(1) < changed(None) < changed(4)  # 0 is a radius, not "the default" (2 here)
    assert changed(2.6) == changed(3)  # whole pixels
    for r in (1, 2, 3):  # each dot at its own (x, y), in its part's colour
        _assert_drawn_at(draw(small_photo, points, radius=r), small_photo, points, r)
    with pytest.raises(ValueError, match="radius must be >= 0"):
        draw(small_photo, points, radius=-1)


# Points whose x (22..120) and y (160..290) ranges do not overlap, 7 px or more apart, off the pixel
# grid: an x/y swap would put every dot somewhere else, far from all of them.
ASYMMETRIC_POINTS = np.stack([22.3 + 7.0 * np.arange(15), 160.4 + 9.0 * ((np.arange(15) * 4) % 15)], axis=1)


def _part(name: str) -> str:
    return next(p for p in ("eyebrow", "eye", "nose", "mouth") if p in name)


def _assert_drawn_at(out, photo, points, r, box=None):
    """Each point's pixel (row round(y), column round(x)) has its keypoint's colour; pixels far from
    every dot (and from the box outline) are the photo's."""
    from facekp.draw import _colour

    for name, (x, y) in zip(facekp.KEYPOINT_NAMES, points):
        assert tuple(out[round(y), round(x)]) == _colour(name), (name, x, y)
    rows, cols = np.mgrid[: photo.shape[0], : photo.shape[1]]
    d = np.hypot(cols[..., None] - points[:, 0], rows[..., None] - points[:, 1]).min(axis=-1)
    far = d > r + 2  # anti-aliased edges reach about a pixel beyond the radius
    if box is not None:
        x0, y0, x1, y1 = box
        near_box = (cols > x0 - 3) & (cols < x1 + 3) & (rows > y0 - 3) & (rows < y1 + 3)
        inside = (cols > x0 + 3) & (cols < x1 - 3) & (rows > y0 + 3) & (rows < y1 - 3)
        far &= ~near_box | inside
    assert far.mean() > 0.8
    np.testing.assert_array_equal(out[far], photo[far])


def test_draw_colours_one_per_part():
    from facekp.draw import _colour

    colours = {}
    for name in facekp.KEYPOINT_NAMES:
        colours.setdefault(_part(name), set()).add(_colour(name))
    assert set(colours) == {"eye", "eyebrow", "nose", "mouth"}
    assert all(len(c) == 1 for c in colours.values())  # one colour per facial part...
    assert len(set.union(*colours.values())) == 4  # ...and a different one for each


def test_draw_puts_each_point_at_its_x_and_y(small_photo):
    points = ASYMMETRIC_POINTS
    _assert_drawn_at(draw(small_photo, points), small_photo, points, max(1, round(min(small_photo.shape[:2]) / 150)))
    _assert_drawn_at(draw(small_photo, points[None], radius=2), small_photo, points, 2)  # (N, 15, 2)
    # A face: its box is drawn too, the dots on top of it; they follow the box's size (side 110: 2 px).
    box = (12.0, 150.0, 132.0, 250.0)
    face = Face(box, points.astype(np.float32), np.ones(15, np.float32), 1.0)
    out = draw(small_photo, [face])
    _assert_drawn_at(out, small_photo, points, 2, box=box)
    assert (out[160:240, 12] != small_photo[160:240, 12]).any(axis=1).all()  # the box's left edge (x = 12)
    assert (out[150, 20:120] != small_photo[150, 20:120]).any(axis=1).all()  # and its top edge (y = 150)
    _assert_drawn_at(draw(small_photo, [face], boxes=False), small_photo, points, 2)
