"""Golden outputs: the bundled model's 15 points on fixed faces, pinned so that a silent drift fails.

The hand-label test allows 7 px and the validation test 0.25 px of RMSE, so a change to the
framing, the preprocessing, the decode or a backend could move every point by a pixel and pass
both. Here the points are compared with values recorded by this code (``golden_points.json``):
fp32 within 0.05 px, int8 within 0.5 px, in the input image's pixels. The faces68 part uses a few
validation faces (held-out identities) and skips when the data is absent.

After an intended change of the model or its outputs, record new values with
``python tests/test_golden.py`` and say why in the commit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from facekp import Detector
from facekp.data import sample_photo_path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden_points.json")
DATA = Path(os.environ.get("FACEKP_DATA", ROOT.parent / "shared" / "data" / "faces68"))
TOLERANCE_PX = {"fp32": 0.05, "int8": 0.5}
VAL_FRACTION, SPLIT_SEED, PER_SUBSET = 0.15, 0, 2


def bundled_images() -> dict[str, Path]:
    return {"examples/face_crop.jpg": ROOT / "examples" / "face_crop.jpg"}


#: The whole sample photo goes through ``detect`` (Haar boxes, calibration, refine), the crops through ``predict``.
DETECTED = "detect:grace_hopper.jpg"


def detected_points(detector: Detector) -> np.ndarray:
    faces = detector.detect(sample_photo_path())
    assert len(faces) == 1
    return faces[0].points


def validation_images(data: Path) -> dict[str, Path]:
    """The first ``PER_SUBSET`` faces of each subset whose identity falls in the validation split
    (the same seeded hash as ``facekp.train.data.split_by_identity``), read from ``index.csv``."""
    picked: dict[str, Path] = {}
    count: dict[str, int] = {}
    with (data / "index.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if f"faces68/{row['image']}" in picked:
                continue
            digest = hashlib.sha256(f"{SPLIT_SEED}:{row['subset']}/{row['identity']}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2**64 < VAL_FRACTION and count.get(row["subset"], 0) < PER_SUBSET:
                count[row["subset"]] = count.get(row["subset"], 0) + 1
                picked[f"faces68/{row['image']}"] = data / row["image"]
    return picked


def detector_for(precision: str) -> Detector:
    if precision == "int8":
        pytest.importorskip("onnxruntime")
        return Detector(device="cpu", backend="onnx", precision="int8")
    return Detector(device="cpu", backend="torch", precision="fp32")


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module", params=sorted(TOLERANCE_PX))
def precision_and_detector(request):
    return request.param, detector_for(request.param)


def check(detector: Detector, precision: str, images: dict[str, Path], golden: dict) -> None:
    names = sorted(images)
    assert names and all(name in golden[precision] for name in names), "golden_points.json lacks some images"
    points = detector.predict_batch([images[n] for n in names])
    for name, got in zip(names, points):
        expected = np.asarray(golden[precision][name], dtype=np.float64)
        err = np.linalg.norm(got - expected, axis=1)
        assert err.max() <= TOLERANCE_PX[precision], (name, precision, err.round(3).tolist())


def test_the_bundled_images_keep_their_points(precision_and_detector, golden):
    precision, detector = precision_and_detector
    check(detector, precision, bundled_images(), golden)


def test_the_sample_photo_keeps_its_detected_points(precision_and_detector, golden):
    precision, detector = precision_and_detector
    err = np.linalg.norm(detected_points(detector) - np.asarray(golden[precision][DETECTED]), axis=1)
    assert err.max() <= TOLERANCE_PX[precision], (precision, err.round(3).tolist())


def test_validation_faces_keep_their_points(precision_and_detector, golden):
    if not (DATA / "index.csv").is_file():
        pytest.skip(f"faces68 data not found at {DATA} (set FACEKP_DATA)")
    precision, detector = precision_and_detector
    images = validation_images(DATA)
    assert len(images) == 3 * PER_SUBSET  # afw, helen, ytf
    check(detector, precision, images, golden)


def record() -> None:
    """Write ``golden_points.json`` from the current code (both precisions, all images and the detected sample photo)."""
    images = {**bundled_images(), **validation_images(DATA)}
    out = {}
    for precision in sorted(TOLERANCE_PX):
        names = sorted(images)
        detector = detector_for(precision)
        points = detector.predict_batch([images[n] for n in names])
        out[precision] = {n: np.round(p.astype(np.float64), 4).tolist() for n, p in zip(names, points)}
        out[precision][DETECTED] = np.round(detected_points(detector).astype(np.float64), 4).tolist()
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(images) + 1} faces x {len(out)} precisions")


if __name__ == "__main__":
    sys.exit(record())
