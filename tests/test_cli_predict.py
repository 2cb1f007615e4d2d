"""The ``facekp predict`` command line (in-process through ``facekp.cli.main``, plus one subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facekp
from facekp import KEYPOINT_NAMES
from facekp.cli import main


@pytest.fixture
def images(tmp_path, face_u8, make_face) -> list[Path]:
    a = tmp_path / "a.png"
    b = tmp_path / "b.jpg"
    Image.fromarray(face_u8).save(a)
    Image.fromarray(np.round(make_face(50, 70, seed=9) * 255).astype(np.uint8)).convert("RGB").save(b, quality=95)
    return [a, b]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _model_args(tiny_model_dir):
    return ["--weights", str(tiny_model_dir), "--device", "cpu"]


def test_version_subprocess():
    script = Path(sys.executable).with_name("facekp")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "facekp.cli"]
    result = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"facekp {facekp.__version__}"


def test_table_output(capsys, images, tiny_model_dir, detector):
    code, out, err = _run(capsys, "predict", images[0], *_model_args(tiny_model_dir))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(images[0])
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == list(KEYPOINT_NAMES)
    expected, confidence = detector.predict(images[0], return_confidence=True)
    table = np.array([[float(v) for v in r[1:]] for r in rows])
    np.testing.assert_allclose(table[:, :2], expected, atol=0.005 + 1e-6)
    np.testing.assert_allclose(table[:, 2], confidence, atol=0.005 + 1e-6)


def test_json_output(capsys, images, tiny_model_dir, detector):
    code, out, err = _run(capsys, "predict", images[0], "--json", *_model_args(tiny_model_dir))
    assert code == 0, err
    result = json.loads(out)
    assert result["image"] == str(images[0])
    assert list(result["keypoints"]) == list(KEYPOINT_NAMES)
    points = np.array([[v["x"], v["y"]] for v in result["keypoints"].values()])
    np.testing.assert_allclose(points, detector.predict(images[0]), atol=5e-4 + 1e-6)  # 0.001 px rounding
    assert all(0 <= v["confidence"] <= 1 for v in result["keypoints"].values())


def test_json_several_images(capsys, images, tiny_model_dir, detector):
    code, out, err = _run(capsys, "predict", *images, "--json", *_model_args(tiny_model_dir))
    assert code == 0, err
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r, path in zip(results, images):
        assert len(r["keypoints"]) == 15
        points = np.array([[v["x"], v["y"]] for v in r["keypoints"].values()])
        np.testing.assert_allclose(points, detector.predict(path), atol=5e-4 + 1e-6)


def test_draw_writes_png_of_the_input_size(capsys, images, tiny_model_dir, tmp_path, detector):
    out_png = tmp_path / "out" / "drawn.png"
    code, out, err = _run(capsys, "predict", images[1], "--draw", out_png, "--names", *_model_args(tiny_model_dir))
    assert code == 0, err
    assert f"wrote {out_png}" in err
    with Image.open(out_png) as im:
        assert im.format == "PNG" and im.size == (50, 70) and im.mode == "RGB"
        drawn = np.asarray(im)
    with Image.open(images[1]) as im:
        photo = np.asarray(im.convert("RGB"))
    assert not np.array_equal(drawn, photo)  # something was drawn
    # Without --names: the same points, unlabelled, so another picture.
    plain_png = tmp_path / "out" / "plain.png"
    code, _, err = _run(capsys, "predict", images[1], "--draw", plain_png, *_model_args(tiny_model_dir))
    assert code == 0, err
    with Image.open(plain_png) as im:
        plain = np.asarray(im)
    assert plain.shape == drawn.shape and not np.array_equal(plain, drawn)
    # Each is facekp.draw of the photo and its predicted points, with names or without.
    points = detector.predict(images[1])
    np.testing.assert_array_equal(plain, facekp.draw(photo, points, names=False))
    np.testing.assert_array_equal(drawn, facekp.draw(photo, points, names=True))


def test_draw_several_images(capsys, images, tiny_model_dir, tmp_path):
    code, _, err = _run(capsys, "predict", *images, "--draw", tmp_path / "d.png", *_model_args(tiny_model_dir))
    assert code == 0, err
    for src, size in zip(images, [(80, 64), (50, 70)]):
        with Image.open(tmp_path / f"d_{src.stem}.png") as im:
            assert im.size == size


def test_draw_refuses_to_overwrite_without_force(capsys, images, tiny_model_dir, tmp_path):
    target = tmp_path / "exists.png"
    target.write_bytes(b"keep me")
    code, out, err = _run(capsys, "predict", images[0], "--draw", target, *_model_args(tiny_model_dir))
    assert code == 2
    assert "exists" in err and "--force" in err
    assert target.read_bytes() == b"keep me"
    code, _, err = _run(capsys, "predict", images[0], "--draw", target, "--force", *_model_args(tiny_model_dir))
    assert code == 0, err
    with Image.open(target) as im:
        assert im.size == (80, 64)


@pytest.mark.parametrize("force", [False, True])
def test_draw_never_writes_onto_an_input(capsys, images, tiny_model_dir, force):
    before = [p.read_bytes() for p in images]
    extra = ["--force"] if force else []
    code, _, err = _run(capsys, "predict", images[0], "--draw", images[0], *extra, *_model_args(tiny_model_dir))
    assert code == 2 and "one of the input images" in err
    # With several inputs the drawing of one must not land on another either: d_b.png...
    collide = images[0].with_name("d_b.png")
    shutil.copy(images[0], collide)
    code, _, err = _run(capsys, "predict", images[1], collide, "--draw", images[0].with_name("d.png"), *extra,
                        *_model_args(tiny_model_dir))
    assert code == 2 and "one of the input images" in err
    assert [p.read_bytes() for p in images] == before
    assert collide.read_bytes() == before[0]


def test_draw_onto_a_folder_or_under_a_file_is_refused(capsys, images, tiny_model_dir, tmp_path):
    folder = tmp_path / "out.png"
    folder.mkdir()
    code, _, err = _run(capsys, "predict", images[0], "--draw", folder, "--force", *_model_args(tiny_model_dir))
    assert code == 2 and err.startswith("facekp: error:") and "out.png is a folder" in err
    code, _, err = _run(capsys, "predict", images[0], "--draw", images[1] / "d.png", *_model_args(tiny_model_dir))
    assert code == 2 and err.startswith("facekp: error:") and "b.jpg is a file, not a folder" in err
    assert not any(folder.iterdir())


def test_draw_refuses_two_inputs_with_the_same_name(capsys, tiny_model_dir, tmp_path, face_u8):
    # a/face.png and b/face.png would both be drawn to d_face.png: refused up front, nothing written.
    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        paths.append(tmp_path / sub / "face.png")
        Image.fromarray(face_u8).save(paths[-1])
    code, _, err = _run(capsys, "predict", *paths, "--draw", tmp_path / "d.png", "--force", *_model_args(tiny_model_dir))
    assert code == 2 and "several input images would be drawn to" in err
    assert not (tmp_path / "d_face.png").exists()


def test_missing_image_exits_2(capsys, tmp_path, tiny_model_dir):
    code, out, err = _run(capsys, "predict", tmp_path / "missing.png", *_model_args(tiny_model_dir))
    assert code == 2
    assert out == ""
    assert err.startswith("facekp: error:") and "missing.png" in err and "not found" in err


def test_unreadable_image_exits_2(capsys, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    code, _, err = _run(capsys, "predict", bad, *_model_args(tiny_model_dir))
    assert code == 2 and "cannot read" in err and "bad.png" in err


def test_bad_weights_and_device_exit_2(capsys, images, tmp_path, tiny_model_dir):
    code, _, err = _run(capsys, "predict", images[0], "--weights", tmp_path / "nope.safetensors", "--device", "cpu")
    assert code == 2 and "weights not found" in err
    code, _, err = _run(capsys, "predict", images[0], "--weights", tiny_model_dir, "--device", "gpu")
    assert code == 2 and "invalid device" in err


def test_backend_and_precision_options(capsys, images, tiny_model_dir, detector):
    pytest.importorskip("onnxruntime")
    code, out, err = _run(capsys, "predict", images[0], "--json", "--backend", "onnx", *_model_args(tiny_model_dir))
    assert code == 0, err
    points = np.array([[v["x"], v["y"]] for v in json.loads(out)["keypoints"].values()])
    np.testing.assert_allclose(points, detector.predict(images[0]), atol=1e-3)
    # The tiny model is a folder, not a manifest model: it has no bundled int8 graph, which is said clearly.
    code, _, err = _run(capsys, "predict", images[0], "--backend", "onnx", "--precision", "int8", *_model_args(tiny_model_dir))
    assert code == 2 and "int8 ONNX graph" in err
    code, _, err = _run(capsys, "predict", images[0], "--precision", "int8", *_model_args(tiny_model_dir))
    assert code == 2 and "int8 ONNX graph" in err  # --precision int8 alone picks the onnx backend
    code, _, err = _run(capsys, "predict", images[0], "--backend", "torch", "--precision", "int8", *_model_args(tiny_model_dir))
    assert code == 2 and "backend='onnx'" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["predict"])  # no image
    assert info.value.code == 2
    assert "images" in capsys.readouterr().err


def test_predict_and_detect_json_agree(capsys, images, tiny_model_dir, tmp_path):
    """One JSON form of keypoints: the same keys and the same rounding in predict and detect."""
    code, out, err = _run(capsys, "predict", images[0], "--json", *_model_args(tiny_model_dir))
    assert code == 0, err
    predicted = json.loads(out)["keypoints"]
    face = tmp_path / "face.png"
    Image.fromarray(np.asarray(Image.open(images[0]).convert("RGB")).repeat(3, 0).repeat(3, 1)).save(face)
    code, out, err = _run(capsys, "detect", face, "--json", *_model_args(tiny_model_dir))
    assert code == 0, err
    found = json.loads(out)[0]["faces"]
    for keypoints in [predicted] + [f["keypoints"] for f in found]:
        assert list(keypoints) == list(KEYPOINT_NAMES)
        for v in keypoints.values():
            assert list(v) == ["x", "y", "confidence"]
            assert round(v["x"], 3) == v["x"] and round(v["y"], 3) == v["y"] and round(v["confidence"], 4) == v["confidence"]
    # Full floats would carry float32 noise: at least one of 15 x 3 values shows that rounding happened.
    assert any(len(repr(v["x"]).split(".")[1]) == 3 for v in predicted.values())
    for f in found:
        assert all(round(b, 3) == b for b in f["box"]) and round(f["score"], 4) == f["score"]
