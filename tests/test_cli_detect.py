"""The ``facekp detect`` command line: photos and folders in, faces as text, JSON, CSV or drawings out."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import struct
import termios
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import hostile
from facekp import KEYPOINT_NAMES, Detector
from facekp.cli import main
from facekp.data import group_photo, sample_photo


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    """A folder with a small portrait (one face), a blank photo (none) and a text file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    face = cv2.resize(sample_photo(), (192, 225), interpolation=cv2.INTER_AREA)
    paths = {"face": folder / "hopper.jpg", "blank": folder / "sub" / "blank.png"}
    Image.fromarray(face).save(paths["face"], quality=92)
    Image.fromarray(np.full((120, 100), 90, np.uint8)).save(paths["blank"])
    (folder / "notes.txt").write_text("not a photo")
    paths["folder"] = folder
    return paths


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _model(tiny_model_dir):
    # Haar pinned: the tiny random network has no presence score to drop the finder's weaker faces.
    return ["--weights", str(tiny_model_dir), "--device", "cpu", "--face-detector", "haar"]


def test_detect_one_photo_as_json(capsys, photos, tiny_model_dir, detector):
    code, out, err = _run(capsys, "detect", photos["face"], "--json", *_model(tiny_model_dir))
    assert code == 0, err
    result = json.loads(out)
    assert len(result) == 1 and result[0]["image"] == str(photos["face"])
    assert (result[0]["width"], result[0]["height"]) == (192, 225)
    (face,) = result[0]["faces"]
    assert list(face["keypoints"]) == list(KEYPOINT_NAMES)
    expected = detector.detect(photos["face"], face_detector="haar")[0]
    np.testing.assert_allclose(face["box"], expected.box, atol=0.01)
    points = np.array([[v["x"], v["y"]] for v in face["keypoints"].values()])
    np.testing.assert_allclose(points, expected.points, atol=2e-3)
    assert "1 face(s) in 1 photo(s)" in err


def test_detect_folder_to_csv(capsys, photos, tiny_model_dir, tmp_path, detector):
    out_csv = tmp_path / "out" / "faces.csv"
    code, out, err = _run(capsys, "detect", photos["folder"], "--recursive", "--csv", out_csv, *_model(tiny_model_dir))
    assert code == 0, err
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["image"]).name for r in rows] == ["hopper.jpg", "blank.png"]
    assert rows[0]["face"] == "0"
    # The row holds what Detector.detect finds on the photo, each value in its own column.
    (expected,) = detector.detect(photos["face"], face_detector="haar")
    assert float(rows[0]["score"]) == expected.score and float(rows[0]["angle"]) == pytest.approx(expected.angle, abs=0.005)
    box = [float(rows[0][f"box_{c}"]) for c in ("x0", "y0", "x1", "y1")]
    np.testing.assert_allclose(box, expected.box, atol=0.005 + 1e-9)
    for i, name in enumerate(KEYPOINT_NAMES):
        x, y, conf = (float(rows[0][f"{name}_{c}"]) for c in ("x", "y", "confidence"))
        np.testing.assert_allclose([x, y], expected.points[i], atol=5e-4 + 1e-6, err_msg=name)
        assert conf == pytest.approx(expected.confidence[i], abs=5e-5 + 1e-7), name
    # A photo without faces: one row with only its name.
    assert [k for k, v in rows[1].items() if v] == ["image"] and rows[0]["error"] == ""
    assert f"wrote {out_csv}" in err
    # Without --recursive only the folder's own photos are read.
    code, out, err = _run(capsys, "detect", photos["folder"], *_model(tiny_model_dir))
    assert code == 0, err
    assert out.splitlines()[0] == f"{photos['face']}: 1 face(s)" and len([ln for ln in out.splitlines() if "face(s)" in ln]) == 1


def test_csv_to_stdout(capsys, photos, tiny_model_dir):
    code, out, err = _run(capsys, "detect", photos["face"], photos["blank"], "--csv", *_model(tiny_model_dir))
    assert code == 0, err
    rows = list(csv.reader(out.splitlines()))
    assert rows[0][:9] == ["image", "face", "score", "angle", "presence", "box_x0", "box_y0", "box_x1", "box_y1"]
    assert rows[0][9:12] == ["left_eye_center_x", "left_eye_center_y", "left_eye_center_confidence"]
    assert rows[0][-1] == "error" and len(rows[0]) == 10 + 3 * len(KEYPOINT_NAMES) and len(rows) == 3
    assert all(len(r) == len(rows[0]) for r in rows)


def test_progress_bar_on_a_terminal_only(photos, tiny_model_dir, monkeypatch, tmp_path):
    """On a terminal the folder's bar redraws one line; piped to a log there is no bar (its
    redrawn line would repeat there), only the summary."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns: a real size
    argv = ["detect", str(photos["folder"]), "-r", *_model(tiny_model_dir)]
    with os.fdopen(follower, "w") as tty:
        assert tty.isatty()
        monkeypatch.setattr("sys.stderr", tty)
        assert main(argv) == 0
    shown = os.read(leader, 1 << 16).decode()
    os.close(leader)
    assert "facekp detect" in shown and "2/2" in shown
    log = tmp_path / "log.txt"
    with log.open("w") as file:
        monkeypatch.setattr("sys.stderr", file)
        assert main(argv) == 0
    assert log.read_text() == "facekp: 1 face(s) in 2 photo(s)\n"


def test_draw_folder(capsys, photos, tiny_model_dir, tmp_path):
    outdir = tmp_path / "drawn"
    code, _, err = _run(capsys, "detect", photos["folder"], "-r", "--draw", outdir, *_model(tiny_model_dir))
    assert code == 0, err
    for rel, size in (("hopper_faces.png", (192, 225)), ("sub/blank_faces.png", (100, 120))):
        with Image.open(outdir / rel) as im:
            assert im.size == size and im.mode == "RGB"
    # Existing drawings are kept unless --force.
    before = (outdir / "hopper_faces.png").read_bytes()
    code, _, err = _run(capsys, "detect", photos["face"], "--draw", outdir, *_model(tiny_model_dir))
    assert code == 2 and "exists" in err and "--force" in err
    code, _, err = _run(capsys, "detect", photos["face"], "--draw", outdir, "--force", *_model(tiny_model_dir))
    assert code == 0, err
    assert (outdir / "hopper_faces.png").read_bytes() == before  # same drawing again


@pytest.mark.parametrize("force", [False, True])
def test_outputs_never_replace_inputs(capsys, photos, tiny_model_dir, force):
    folder = photos["folder"]
    victim = folder / "hopper_faces.png"  # a photo named like the drawing of hopper.jpg
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(victim)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    extra = ["--force"] if force else []
    code, _, err = _run(capsys, "detect", folder, "--draw", folder, *extra, *_model(tiny_model_dir))
    assert code == 2 and "input" in err
    code, _, err = _run(capsys, "detect", photos["face"], "--json", photos["face"], *extra, *_model(tiny_model_dir))
    assert code == 2 and "input" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_existing_table_needs_force(capsys, photos, tiny_model_dir, tmp_path):
    out_json = tmp_path / "faces.json"
    out_json.write_text("keep")
    code, _, err = _run(capsys, "detect", photos["face"], "--json", out_json, *_model(tiny_model_dir))
    assert code == 2 and "--force" in err and out_json.read_text() == "keep"
    code, _, err = _run(capsys, "detect", photos["face"], "--json", out_json, "--force", *_model(tiny_model_dir))
    assert code == 0, err
    assert len(json.loads(out_json.read_text())[0]["faces"]) == 1


def test_output_path_mistakes_are_refused_before_any_work(capsys, photos, tiny_model_dir, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    a_folder = tmp_path / "outdir"
    a_folder.mkdir()
    for argv, says in [
        (["--draw", a_file], "notes.txt is a file, not a folder"),
        (["--draw", a_file / "drawings"], "notes.txt is a file, not a folder"),
        (["--json", a_folder, "--force"], "outdir is a folder"),
        (["--csv", a_folder, "--force"], "outdir is a folder"),
        (["--csv", a_file / "faces.csv", "--force"], "notes.txt is a file, not a folder"),
    ]:
        code, _, err = _run(capsys, "detect", photos["folder"], *argv, *_model(tiny_model_dir))
        assert code == 2 and err.startswith("facekp: error:") and says in err, (argv, err)
        assert "facekp detect" not in err  # no progress bar: refused before reading any photo
    assert a_file.read_text() == "keep" and not any(a_folder.iterdir())


def test_os_errors_are_one_line_errors(capsys, photos, tiny_model_dir, tmp_path):
    too_long = tmp_path / ("x" * 300 + ".json")  # the OS refuses the name itself
    code, _, err = _run(capsys, "detect", photos["face"], "--json", too_long, *_model(tiny_model_dir))
    assert code == 2 and err.startswith("facekp: error:") and "too long" in err and len(err.splitlines()) == 1


def test_unreadable_photos_are_skipped_and_reported(capsys, photos, tiny_model_dir, tmp_path):
    broken = photos["folder"] / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out_json = tmp_path / "faces.json"
    code, _, err = _run(capsys, "detect", photos["folder"], "--json", out_json, *_model(tiny_model_dir))
    assert code == 2 and "skipping" in err and "broken.jpg" in err and "could not be read" in err
    # The rest is written; the unreadable photo is listed with the reason, in JSON and in CSV.
    found = {Path(r["image"]).name: r for r in json.loads(out_json.read_text())}
    assert sorted(found) == ["broken.jpg", "hopper.jpg"] and len(found["hopper.jpg"]["faces"]) == 1
    assert list(found["broken.jpg"]) == ["image", "error"] and "cannot read" in found["broken.jpg"]["error"]
    out_csv = tmp_path / "faces.csv"
    code, _, err = _run(capsys, "detect", photos["folder"], "--csv", out_csv, *_model(tiny_model_dir))
    assert code == 2
    with out_csv.open(newline="") as f:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    assert rows["broken.jpg"]["error"] == found["broken.jpg"]["error"]
    assert [k for k, v in rows["broken.jpg"].items() if v] == ["image", "error"] and rows["hopper.jpg"]["face"] == "0"


def test_a_fifo_in_a_folder_is_reported_without_being_opened(capsys, tiny_model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(sample_photo()).save(folder / "hopper.png")
    fifo = hostile.make_fifo(folder / "x.jpg")  # os.mkfifo: opening it for reading would block forever
    out_json, out_csv = tmp_path / "faces.json", tmp_path / "faces.csv"
    with hostile.deadline():  # a hang fails the test
        runs = [_run(capsys, "detect", folder, fmt, out, *_model(tiny_model_dir))
                for fmt, out in (("--json", out_json), ("--csv", out_csv))]
    for code, _, err in runs:
        assert code == 2
        skipped = [line for line in err.splitlines() if line.startswith("facekp: skipping")]
        assert len(skipped) == 1 and skipped[0].startswith(f"facekp: skipping {fifo}: ") and "not a regular file" in skipped[0]
        assert err.splitlines()[-1] == f"facekp: error: 1 file(s) could not be read as images: {fifo}"
    found = {Path(r["image"]).name: r for r in json.loads(out_json.read_text())}
    assert sorted(found) == ["hopper.png", "x.jpg"] and len(found["hopper.png"]["faces"]) == 1
    assert list(found["x.jpg"]) == ["image", "error"] and "not a regular file" in found["x.jpg"]["error"]
    with out_csv.open(newline="") as f:
        rows = {Path(r["image"]).name: r for r in csv.DictReader(f)}
    assert rows["x.jpg"]["error"] == found["x.jpg"]["error"]
    assert [k for k, v in rows["x.jpg"].items() if v] == ["image", "error"] and rows["hopper.png"]["face"] == "0"


def test_bad_inputs(capsys, tmp_path, tiny_model_dir):
    code, _, err = _run(capsys, "detect", tmp_path / "missing.jpg", *_model(tiny_model_dir))
    assert code == 2 and "missing.jpg" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "detect", tmp_path / "empty", *_model(tiny_model_dir))
    assert code == 2 and "no photos" in err


# -- options, with the bundled trained model ------------------------------------------------
@pytest.fixture(scope="module")
def bundled() -> Detector:
    return Detector(device="cpu")


def _points(face: dict) -> np.ndarray:
    return np.array([[v["x"], v["y"]] for v in face["keypoints"].values()])


def test_max_faces_keeps_the_largest(capsys, tmp_path, bundled):
    # Three copies of the portrait pasted left to right at decreasing sizes: three faces.
    image, regions = group_photo((0.5, 0.3, 0.2), size=(580, 300))
    path = tmp_path / "group.png"
    Image.fromarray(image).save(path)
    code, out, err = _run(capsys, "detect", path, "--json", "--device", "cpu")
    assert code == 0, err
    assert len(json.loads(out)[0]["faces"]) == 3
    code, out, err = _run(capsys, "detect", path, "--json", "--max-faces", "1", "--device", "cpu")
    assert code == 0, err
    (face,) = json.loads(out)[0]["faces"]
    cx, cy = (face["box"][0] + face["box"][2]) / 2, (face["box"][1] + face["box"][3]) / 2
    x0, y0, x1, y1 = regions[0]  # the largest copy is the leftmost
    assert x0 < cx < x1 and y0 < cy < y1
    expected = bundled.detect(path)[0]
    np.testing.assert_allclose(face["box"], expected.box, atol=0.005 + 1e-9)
    np.testing.assert_allclose(_points(face), expected.points, atol=5e-4 + 1e-6)
    assert "1 face(s) in 1 photo(s)" in err


def test_refine_option(capsys, photos, bundled):
    found = {}
    for argv in ([], ["--refine", "0"], ["--refine", "1"]):
        code, out, err = _run(capsys, "detect", photos["face"], "--json", *argv, "--device", "cpu")
        assert code == 0, err
        (face,) = json.loads(out)[0]["faces"]
        found[tuple(argv)] = _points(face)
    refine0 = bundled.detect(photos["face"], refine=0)[0].points
    refine1 = bundled.detect(photos["face"], refine=1)[0].points
    assert np.abs(refine0 - refine1).max() > 0.1  # re-framing moves the points (far beyond rounding)
    np.testing.assert_allclose(found[("--refine", "0")], refine0, atol=5e-4 + 1e-6)
    np.testing.assert_allclose(found[("--refine", "1")], refine1, atol=5e-4 + 1e-6)
    np.testing.assert_allclose(found[()], refine1, atol=5e-4 + 1e-6)  # the default is one pass
