"""Detector.from_pretrained against a loopback fake Hub (tests/hub_server.py), through the real
huggingface_hub client: no network, no mocks of facekp or of huggingface_hub.

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE into ``huggingface_hub.constants`` when it
is imported, and its download code reads those module attributes at call time
(``constants.HUGGINGFACE_CO_URL_TEMPLATE``, ``constants.is_offline_mode()``). So setting the
environment variables here would be too late; the tests patch the attributes instead (and set
the variables too, for anything spawned). Every test uses its own cache_dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants as hf_constants

from facekp import ChecksumError, Detector, WeightsError
from facekp.weights import sha256_file
from hub_server import FakeHub, git_blob_sha1

REPO = "facekp-test/tiny"


def _set_offline(monkeypatch, offline: bool) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")


@pytest.fixture
def model_files(tiny_model_dir) -> dict[str, bytes]:
    return {name: (tiny_model_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}


def _start_hub(monkeypatch, model_files, lfs_redirect=False, weights_lfs=True) -> FakeHub:
    hub = FakeHub(lfs_redirect=lfs_redirect).start()
    hub.add_repo(REPO, model_files, lfs={"model.safetensors"} if weights_lfs else set())
    hub.add_repo("facekp-test/config-only", {"config.json": model_files["config.json"]})
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # never send a real token anywhere
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _set_offline(monkeypatch, False)
    return hub


@pytest.fixture
def hub(monkeypatch, model_files):
    hub = _start_hub(monkeypatch, model_files)
    yield hub
    hub.stop()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hf-cache"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, make_face):
    images = [make_face(64, 56, seed=4).astype(np.float32), make_face(40, 48, seed=5).astype(np.float32)]
    return images, Detector(tiny_model_dir, device="cpu").predict_batch(images)


def _cached_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if (p.is_file() or p.is_symlink()) and ".locks" not in p.parts)


def _assert_plain_http_only(hub: FakeHub) -> None:
    """The client made nothing but HEAD/GET on /resolve (or the CDN): no xet, no API calls."""
    assert hub.requests, "the fake Hub saw no request"
    for r in hub.requests:
        assert r.method in ("HEAD", "GET"), r
        assert "/resolve/" in r.path or r.path.startswith("cdn:/lfs/"), r
        assert "Range" not in r.headers, r  # nothing to resume
        assert not any(h.lower().startswith("x-xet") for h in r.headers), r


# -- success --------------------------------------------------------------------------------
@pytest.mark.parametrize("lfs_redirect", [False, True], ids=["direct", "lfs-302-to-cdn"])
def test_from_pretrained_downloads_and_predicts(monkeypatch, model_files, cache, reference, lfs_redirect):
    hub = _start_hub(monkeypatch, model_files, lfs_redirect=lfs_redirect)
    try:
        det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    finally:
        hub.stop()
    images, expected = reference
    np.testing.assert_array_equal(det.predict_batch(images), expected)
    _assert_plain_http_only(hub)
    gets = [r.path for r in hub.requests if r.method == "GET"]
    assert len(gets) == 2  # config.json and model.safetensors, once each
    if lfs_redirect:
        assert any(p.startswith("cdn:/lfs/") for p in gets)
    # The standard cache layout: blobs named by their Hub hash.
    sha256 = hashlib.sha256(model_files["model.safetensors"]).hexdigest()
    blobs = cache / "models--facekp-test--tiny" / "blobs"
    assert (blobs / sha256).read_bytes() == model_files["model.safetensors"]
    assert (blobs / git_blob_sha1(model_files["config.json"])).exists()
    # The user agent names facekp.
    assert all("facekp" in r.headers.get("user-agent", "") for r in hub.requests)


def test_second_load_uses_the_cache(hub, cache, reference):
    Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    n_gets = sum(r.method == "GET" for r in hub.requests)
    det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    assert sum(r.method == "GET" for r in hub.requests) == n_gets  # only HEADs the second time
    np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])


def test_offline_from_cache(hub, cache, reference, monkeypatch):
    Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    hub.stop()
    n = len(hub.requests)
    _set_offline(monkeypatch, True)
    det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])
    # Not offline, but the Hub is unreachable: the cached revision is used too.
    _set_offline(monkeypatch, False)
    det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])
    assert len(hub.requests) == n


def test_offline_without_cache_says_so(hub, cache, monkeypatch):
    _set_offline(monkeypatch, True)
    with pytest.raises(WeightsError, match=r"(?s)facekp-test/tiny is not in the local cache.*offline"):
        Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    assert hub.requests == []


# -- missing things -------------------------------------------------------------------------
def test_missing_repo(hub, cache):
    with pytest.raises(WeightsError, match=r"facekp-test/nope@main has no facekp model") as info:
        Detector.from_pretrained("facekp-test/nope", cache_dir=cache, device="cpu")
    assert "Repository Not Found" in str(info.value)


def test_missing_file(hub, cache):
    with pytest.raises(WeightsError, match=r"(?s)facekp-test/config-only@main has no facekp model.*Entry Not Found.*model.safetensors"):
        Detector.from_pretrained("facekp-test/config-only", cache_dir=cache, device="cpu")


def test_missing_revision(hub, cache):
    with pytest.raises(WeightsError, match=r"(?s)facekp-test/tiny@v9 has no facekp model.*Revision Not Found"):
        Detector.from_pretrained(REPO, revision="v9", cache_dir=cache, device="cpu")


def test_explicit_commit_revision(hub, cache, reference):
    commit = hub.repos[REPO].commit
    det = Detector.from_pretrained(REPO, revision=commit, cache_dir=cache, device="cpu")
    np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])
    assert all(f"/resolve/{commit}/" in r.path for r in hub.requests)


# -- tampering ------------------------------------------------------------------------------
def _flip_one_byte(data: bytes) -> bytes:
    tampered = bytearray(data)
    tampered[-7] ^= 0x40  # in the tensor data: still a valid safetensors file, same size
    return bytes(tampered)


@pytest.mark.parametrize("weights_lfs", [True, False], ids=["lfs-sha256", "git-sha1"])
def test_tampered_download_raises_checksum_error_and_is_evicted(monkeypatch, model_files, cache, reference, weights_lfs):
    hub = _start_hub(monkeypatch, model_files, weights_lfs=weights_lfs)
    try:
        hub.tamper(REPO, "model.safetensors", _flip_one_byte(model_files["model.safetensors"]))
        with pytest.raises(ChecksumError, match=r"facekp-test/tiny/model.safetensors.*differs.*corrupt or tampered"):
            Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
        # The corrupt file is gone from the cache: neither the snapshot entry nor the blob remain.
        left = _cached_files(cache)
        assert not any(p.endswith("model.safetensors") for p in left), left
        good_hash = hashlib.sha256(model_files["model.safetensors"]).hexdigest() if weights_lfs else git_blob_sha1(model_files["model.safetensors"])
        assert not any(p.endswith(good_hash) for p in left), left
        # ... so once the Hub serves the right bytes again, the same call succeeds.
        hub.untamper()
        det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
        np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])
    finally:
        hub.stop()


@pytest.mark.parametrize("weights_lfs", [True, False], ids=["lfs-sha256", "git-sha1"])
def test_cache_without_symlinks_is_verified_against_the_hub(monkeypatch, model_files, cache, reference, weights_lfs):
    import huggingface_hub.file_download

    # Windows without Developer Mode: huggingface_hub moves files into the snapshot instead of
    # linking them to hash-named blobs, so the cache keeps no hash of them.
    monkeypatch.setattr(huggingface_hub.file_download, "are_symlinks_supported", lambda *args, **kwargs: False)
    hub = _start_hub(monkeypatch, model_files, weights_lfs=weights_lfs)
    try:
        det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
        np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])
        snapshot = next(cache.rglob("snapshots/*/model.safetensors"))
        assert not snapshot.is_symlink() and not list(cache.rglob("blobs/*"))
        snapshot.write_bytes(_flip_one_byte(model_files["model.safetensors"]))  # altered on disk since
        with pytest.raises(ChecksumError, match="corrupt or tampered"):
            Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
        assert not snapshot.exists()
        Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")  # downloaded again, verified
    finally:
        hub.stop()
    _set_offline(monkeypatch, True)  # offline there is nothing to check against: refused, not loaded unverified
    with pytest.raises(WeightsError, match="keeps files without symlinks.*Load it while online"):
        Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")


def test_download_of_the_wrong_size_raises_weights_error(hub, cache, model_files, reference):
    # huggingface_hub itself notices a size different from X-Linked-Size; facekp reports it as a
    # WeightsError like every other weights problem, and nothing is left in the cache.
    hub.tamper(REPO, "model.safetensors", model_files["model.safetensors"][:-100])
    with pytest.raises(WeightsError, match=r"(?s)downloading facekp-test/tiny@main failed.*size"):
        Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    assert not any("model.safetensors" in p or p.endswith(".incomplete") for p in _cached_files(cache))
    hub.untamper()
    det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])


def test_tampered_config_is_caught_by_loading(hub, cache):
    # config.json is not hash-checked by facekp, but a wrong one cannot load silently.
    hub.tamper(REPO, "config.json", b'{"format_version": 1, "architecture": "stacked_hourglass"}'.ljust(len(hub.repos[REPO].files["config.json"])))
    with pytest.raises(WeightsError, match="invalid facekp model config"):
        Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")


# -- manifest-pinned repositories -----------------------------------------------------------
def _pinned_entry(hub, model_files, sha256=None) -> dict:
    weights = model_files["model.safetensors"]
    return {
        "name": "tiny-hub",
        "file": "tiny-hub.safetensors",
        "sha256": sha256 or hashlib.sha256(weights).hexdigest(),
        "size": len(weights),
        "config": {},
        "bundled": False,
        "repo_id": REPO,
        "revision": hub.repos[REPO].commit,
    }


def test_manifest_pinned_repo(hub, cache, model_files, tiny_manifest, reference):
    tiny_manifest([_pinned_entry(hub, model_files)], default=None)
    det = Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    np.testing.assert_array_equal(det.predict_batch(reference[0]), reference[1])
    commit = hub.repos[REPO].commit
    assert all(f"/resolve/{commit}/" in r.path for r in hub.requests)  # the pinned revision, not main
    # A manifest model that is not bundled points to from_pretrained.
    with pytest.raises(WeightsError, match=r"from_pretrained\('facekp-test/tiny'\)"):
        Detector("tiny-hub")


def test_manifest_pinned_repo_checks_the_manifest_hash(hub, cache, model_files, tiny_manifest):
    # The Hub serves self-consistent bytes (they match its ETag), but not the published ones.
    tiny_manifest([_pinned_entry(hub, model_files, sha256="ab" * 32)], default=None)
    with pytest.raises(ChecksumError, match=r"differs from the published abab"):
        Detector.from_pretrained(REPO, cache_dir=cache, device="cpu")
    assert not any(p.endswith("model.safetensors") for p in _cached_files(cache))


_SUBPROCESS = """
import json, sys
import numpy as np
from facekp import Detector
images = [np.load(p) for p in sys.argv[2:]]
det = Detector.from_pretrained(sys.argv[1], device="cpu")
print(json.dumps(det.predict_batch(images).tolist()))
"""


def test_environment_variables_in_a_fresh_process(hub, tmp_path, reference):
    # The documented route: HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE set before Python starts.
    paths = []
    for i, img in enumerate(reference[0]):
        paths.append(str(tmp_path / f"img{i}.npy"))
        np.save(paths[-1], img)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "env-cache"), HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1", FACEKP_TEST_THREADS="1", OMP_NUM_THREADS="1")

    def run(extra_env):
        result = subprocess.run([sys.executable, "-c", _SUBPROCESS, REPO, *paths], env={**env, **extra_env},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return np.array(json.loads(result.stdout), dtype=np.float32)

    np.testing.assert_allclose(run({}), reference[1], atol=1e-3)
    assert any(r.method == "GET" for r in hub.requests)
    assert (tmp_path / "env-cache" / "models--facekp-test--tiny").is_dir()
    hub.stop()
    np.testing.assert_allclose(run({"HF_HUB_OFFLINE": "1"}), reference[1], atol=1e-3)


def test_weights_sha_matches_fixture(model_files, tiny_weights):
    # Sanity check of the fixture the tests above rely on.
    assert hashlib.sha256(model_files["model.safetensors"]).hexdigest() == sha256_file(tiny_weights)
    assert os.path.getsize(tiny_weights) == len(model_files["model.safetensors"])


# -- one resolver for every way of naming weights ---------------------------------------------
def test_from_pretrained_takes_a_local_folder_without_the_network(tiny_model_dir, face_u8, monkeypatch):
    _set_offline(monkeypatch, True)  # a folder is read from disk: no Hub request could succeed
    det = Detector.from_pretrained(tiny_model_dir, device="cpu")
    np.testing.assert_array_equal(det.predict(face_u8), Detector(tiny_model_dir, device="cpu").predict(face_u8))


def test_resolve_weights_reads_each_form(tiny_model_dir, tiny_weights, tiny_manifest):
    from facekp.weights import resolve_weights

    by_folder, by_file = resolve_weights(tiny_model_dir), resolve_weights(tiny_weights)
    by_name, default = resolve_weights("tiny"), resolve_weights(None)
    assert by_folder.entry is None and by_file.entry is None
    assert by_name.entry.name == default.entry.name == "tiny"
    assert by_folder.config == by_file.config == by_name.config == default.config
    for other in (by_file, by_name, default):
        for name, tensor in by_folder.model.state_dict().items():
            assert (other.model.state_dict()[name] == tensor).all(), name
    with pytest.raises(FileNotFoundError, match="weights not found"):
        resolve_weights("no/such/folder")
    with pytest.raises(WeightsError, match="no model named 'nope'"):
        resolve_weights("nope")
