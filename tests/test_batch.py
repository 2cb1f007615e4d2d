"""Batch inference on a real local Ray cluster: face rows equal to ``Detector.detect``, and ``facekp batch``."""

from __future__ import annotations

import csv
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from facekp import KEYPOINT_NAMES, ChecksumError, Detector, FacekpError
from facekp.batch import COLUMNS, FaceKeypoints, detect_dataset, list_photos
from facekp.cli import main
from facekp.data import group_photo, sample_photo

ray = pytest.importorskip("ray", reason="needs facekp[ray]")
pq = pytest.importorskip("pyarrow.parquet", reason="needs facekp[ray]")


@pytest.fixture(scope="module")
def cluster() -> str:
    """One local Ray for the module (2 CPUs, no dashboard); its address for ``--address``."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    """A portrait (one face), a group photo (three), a face-free photo and a corrupt JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    paths = {k: folder / f"{k}.{ext}" for k, ext in (("portrait", "jpg"), ("group", "jpg"), ("empty", "png"),
                                                      ("corrupt", "jpg"))}
    Image.fromarray(cv2.resize(sample_photo(), (256, 300), interpolation=cv2.INTER_AREA)).save(paths["portrait"])
    Image.fromarray(group_photo()[0]).save(paths["group"], quality=92)
    Image.fromarray(np.tile(np.linspace(40, 200, 320).astype(np.uint8), (240, 1))).save(paths["empty"])
    paths["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 this is not the rest of a JPEG")
    return paths


def _by_photo(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["image"], []).append(r)
    return out


def _assert_rows_match_detect(rows: list[dict], photos: dict, det: Detector, face_detector: str | None = None) -> None:
    """Every readable photo's rows are its ``detect`` faces (points within 1e-4 px), in order."""
    got = _by_photo(rows)
    assert set(got) == {str(p) for p in photos.values()}
    (bad,) = got[str(photos["corrupt"])]
    assert bad["error"] and "cannot read" in bad["error"] and bad["width"] is None and bad["face"] is None
    (empty,) = got[str(photos["empty"])]
    assert (empty["width"], empty["height"], empty["face"], empty["error"]) == (320, 240, None, None)
    for key in ("portrait", "group"):
        faces = det.detect(photos[key], face_detector=face_detector)
        assert len(faces) == (1 if key == "portrait" else 3)
        mine = got[str(photos[key])]
        assert [r["face"] for r in mine] == list(range(len(faces)))
        width, height = Image.open(photos[key]).size
        for r, f in zip(mine, faces):
            assert (r["width"], r["height"], r["error"]) == (width, height, None)
            assert (r["score"], r["angle"], r["presence"]) == (f.score, f.angle, f.presence)
            np.testing.assert_allclose([r[f"box_{c}"] for c in ("x0", "y0", "x1", "y1")], f.box, atol=1e-9)
            points = np.array([[r[f"{n}_x"], r[f"{n}_y"]] for n in KEYPOINT_NAMES])
            np.testing.assert_allclose(points, f.points, atol=1e-4, rtol=0)
            np.testing.assert_allclose([r[f"{n}_confidence"] for n in KEYPOINT_NAMES], f.confidence, atol=1e-6)


def test_map_batches_gives_detect_rows_for_paths_and_bytes(cluster, photos):
    """The bundled model on two actors, from paths and from read_binary_files' bytes."""
    det = Detector(device="cpu")
    paths = ray.data.from_items([{"image": str(p)} for p in photos.values()])
    rows = detect_dataset(paths, "image", workers=2, batch_size=2, device="cpu").take_all()
    assert list(rows[0]) == [name for name, _ in COLUMNS]
    _assert_rows_match_detect(rows, photos, det)
    files = ray.data.read_binary_files([str(p) for p in photos.values()], include_paths=True)
    rows = detect_dataset(files, "bytes", path_column="path", workers=1, batch_size=4, device="cpu").take_all()
    _assert_rows_match_detect(rows, photos, det)


def test_arrays_in_a_batch_and_a_tampered_weights_file(tiny_model_dir, detector, photos, tmp_path):
    rgb = np.asarray(Image.open(photos["portrait"]))
    fk = FaceKeypoints("pixels", "name", str(tiny_model_dir), device="cpu", face_detector="haar")  # tiny net: no presence
    pixels = np.empty(2, object)  # a ragged column, as Ray gives arrays of several shapes
    pixels[:] = [rgb, rgb[:, :, 0]]
    table = fk({"pixels": pixels, "name": np.array(["colour", "gray"])}).to_pylist()
    assert [(r["image"], r["width"], r["height"], r["face"]) for r in table] == [("colour", 256, 300, 0), ("gray", 256, 300, 0)]
    np.testing.assert_allclose([[r[f"{n}_x"], r[f"{n}_y"]] for n in KEYPOINT_NAMES for r in table[:1]],
                               detector.detect(rgb, face_detector="haar")[0].points, atol=1e-4)
    with pytest.raises(ChecksumError, match="differs from the published"):
        FaceKeypoints(weights=str(tiny_model_dir), sha256="0" * 64, device="cpu")
    with pytest.raises(ValueError, match="max_faces must be None or an integer >= 0"):
        FaceKeypoints(weights=str(tiny_model_dir), max_faces=-1, device="cpu")


def test_list_photos_from_folders_globs_and_lists(photos, tmp_path):
    folder = photos["portrait"].parent
    assert list_photos([str(folder)]) == sorted(str(p) for p in photos.values())
    assert list_photos([str(folder / "*.png")]) == [str(photos["empty"])]
    listed = folder.parent / f"{folder.name}-list.csv"  # its relative row is taken from the list's folder
    listed.write_text(f"path,note\n{photos['group']},x\n{folder.name}/{photos['empty'].name},y\n")
    assert list_photos([str(listed)]) == [str(photos["group"]), str(photos["empty"])]
    import pyarrow as pa

    pq.write_table(pa.table({"file": [str(photos["group"])]}), tmp_path / "list.parquet")
    with pytest.raises(FacekpError, match="has no 'path' column \\(columns: file\\)"):
        list_photos([str(tmp_path / "list.parquet")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_photos([str(folder / "*.tif")])


def test_facekp_batch_writes_parquet_and_never_replaces_it(cluster, photos, tiny_model_dir, detector, tmp_path, capsys):
    listed = tmp_path / "photos.csv"
    with listed.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path"], *[[str(photos[k])] for k in ("group", "corrupt")]])
    out = tmp_path / "out" / "faces.parquet"
    argv = ["batch", str(photos["portrait"]), str(photos["empty"]), str(listed), "--out", str(out),
            "--weights", str(tiny_model_dir), "--device", "cpu", "--workers", "2", "--batch-size", "1",
            "--face-detector", "haar"]  # the tiny net has no presence score to drop the finder's weaker faces
    run = subprocess.run([sys.executable, "-m", "facekp.cli", *argv, "--address", cluster],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "4 face(s) in 4 photo(s) (1 without faces, 1 unreadable); wrote" in run.stderr
    rows = pq.read_table(out).to_pylist()
    assert [r["image"] for r in rows][:1] == [str(photos["portrait"])]  # input order kept
    _assert_rows_match_detect(rows, photos, detector, "haar")
    before = out.read_bytes()
    assert main(argv) == 2  # refused before Ray starts
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["batch", str(listed), "--out", str(listed), "--force"]) == 2  # never onto its input list
    assert "one of the input images" in capsys.readouterr().err and listed.read_text().startswith("path")


def test_a_fifo_named_like_a_photo_is_an_error_row_not_a_hang(tmp_path, tiny_model_dir):
    from hostile import deadline, make_fifo

    from facekp.data import sample_photo

    Image.fromarray(sample_photo()).save(tmp_path / "hopper.png")
    fifo = make_fifo(tmp_path / "pipe.jpg")
    listed = list_photos([str(tmp_path)])
    assert listed == [str(tmp_path / "hopper.png"), str(fifo)]
    worker = FaceKeypoints(weights=str(tiny_model_dir), device="cpu")
    with deadline(20):
        rows = worker({"image": np.array(listed)}).to_pylist()
    error = [r for r in rows if r["image"] == str(fifo)]
    assert len(error) == 1 and "not a regular file" in error[0]["error"]
    assert all(r["error"] is None for r in rows if r["image"] != str(fifo))
