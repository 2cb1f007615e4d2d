"""Issue 14, case by case: nothing the user owns is lost, nothing hangs, every bad input gets a clear
error, no NaN/inf point comes back. Each test is one finding of the fuzz run that filed the issue."""

from __future__ import annotations

import csv
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import hostile
from facekp import BoxCalibration, Detector, HaarFaceDetector, InvalidImageError, WeightsError, draw
from facekp.cli import main as cli_main
from facekp.config import DetectorConfig
from facekp.model import HourglassConfig
from facekp.train.cli import main as train_main
from facekp.train.data import load_kaggle_csv, load_pts_folder
from facekp.train.fit import FitConfig, Trainer
from facekp.video import track_video
from facekp.weights import load_model
from synthetic import write_kaggle_csv, write_pts_folder


def _cli(capsys, main, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str, prog: str = "facekp") -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def kaggle_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kaggle") / "training.csv"
    write_kaggle_csv(path, 24, seed=0)
    return path


def _fit_args(data, out, *extra) -> list:
    return ["fit", "--data", data, "--out", out, "--epochs", "1", "--batch-size", "8", "--stacks", "1", "--depth", "2",
            "--channels", "8", "--device", "cpu", "--val-fraction", "0.25", *extra]


# -- data loss -----------------------------------------------------------------------------
def test_eval_json_never_replaces_the_data_nor_an_existing_file(capsys, kaggle_csv, tiny_model_dir, tmp_path):
    before = kaggle_csv.read_bytes()
    args = ["eval", "--weights", tiny_model_dir, "--data", kaggle_csv, "--split", "all", "--device", "cpu"]
    code, err = _cli(capsys, train_main, *args, "--json", kaggle_csv, "--force")
    assert code == 2 and "one of the input" in _one_error_line(err, "facekp-train") and kaggle_csv.read_bytes() == before
    report = tmp_path / "report.json"
    report.write_text("mine")
    code, err = _cli(capsys, train_main, *args, "--json", report)
    assert code == 2 and "--force" in _one_error_line(err, "facekp-train") and report.read_text() == "mine"
    assert _cli(capsys, train_main, *args, "--json", report, "--force")[0] == 0
    assert "canonical" in json.loads(report.read_text())


def test_eval_plots_never_replace_existing_pictures(capsys, kaggle_csv, tiny_model_dir, tmp_path):
    plots = tmp_path / "docs"
    plots.mkdir()
    (plots / "val-errors.png").write_bytes(b"the repository's picture")
    args = ["eval", "--weights", tiny_model_dir, "--data", kaggle_csv, "--split", "all", "--device", "cpu", "--plots", plots]
    code, err = _cli(capsys, train_main, *args)
    assert code == 2 and "val-errors.png exists" in _one_error_line(err, "facekp-train")
    assert (plots / "val-errors.png").read_bytes() == b"the repository's picture"
    assert not (plots / "val-predictions.png").exists()  # refused before any work


def test_fit_never_replaces_an_existing_curves_png(capsys, kaggle_csv, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "curves.png").write_bytes(b"my curves")
    code, err = _cli(capsys, train_main, *_fit_args(kaggle_csv, out))
    assert code == 2 and "curves.png" in _one_error_line(err, "facekp-train")
    assert (out / "curves.png").read_bytes() == b"my curves" and not (out / "train.log").exists()


def test_export_onnx_never_replaces_its_own_weights(capsys, tiny_weights, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(tiny_weights.read_bytes())
    code, err = _cli(capsys, cli_main, "export-onnx", weights, "--weights", weights, "--force")
    assert code == 2 and "one of the input" in _one_error_line(err)
    assert weights.read_bytes() == tiny_weights.read_bytes()


def test_save_pretrained_writes_whole_files_and_refuses_to_replace(detector, tmp_path):
    folder = detector.save_pretrained(tmp_path / "m")
    with pytest.raises(FileExistsError):
        detector.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temporary leftovers


# -- hangs and crashes: files --------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(hostile.BOMBS))
def test_decompression_bombs_are_invalid_images(tmp_path, detector, kind):
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(hostile.BOMBS[kind]())
    with pytest.raises(InvalidImageError, match="pixels"):
        detector.predict(path)
    with pytest.raises(InvalidImageError, match="pixels"):
        detector.predict_batch([path])


def test_an_image_just_over_the_pixel_limit_is_refused_from_its_header(tmp_path, detector):
    path = tmp_path / "big.png"
    path.write_bytes(hostile.png_bomb(13_000))  # 169 MP: under PIL's own bomb limit, over facekp's
    with pytest.raises(InvalidImageError, match="accepts up to"):
        detector.predict(path)


def test_detect_folder_skips_bombs_fifos_and_truncated_files(capsys, tmp_path, tiny_model_dir, face_u8):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(face_u8).resize((160, 128)).save(photos / "good.png")
    (photos / "bomb.png").write_bytes(hostile.png_bomb())
    (photos / "cut.jpg").write_bytes(hostile.truncated_jpeg())
    hostile.make_fifo(photos / "pipe.jpg")
    out = tmp_path / "faces.csv"
    with hostile.deadline():
        code, err = _cli(capsys, cli_main, "detect", photos, "--csv", out, "--weights", tiny_model_dir, "--device", "cpu")
    assert code == 2 and "3 file(s) could not be read" in _one_error_line(err)
    for name in ("bomb.png", "cut.jpg", "pipe.jpg"):
        assert f"skipping {photos / name}" in err  # the FIFO too, refused without being opened
    rows = list(csv.DictReader(out.open()))  # the documented layout: an unreadable photo is a row with its error
    assert [(r["image"], bool(r["error"])) for r in rows] == [
        (str(photos / "bomb.png"), True), (str(photos / "cut.jpg"), True), (str(photos / "good.png"), False),
        (str(photos / "pipe.jpg"), True)]


def test_a_fifo_named_like_an_image_is_refused_at_once(tmp_path, detector, capsys, tiny_model_dir):
    fifo = hostile.make_fifo(tmp_path / "x.jpg")
    with hostile.deadline():
        with pytest.raises(InvalidImageError, match="not a regular file"):
            detector.predict(fifo)
        code, err = _cli(capsys, cli_main, "predict", fifo, "--weights", tiny_model_dir, "--device", "cpu")
        assert code == 2 and "not a regular file" in _one_error_line(err)
        code, err = _cli(capsys, cli_main, "detect", fifo, "--weights", tiny_model_dir, "--device", "cpu")
    assert code == 2 and f"skipping {fifo}" in err and "1 file(s) could not be read" in _one_error_line(err)


def test_predict_cli_reports_and_skips_a_bad_file_among_several(capsys, tmp_path, face_png, tiny_model_dir):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(hostile.png_bomb())
    code = cli_main(["predict", str(face_png), str(bomb), "--json", "--weights", str(tiny_model_dir), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and f"skipping {bomb}" in err and "1 file(s) could not be read" in _one_error_line(err)
    assert [r["image"] for r in json.loads(out)] == [str(face_png)]


def test_long_names_and_unreadable_folders_get_clear_errors(tmp_path, detector):
    with pytest.raises(InvalidImageError, match="too long"):
        detector.predict(tmp_path / ("a" * 300 + ".jpg"))
    if os.geteuid() == 0:
        pytest.skip("root reads every folder; the permission case needs an ordinary user")
    locked = tmp_path / "locked"
    locked.mkdir()
    Image.new("L", (16, 16)).save(locked / "face.png")
    locked.chmod(0)
    try:
        with pytest.raises(InvalidImageError, match="permission denied"):
            detector.predict(locked / "face.png")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(32, 32, device="meta"),
    lambda: torch.complex(torch.rand(32, 32), torch.rand(32, 32)),
    lambda: torch.complex(torch.rand(32, 32), torch.rand(32, 32)).conj(),
    lambda: torch.rand(32, 32)._neg_view(),
    lambda: torch.rand(32, 32).to_sparse(),
])
def test_odd_tensors_are_invalid_images(detector, make):
    with pytest.raises(InvalidImageError):
        detector.predict(make())


def test_real_valued_lazy_views_still_work(detector):
    t = torch.rand(40, 40)
    np.testing.assert_allclose(detector.predict(t._neg_view().neg()), detector.predict(t), atol=1e-5)


# -- hangs and crashes: configs ------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("num_stacks", 2**31), ("blocks", 10**6), ("channels", 10**6),
                                          ("input_size", 96000), ("depth", 40)])
def test_huge_architectures_are_refused_before_building(field, value, tiny_model_dir, tmp_path):
    with hostile.deadline(5):
        with pytest.raises(ValueError, match=field):
            HourglassConfig(**{field: value})
        folder = tmp_path / "m"
        folder.mkdir()
        config = json.loads((tiny_model_dir / "config.json").read_text())
        config["hourglass"][field] = value
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
        with pytest.raises(WeightsError, match=f"{folder / 'config.json'}.*{field}"):
            load_model(folder)


@pytest.mark.parametrize("sigma", [1e300, float("nan"), float("inf"), 0.0, -1.0, "1"])
def test_bad_sigma_is_refused(sigma):
    with pytest.raises((ValueError, TypeError), match="sigma"):
        DetectorConfig(sigma=sigma)


@pytest.mark.parametrize("box_to_frame", ["haar", 3, [0.3], {"offset": [0, 0]}, {"scale": "x"}, {"scale": 0.3, "offset": [1]}])
def test_bad_box_to_frame_is_refused_when_the_config_is_read(box_to_frame, tiny_config):
    data = tiny_config.to_dict() | {"box_to_frame": box_to_frame}
    with pytest.raises((ValueError, TypeError), match="calibration"):
        DetectorConfig.from_dict(data)


@pytest.mark.parametrize("text", [b"\xff\xfe{ not utf-8 \x80", b"[" * 100_000 + b"]" * 100_000, b"{}", b"[1, 2]"])
def test_unreadable_config_json_names_its_file(text, tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_bytes(text)
    (folder / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match=str(folder / "config.json")):
        load_model(folder)


# -- ONNX files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory, tiny_model_dir) -> Path:
    pytest.importorskip("onnxruntime")
    from facekp.onnx import export_onnx

    return export_onnx(tmp_path_factory.mktemp("graph") / "tiny.onnx", Detector(tiny_model_dir, device="cpu"))


def _with_metadata(graph: Path, out: Path, value: str | None) -> Path:
    import onnx

    proto = onnx.load(str(graph))
    props = [(p.key, p.value) for p in proto.metadata_props if p.key != "facekp_config"]
    del proto.metadata_props[:]
    for key, v in props + ([("facekp_config", value)] if value is not None else []):
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, v
    out.write_bytes(proto.SerializeToString())
    return out


@pytest.mark.parametrize("value", ["not json", '{"format_version": 1}', "[]", '{"format_version": 1, "architecture": '
                                   '"stacked_hourglass", "hourglass": {"channels": 1e9}}'])
def test_onnx_files_with_bad_embedded_configs_are_weights_errors(value, tiny_graph, tiny_model_dir, tmp_path):
    graph = _with_metadata(tiny_graph, tmp_path / "bad.onnx", value)
    with pytest.raises(WeightsError, match="bad.onnx"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=graph)


def test_empty_wrong_output_and_wrong_size_onnx_files_are_weights_errors(tiny_model_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.onnx"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=empty)
    x = helper.make_tensor_value_info("crops", TensorProto.FLOAT, ["N", 1, 96, 96])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 96, 96])
    identity = tmp_path / "identity.onnx"
    identity.write_bytes(helper.make_model(helper.make_graph([helper.make_node("Identity", ["crops"], ["out"])], "g", [x], [y]),
                                           opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(WeightsError, match="outputs"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=identity)
    from facekp.onnx import onnx_bytes
    from facekp.model import StackedHourglass

    small = tmp_path / "small.onnx"
    small.write_bytes(onnx_bytes(StackedHourglass(HourglassConfig(num_stacks=1, channels=16, input_size=64)).eval()))
    with pytest.raises(WeightsError, match=r"\(N, 1, 96, 96\)"):
        Detector(tiny_model_dir, device="cpu", backend="onnx", onnx_model=small)


# -- boxes, calibrations, angles, detectors ------------------------------------------------
@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)


@pytest.mark.parametrize("box, says", [
    ([[0, 0, 1e-300, 1e-300]], "smaller than"), ([[0, 0, 1e-320, 1e-320]], "smaller than"),
    ([[0, 0, 1e300, 1e300]], "longer side"), ([[500, 500, 560, 560]], "outside"), ([[-90, 10, -60, 40]], "outside"),
])
def test_boxes_the_image_cannot_frame_are_refused(detector, photo, box, says):
    with pytest.raises(ValueError, match=says):
        detector.detect(photo, boxes=box)


def test_a_face_detector_s_boxes_outside_the_image_are_dropped(detector, photo, monkeypatch):
    def detector_with_one_stray(image):
        return np.array([[20.0, 20, 80, 80], [400, 400, 460, 460]]), np.array([5.0, 9.0])

    monkeypatch.setattr(detector, "face_check", None)  # the photo's synthetic face is not what the check knows

    faces = detector.detect(photo, face_detector=detector_with_one_stray)
    assert [f.box for f in faces] == [(20.0, 20.0, 80.0, 80.0)] and np.isfinite(faces[0].points).all()


@pytest.mark.parametrize("angle", [np.nan, np.inf])
def test_non_finite_angles_from_a_face_detector_are_refused(detector, photo, angle):
    with pytest.raises(ValueError, match="angles"):
        detector.detect(photo, face_detector=lambda im: (np.array([[20.0, 20, 80, 80]]), np.ones(1), np.array([angle])))


@pytest.mark.parametrize("calibration", [{"scale": 1e-300}, {"scale": 1e300}, {"scale": 0.3, "offset": [np.nan, 0]},
                                         {"scale": 0.3, "offset": [0, np.inf]}, {"scale": 0.3, "offset": [0.1]}])
def test_bad_calibrations_are_refused(detector, photo, calibration):
    with pytest.raises(ValueError, match="calibration"):
        detector.detect(photo, boxes=[[20, 20, 80, 80]], calibration=calibration)
    with pytest.raises(ValueError, match="calibration"):
        BoxCalibration.from_dict(calibration)


@pytest.mark.parametrize("kwargs, says", [({"angles": (np.nan,)}, "angles"), ({"scale_factor": np.nan}, "scale_factor"),
                                          ({"min_size": 10**12}, "min_size"), ({"min_neighbors": -1}, "min_neighbors")])
def test_haar_settings_are_checked(kwargs, says):
    with pytest.raises(ValueError, match=says):
        HaarFaceDetector(**kwargs)


def test_refine_and_face_detector_are_checked_even_when_no_face_is_found(detector, photo):
    with pytest.raises(TypeError, match="refine must be an integer"):
        detector.detect(photo, refine="2")
    with pytest.raises(ValueError, match="refine"):
        detector.detect(photo, boxes=np.empty((0, 4)), refine=-1)
    with pytest.raises(TypeError, match="face_detector must be one of .* a callable"):
        detector.detect(photo, face_detector=5)


def test_from_pretrained_and_weights_arguments_are_checked():
    with pytest.raises(TypeError, match="Hub repository id"):
        Detector.from_pretrained(None)
    with pytest.raises(TypeError, match="weights must be"):
        Detector(5)


@pytest.mark.parametrize("source, error", [(-1, ValueError), (True, TypeError), (1.5, TypeError)])
def test_track_video_refuses_bad_camera_indices(detector, source, error):
    with pytest.raises(error, match="camera index|video source"):
        next(track_video(source, detector))


# -- draw ----------------------------------------------------------------------------------
def test_draw_survives_far_points_and_refuses_bad_radii_and_mixed_lists(detector, photo):
    far = np.full((15, 2), 1e9)
    assert (draw(photo, far) == draw(photo, np.full((15, 2), -1e6))).all()  # nothing drawn, no overflow
    face = detector.detect(photo, boxes=[[20, 20, 80, 80]])[0]
    assert draw(photo, [face], radius=1e9).shape == (120, 160, 3)
    for radius in (np.nan, np.inf, -1):
        with pytest.raises(ValueError, match="radius"):
            draw(photo, far, radius=radius)
    with pytest.raises(ValueError, match="mixing"):
        draw(photo, [face, far])


# -- weights -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_of_the_wrong_dtype_are_refused(dtype, tiny_weights, tmp_path):
    from safetensors import safe_open

    state = load_file(str(tiny_weights))
    with safe_open(str(tiny_weights), "pt") as f:
        meta = f.metadata()
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match=str(dtype)):
        load_model(bad)


def test_a_nan_sigma_in_the_weights_is_refused(tiny_weights, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny_weights), "pt") as f:
        meta = f.metadata()
    config = json.loads(meta["facekp_config"]) | {"sigma": float("nan")}
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(tiny_weights)), str(bad), metadata={"facekp_config": json.dumps(config)})
    with pytest.raises(WeightsError, match="sigma"):
        load_model(bad)


# -- facekp-train ----------------------------------------------------------------------------
def test_a_csv_field_over_the_csv_limit_is_one_clear_line(capsys, kaggle_csv, tmp_path):
    data = tmp_path / "training.csv"
    data.write_text(kaggle_csv.read_text().splitlines()[0] + "\n" + "1," * 30 + '"' + "9 " * 70_000 + '"\n')
    code, err = _cli(capsys, train_main, *_fit_args(data, tmp_path / "run"))
    assert code == 2 and "field larger than field limit" in _one_error_line(err, "facekp-train")
    assert f"{data}, line" in err


def test_pts_folder_skips_corrupt_and_truncated_images_and_bad_labels(tmp_path):
    write_pts_folder(tmp_path, 6, seed=1)
    (tmp_path / "a" / "face1.png").write_bytes(hostile.truncated_jpeg())
    (tmp_path / "b" / "face2.png").write_bytes(hostile.png_bomb())
    (tmp_path / "b" / "face4.png").write_bytes(hostile.garbage())
    pts = tmp_path / "a" / "face3.pts"
    lines = pts.read_text().splitlines()
    lines[3 + 30] = "1e300 1e300"  # the nose tip (iBUG point 30), after the 3 header lines
    pts.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 4 unreadable face") as caught:
        samples = load_pts_folder(tmp_path)
    assert sorted(s.name for s in samples) == [str(Path("a") / "face5.png"), str(Path("b") / "face0.png")]
    message = next(str(w.message) for w in caught if "skipped" in str(w.message))
    assert all(n in message for n in ("face1.png", "face2.png", "face3.png", "face4.png"))


def test_index_csv_without_identity_is_a_clear_error(tmp_path):
    write_pts_folder(tmp_path, 2)
    (tmp_path / "index.csv").write_text("image,subset\na/face1.png,a\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['identity'\]"):
        load_pts_folder(tmp_path)


@pytest.mark.parametrize("labels, says", [("nan", "fewer than two"), ("inf", "finite"), ("same", "one spot"),
                                          ("1e300", "far outside")])
def test_training_refuses_unusable_labels_up_front(tmp_path, labels, says):
    data = tmp_path / "training.csv"
    write_kaggle_csv(data, 8)
    header, *rows = data.read_text().splitlines()
    cells = {"nan": ["nan"] * 30, "inf": ["inf"] * 30, "same": ["40"] * 30, "1e300": ["1e300"] * 30}[labels]
    data.write_text("\n".join([header] + [",".join(cells + [r.rsplit(",", 1)[1]]) for r in rows]) + "\n")
    with pytest.raises(ValueError, match=says):
        load_kaggle_csv(data)
    with pytest.raises(ValueError, match=says):
        Trainer(FitConfig(data=str(data), out=str(tmp_path / "run"), hourglass=HourglassConfig(num_stacks=1, channels=8)))


@pytest.mark.parametrize("point, says", [("50 50", "one spot"), ("nan nan", "NaN"), ("inf -inf", "infinite"),
                                         ("1e300 1e300", "NaN or infinite|far outside")])
def test_pts_labels_that_cannot_be_trained_on_leave_no_faces_to_train(tmp_path, point, says):
    write_pts_folder(tmp_path, 3)
    for pts in tmp_path.rglob("*.pts"):
        pts.write_text("version: 1\nn_points: 68\n{\n" + f"{point}\n" * 68 + "}\n")
    with pytest.warns(UserWarning, match=says), pytest.raises(ValueError, match="no annotated faces.*3 skipped"):
        load_pts_folder(tmp_path)


def test_a_non_finite_loss_stops_training_with_a_clear_error(kaggle_csv, tmp_path):
    trainer = Trainer(FitConfig(data=str(kaggle_csv), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                                hourglass=HourglassConfig(num_stacks=1, depth=2, channels=8), val_fraction=0.25))
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("inf"))  # what a diverging run ends in
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        trainer.fit()


def test_resume_from_garbage_or_a_hostile_pickle_is_a_clear_error_and_runs_nothing(capsys, kaggle_csv, tmp_path):
    run = tmp_path / "run"
    assert train_main([str(a) for a in _fit_args(kaggle_csv, run, "--max-steps", "1")]) == 0
    capsys.readouterr()
    (run / "last.pt").write_bytes(hostile.garbage())
    code, err = _cli(capsys, train_main, *_fit_args(kaggle_csv, run, "--max-steps", "2", "--resume"))
    assert code == 2 and "not a readable facekp-train checkpoint" in _one_error_line(err, "facekp-train")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Payload()}, run / "last.pt")  # pickled through torch's zip format
    code, err = _cli(capsys, train_main, *_fit_args(kaggle_csv, run, "--max-steps", "2", "--resume"))
    assert code == 2 and "checkpoint" in _one_error_line(err, "facekp-train") and not marker.exists()
    (run / "last.pt").write_bytes(pickle.dumps(Payload()))  # a bare pickle
    code, err = _cli(capsys, train_main, *_fit_args(kaggle_csv, run, "--max-steps", "2", "--resume"))
    assert code == 2 and not marker.exists()


@pytest.mark.parametrize("extra, says", [(["--batch-size", "0"], "batch_size"), (["--sigma", "nan"], "sigma"),
                                         (["--lr", "inf"], "lr"), (["--epochs", "0"], "epochs")])
def test_fit_settings_are_one_line_errors(capsys, kaggle_csv, tmp_path, extra, says):
    code, err = _cli(capsys, train_main, *_fit_args(kaggle_csv, tmp_path / "run"), *extra)
    assert code == 2 and says in _one_error_line(err, "facekp-train") and not (tmp_path / "run").exists()


def test_fit_init_from_a_garbage_file_is_a_one_line_error(capsys, kaggle_csv, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 10**12) + hostile.garbage())
    code, err = _cli(capsys, train_main, *_fit_args(kaggle_csv, tmp_path / "run"), "--init", junk)
    assert code == 2 and "junk.safetensors" in _one_error_line(err, "facekp-train")


@pytest.mark.parametrize("kind", sorted(hostile.BOMBS))
def test_batch_rows_refuse_bombed_bytes_with_an_error_row(kind, tiny_model_dir):
    """Bytes (as ray.data.read_binary_files gives them) go through the same checks as files: a bomb
    or a truncated photo is a row with its error, never a PIL exception that fails the Ray job."""
    from facekp.batch import FaceKeypoints

    mapper = FaceKeypoints(weights=str(tiny_model_dir), device="cpu")
    with hostile.deadline():
        bomb = mapper.rows(hostile.BOMBS[kind](), f"bomb.{kind}")
        cut = mapper.rows(hostile.truncated_jpeg(), "cut.jpg")
    assert len(bomb) == 1 and "decompression bomb" in bomb[0]["error"]
    assert len(cut) == 1 and cut[0]["error"] and cut[0]["image"] == "cut.jpg"
