"""Keypoint names on drawings stay readable on small faces: no label overlaps another or the face's points."""

from __future__ import annotations

import numpy as np
import pytest

from facekp import KEYPOINT_NAMES, Detector, draw
from facekp.data import group_photo
from facekp.draw import label_boxes, label_layout, label_scale


@pytest.fixture(scope="module")
def bundled() -> Detector:
    return Detector(device="cpu")


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_layout(labels, faces, size):
    rects = [r for r, _ in labels]
    for i, a in enumerate(rects):
        assert 0 <= a[0] and a[2] <= size[0] and 0 <= a[1] and a[3] <= size[1], a  # inside the image
        assert a[3] - a[1] >= 10  # 7 px letters and their descenders: readable
        assert not any(_overlap(a, b) for b in rects[:i]), a
    for face in faces:
        for x, y in face.points:  # no label hides a point
            assert not any(r[0] <= x <= r[2] and r[1] <= y <= r[3] for r in rects), (x, y)


def test_small_face_labels_are_apart_and_clear_of_the_points(bundled):
    image, _ = group_photo((0.25,), size=(420, 260))  # a face about 57 px wide
    (face,) = bundled.detect(image)
    assert face.box[2] - face.box[0] < 70
    size = (image.shape[1], image.shape[0])
    scale = label_scale(*size)
    (labels,) = label_layout([(face.box, face.points)], size, scale)  # what draw places
    assert sorted(i for _, i in labels) == list(range(len(KEYPOINT_NAMES)))
    _check_layout(labels, [face], size)
    # Each label is drawn where the layout puts it: its rectangle holds new pixels.
    named, plain = draw(image, [face], names=True), draw(image, [face], names=False)
    for (x0, y0, x1, y1), i in labels:
        assert (named[y0:y1, x0:x1] != plain[y0:y1, x0:x1]).any(axis=2).mean() > 0.1, KEYPOINT_NAMES[i]


def test_labels_of_several_faces_do_not_overlap(bundled):
    image, _ = group_photo((0.3, 0.2), size=(900, 500))
    faces = bundled.detect(image)
    assert len(faces) == 2
    size = (image.shape[1], image.shape[0])
    scale = label_scale(*size)
    labels = [label for face in label_layout([(f.box, f.points) for f in faces], size, scale) for label in face]
    assert len(labels) == 2 * len(KEYPOINT_NAMES)
    _check_layout(labels, faces, size)


def test_label_size_follows_the_image_not_the_face():
    assert label_scale(200, 150) == label_scale(420, 260) == 0.35  # the smallest readable size
    assert label_scale(4000, 3000) > 2 * label_scale(1000, 600)
    points = np.full((15, 2), np.nan)
    assert label_boxes(points, None, (100, 100), 0.35) == []  # no finite point, no label
