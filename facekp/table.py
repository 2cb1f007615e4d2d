"""The CSV layout of detected faces (``facekp detect --csv``): a flat form of the JSON one.

One row per face, largest first. The columns are :data:`CSV_COLUMNS`: ``image``; ``face`` (0 = the
largest); ``score`` and ``angle`` (degrees, counter-clockwise) from the face detector; ``presence``
(the keypoint network's face-presence score in [0, 1], empty for a model without one); the box
``box_x0, box_y0, box_x1, box_y1`` and ``<keypoint>_x, <keypoint>_y, <keypoint>_confidence`` for
the 15 keypoints in :data:`facekp.KEYPOINT_NAMES` order, all in image pixels (pixel-centre
convention), rounded as in the JSON form (:meth:`facekp.Face.to_dict`); and ``error``. A photo
with no face has one row with only ``image`` filled in; a photo that could not be read has one
row with ``image`` and ``error`` (the reason) filled in.
"""

from __future__ import annotations

from .keypoints import KEYPOINT_NAMES

#: The header row.
CSV_COLUMNS: tuple[str, ...] = (
    "image", "face", "score", "angle", "presence", "box_x0", "box_y0", "box_x1", "box_y1",
    *(f"{name}_{field}" for name in KEYPOINT_NAMES for field in ("x", "y", "confidence")),
    "error",
)


def csv_rows(photo: dict) -> list[list]:
    """The rows of one photo, from its JSON form: ``{"image", "faces": [Face.to_dict(), ...]}``, or
    ``{"image", "error"}`` for a photo that could not be read."""
    empty = [""] * (len(CSV_COLUMNS) - 2)
    if "error" in photo:
        return [[photo["image"], *empty, photo["error"]]]
    if not photo["faces"]:
        return [[photo["image"], *empty, ""]]
    rows = []
    for i, face in enumerate(photo["faces"]):
        points = [face["keypoints"][name][field] for name in KEYPOINT_NAMES for field in ("x", "y", "confidence")]
        presence = "" if face.get("presence") is None else face["presence"]
        rows.append([photo["image"], i, face["score"], face["angle"], presence, *face["box"], *points, ""])
    return rows
