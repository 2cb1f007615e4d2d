"""Model files: loading errors, the manifest and bundled weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from facekp import ChecksumError, Detector, WeightsError
from facekp.config import DetectorConfig
from facekp.model import HourglassConfig
from facekp.weights import (
    ManifestEntry,
    default_entry,
    find_entry,
    load_bundled,
    load_model,
    manifest_entries,
    put_manifest_entry,
    save_model,
    read_manifest,
    sha256_file,
)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _write(path, state, config: DetectorConfig | dict | None):
    meta = None
    if config is not None:
        data = config.to_dict() if isinstance(config, DetectorConfig) else config
        meta = {"facekp_config": json.dumps(data)}
    save_file(state, str(path), metadata=meta)
    return path


# -- the default / bundled model ------------------------------------------------------------
def test_the_real_manifest_matches_the_bundled_files():
    """Each bundled file of the shipped manifest is installed with its published size and sha256, and
    the default model loads from it with the recorded config. (What it predicts on a real face is
    tested in test_shipped_model.py.)"""
    manifest = read_manifest()
    assert manifest["format_version"] == 1
    entries = manifest_entries()
    default = default_entry()
    assert default.name == manifest["default"] and default.bundled
    for entry in entries:
        if not entry.bundled:
            continue
        files = [(entry.path, entry.size, entry.sha256)]
        for graph in (entry.fp32_onnx, entry.int8_onnx):
            if graph:
                files.append((entry.path.with_name(graph["file"]), graph["size"], graph["sha256"]))
        for path, size, sha256 in files:
            assert path.stat().st_size == size and sha256_file(path) == sha256.lower(), path
    _, config = load_bundled(default)
    assert config.to_dict() == default.config


def test_an_entry_put_into_a_linked_manifest_replaces_its_namesake_and_keeps_the_link(tmp_path):
    target = tmp_path / "weights_manifest.json"
    target.write_text(json.dumps({"format_version": 1, "models": [], "face_checks": [{"name": "a", "v": 1}]}))
    link = tmp_path / "package_manifest.json"
    link.symlink_to(target.name)
    put_manifest_entry(link, "face_checks", {"name": "a", "v": 2})
    put_manifest_entry(link, "face_checks", {"name": "b", "v": 1})
    put_manifest_entry(link, "face_finders", {"name": "f"})
    assert link.is_symlink() and read_manifest(link) == read_manifest(target)
    assert read_manifest(target) == {"format_version": 1, "models": [],
                                     "face_checks": [{"name": "a", "v": 2}, {"name": "b", "v": 1}],
                                     "face_finders": [{"name": "f"}]}


def test_a_manifest_without_a_default_says_what_to_do(tiny_manifest):
    tiny_manifest(default=None)
    with pytest.raises(WeightsError, match="ships no trained default weights") as info:
        Detector()
    assert "Detector(weights=" in str(info.value) and "from_pretrained" in str(info.value)
    assert Detector("tiny", device="cpu").config.hourglass.channels == 16  # named models still load


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(WeightsError, match=r"no model named 'no-such-model'.*known"):
        Detector("no-such-model")


def test_missing_weights_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Detector(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="weights not found"):
        Detector(str(tmp_path / "dir" / "model.safetensors"))
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")


def test_bundled_default_from_manifest(tiny_manifest, tiny_model_dir, face_u8):
    entry = default_entry()
    assert entry.name == "tiny" and entry.bundled
    model, config = load_bundled(entry)
    assert config.hourglass == HourglassConfig(num_stacks=1, channels=16)
    ref = Detector(tiny_model_dir, device="cpu").predict(face_u8)
    np.testing.assert_array_equal(Detector(device="cpu").predict(face_u8), ref)  # weights=None: the default
    np.testing.assert_array_equal(Detector("tiny", device="cpu").predict(face_u8), ref)  # by name


def test_bundled_checksum_mismatch(tiny_manifest, tiny_weights):
    entry = find_entry("tiny")
    bad = ManifestEntry(**{**entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChecksumError, match=r"sha256 [0-9a-f]{64} differs from the published 0{64}"):
        load_bundled(bad)
    # ChecksumError is a WeightsError, and Detector() on a corrupt default raises it too.
    tiny_manifest([{**bad.__dict__}])
    with pytest.raises(WeightsError, match="corrupt or tampered"):
        Detector()


def test_bundled_checksum_is_case_insensitive(tiny_manifest):
    entry = find_entry("tiny")
    load_bundled(ManifestEntry(**{**entry.__dict__, "sha256": entry.sha256.upper()}))


def test_bundled_corrupt_file_same_size(tiny_manifest, tiny_weights, tmp_path):
    # A bit flip in the tensor data: the sha256 catches what the safetensors parser cannot.
    corrupt = tmp_path / "corrupt.safetensors"
    data = bytearray(tiny_weights.read_bytes())
    data[-10] ^= 0x01
    corrupt.write_bytes(bytes(data))
    entry = ManifestEntry(**{**find_entry("tiny").__dict__, "file": str(corrupt)})
    with pytest.raises(ChecksumError, match="bundled weights"):
        load_bundled(entry)


def test_bundled_entry_not_bundled_or_missing(tiny_manifest, tmp_path):
    entry = find_entry("tiny")
    remote = ManifestEntry(**{**entry.__dict__, "bundled": False, "repo_id": "facekp/tiny"})
    with pytest.raises(WeightsError, match=r"not bundled.*from_pretrained\('facekp/tiny'\)"):
        load_bundled(remote)
    missing = ManifestEntry(**{**entry.__dict__, "file": str(tmp_path / "gone.safetensors")})
    with pytest.raises(WeightsError, match="missing from the installed package"):
        load_bundled(missing)


def test_manifest_default_naming_an_unknown_model(tiny_manifest):
    tiny_manifest(default="other")
    with pytest.raises(WeightsError, match="no model named 'other'"):
        Detector()


# -- broken weight files --------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, corrupt",
    [
        ("truncated to half", lambda b: b[: len(b) // 2]),
        ("truncated by one byte", lambda b: b[:-1]),
        ("header only", lambda b: b[:8]),
        ("empty", lambda b: b""),
        ("random bytes", lambda b: np.random.default_rng(0).bytes(len(b))),
        ("garbage header", lambda b: (100).to_bytes(8, "little") + np.random.default_rng(1).bytes(400)),
    ],
)
def test_unreadable_weights_raise_weights_error(tiny_weights, tmp_path, name, corrupt):
    path = tmp_path / "model.safetensors"
    path.write_bytes(corrupt(tiny_weights.read_bytes()))
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        Detector(path, device="cpu")
    # The same through a save_pretrained folder.
    shutil.copy(tiny_weights.parent / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        Detector(tmp_path, device="cpu")


def test_pickle_is_never_loaded(tmp_path, make_model):
    path = tmp_path / "model.safetensors"
    torch.save(make_model().state_dict(), path)  # a pickle with the right name
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        Detector(path, device="cpu")


def test_weights_of_another_architecture(tmp_path, make_model, tiny_config):
    # The metadata says 16 channels, the tensors are 32 channels wide.
    wide = make_model(HourglassConfig(num_stacks=1, channels=32))
    path = _write(tmp_path / "wide.safetensors", _state(wide), tiny_config)
    with pytest.raises(WeightsError, match=r"does not fit the architecture.*channels=16.*another architecture"):
        Detector(path, device="cpu")


def test_folder_config_disagreeing_with_tensors(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir / "model.safetensors", tmp_path)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["hourglass"]["num_stacks"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="does not fit the architecture"):
        Detector(tmp_path, device="cpu")


def test_missing_and_extra_tensors(tmp_path, make_model, tiny_config):
    state = _state(make_model())
    missing = dict(state)
    missing.pop(next(k for k in state if k.startswith("heads.")))
    with pytest.raises(WeightsError, match="does not fit the architecture"):
        load_model(_write(tmp_path / "missing.safetensors", missing, tiny_config))
    extra = {**state, "extra.weight": torch.zeros(3)}
    with pytest.raises(WeightsError, match="does not fit the architecture"):
        load_model(_write(tmp_path / "extra.safetensors", extra, tiny_config))


def test_safetensors_without_facekp_metadata(tmp_path, make_model):
    path = _write(tmp_path / "plain.safetensors", _state(make_model()), None)
    with pytest.raises(WeightsError, match="carries no facekp config.*save_pretrained"):
        Detector(path, device="cpu")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(tmp_path, make_model, tiny_config, bad):
    state = _state(make_model())
    key = next(k for k in state if k.endswith("conv.weight") or k.endswith(".0.weight"))
    state[key].view(-1)[3] = bad
    with pytest.raises(WeightsError, match=r"NaN or infinite values in \[.*\]; the file is corrupt"):
        Detector(_write(tmp_path / "nan.safetensors", state, tiny_config), device="cpu")


def test_folder_missing_a_file(tiny_model_dir, tmp_path):
    shutil.copy(tiny_model_dir / "model.safetensors", tmp_path)
    with pytest.raises(WeightsError, match="config.json is missing"):
        Detector(tmp_path, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(WeightsError, match="model.safetensors is missing"):
        Detector(empty, device="cpu")


@pytest.mark.parametrize(
    "name, edit, match",
    [
        ("not JSON", lambda c: "{", "invalid facekp model config"),
        ("a JSON list", lambda c: "[]", "invalid facekp model config"),
        ("JSON null", lambda c: "null", "invalid facekp model config"),
        ("future format", lambda c: {**c, "format_version": 2}, "format_version 2 is not supported"),
        ("other architecture", lambda c: {**c, "architecture": "resnet"}, "unknown architecture 'resnet'"),
        ("other keypoints", lambda c: {**c, "keypoint_names": c["keypoint_names"][::-1]}, "keypoint_names"),
        ("other normalization", lambda c: {**c, "normalization": "imagenet"}, "unknown normalization"),
        ("unknown hourglass key", lambda c: {**c, "hourglass": {**c["hourglass"], "width": 2}}, "unknown hourglass config keys"),
        ("bad stride", lambda c: {**c, "hourglass": {**c["hourglass"], "heatmap_stride": 3}}, "heatmap_stride"),
        ("float channels", lambda c: {**c, "hourglass": {**c["hourglass"], "channels": 16.5}}, "channels"),
        ("string depth", lambda c: {**c, "hourglass": {**c["hourglass"], "depth": "3"}}, "depth"),
        ("missing sigma", lambda c: {k: v for k, v in c.items() if k != "sigma"}, "sigma"),
    ],
)
def test_invalid_config_json(tiny_model_dir, tmp_path, name, edit, match):
    shutil.copy(tiny_model_dir / "model.safetensors", tmp_path)
    config = edit(json.loads((tiny_model_dir / "config.json").read_text()))
    (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(WeightsError, match=match):
        Detector(tmp_path, device="cpu")


def test_invalid_config_in_metadata(tmp_path, make_model, tiny_config):
    data = {**tiny_config.to_dict(), "format_version": 99}
    with pytest.raises(WeightsError, match=r"metadata.*format_version 99"):
        load_model(_write(tmp_path / "m.safetensors", _state(make_model()), data))


def test_sha256_file(tmp_path):
    import hashlib

    p = tmp_path / "x.bin"
    data = np.random.default_rng(0).bytes(3 << 20)  # more than one read chunk
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_save_model_refuses_a_config_of_another_architecture(tmp_path):
    from facekp.model import StackedHourglass

    model = StackedHourglass(HourglassConfig(num_stacks=1, channels=16))
    wrong = DetectorConfig(hourglass=HourglassConfig(num_stacks=1, channels=32))
    with pytest.raises(ValueError, match="do not match the architecture"):
        save_model(model, wrong, tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()
