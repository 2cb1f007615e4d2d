"""Every script in examples/ runs headless on small inputs (as subprocesses, with the tiny model).

The five scripts start together (they mostly wait on imports) and each test checks one's results.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facekp.data import group_photo, sample_photo
from facekp.table import CSV_COLUMNS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Start every example; returns {name: (workdir, Popen)}."""
    work = tmp_path_factory.mktemp("examples")
    small = work / "inputs"
    (small / "folder").mkdir(parents=True)
    photo = small / "portrait.jpg"
    Image.fromarray(cv2.resize(sample_photo(), (170, 200), interpolation=cv2.INTER_AREA)).save(photo, quality=92)
    group, _ = group_photo((0.4, 0.25), size=(380, 260))
    Image.fromarray(group).save(small / "group.png")
    Image.fromarray(group).save(small / "folder" / "group.png")
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(small / "folder" / "blank.png")
    # Haar pinned: the tiny random network has no presence score to drop the finder's weaker faces.
    model = ["--weights", str(tiny_model_dir), "--device", "cpu", "--face-detector", "haar"]
    commands = {
        "annotate_photo": [str(photo), "-o", "annotated.png", *model],
        "folder_to_csv": [str(small / "folder"), "-o", "faces.csv", *model],
        "video_overlay": ["--max-frames", "6", "--output", "overlay.avi", *model],
        "sunglasses": [str(small / "group.png"), "-o", "sunglasses.png", *model],
        "align_faces": [str(small / "group.png"), "-o", "aligned.png", "--size", "64", *model],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    started = {}
    for name, args in commands.items():
        cwd = work / name
        cwd.mkdir()
        (work / f"{name}-tmp").mkdir()  # its own temporary folder, which must be left empty
        started[name] = (cwd, subprocess.Popen([sys.executable, str(EXAMPLES / f"{name}.py"), *args], cwd=cwd,
                                               env={**env, "TMPDIR": str(work / f"{name}-tmp")},
                                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    yield {"inputs": small, **started}
    for value in started.values():
        value[1].kill()


def _finish(runs, name) -> tuple[Path, str]:
    cwd, proc = runs[name]
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    # onnxruntime (1.32, which runs the face finder) keeps its telemetry session id in $TMPDIR/.ses:
    # its file, one per machine, not the example's.
    left = [p for p in (cwd.parent / f"{cwd.name}-tmp").iterdir() if p.name != ".ses"]
    assert not left, f"{cwd.name} left temporary files behind: {left}"
    return cwd, out


def test_annotate_photo(runs):
    cwd, out = _finish(runs, "annotate_photo")
    assert "1 face(s)" in out
    with Image.open(cwd / "annotated.png") as im:
        assert im.size == (170, 200)


def test_folder_to_csv(runs):
    cwd, out = _finish(runs, "folder_to_csv")
    with (cwd / "faces.csv").open(newline="") as f:
        assert next(csv.reader(f)) == list(CSV_COLUMNS)  # the layout of facekp detect --csv
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert sorted((r["image"], r["face"]) for r in rows) == [("blank.png", ""), ("group.png", "0"), ("group.png", "1")]
    assert "3 face(s)" not in out and "2 face(s) in 2 photo(s)" in out


def test_video_overlay_writes_a_video_headless(runs):
    cwd, out = _finish(runs, "video_overlay")
    assert "6 frame(s)" in out
    cap = cv2.VideoCapture(str(cwd / "overlay.avi"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 6


def test_sunglasses(runs):
    cwd, out = _finish(runs, "sunglasses")
    assert "2 face(s)" in out
    with Image.open(cwd / "sunglasses.png") as im, Image.open(runs["inputs"] / "group.png") as src:
        assert im.size == src.size
        assert not np.array_equal(np.asarray(im), np.asarray(src))


def test_align_faces(runs):
    cwd, out = _finish(runs, "align_faces")
    assert "2 aligned face(s)" in out
    with Image.open(cwd / "aligned.png") as im:
        assert im.size == (128, 64)


def test_examples_refuse_to_overwrite(tiny_model_dir, tmp_path):
    target = tmp_path / "exists.png"
    target.write_bytes(b"keep")
    result = subprocess.run([sys.executable, str(EXAMPLES / "annotate_photo.py"), "-o", str(target)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "exists" in result.stderr and target.read_bytes() == b"keep"
