"""The 15 facial keypoints: names, order and left/right symmetry.

Order and names follow the Kaggle "Facial Keypoints Detection" columns. "Left" and
"right" are the subject's: the subject's left eye appears on the image's right.
"""

from __future__ import annotations

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)

NUM_KEYPOINTS = len(KEYPOINT_NAMES)


def _mirror(name: str) -> str:
    if "left" in name:
        return name.replace("left", "right")
    return name.replace("right", "left")


#: ``FLIP_INDEX[i]`` is the keypoint that keypoint ``i`` becomes when the image is
#: mirrored horizontally (left eye <-> right eye, and so on; centre points map to themselves).
FLIP_INDEX: tuple[int, ...] = tuple(KEYPOINT_NAMES.index(_mirror(n)) for n in KEYPOINT_NAMES)
