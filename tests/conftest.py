"""Shared fixtures for the tests.

Most tests use a tiny randomly initialised network (one stack, 16 channels): its outputs are
meaningless as keypoints but deterministic, which is all that round trips and equivalences need,
and it is fast. BatchNorm running statistics and affine parameters are randomised too, so that
BatchNorm folding and save/load are actually exercised. The trained model bundled with the
package is tested where its real outputs matter: test_shipped_model.py (it finds real features)
and test_golden.py (its points stay where they were recorded).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import facekp.weights as weights_module
from facekp import Detector
from facekp.config import DetectorConfig
from facekp.model import HourglassConfig, StackedHourglass
from facekp.weights import WEIGHTS_NAME, save_model, sha256_file

TINY = HourglassConfig(num_stacks=1, channels=16)

ROOT = Path(__file__).resolve().parents[1]
#: The 68-point training data (``$FACEKP_DATA``, else ``../shared/data/faces68`` beside the repository).
DATA = Path(os.environ.get("FACEKP_DATA", ROOT.parent / "shared" / "data" / "faces68"))
#: The folder counts as present only with its ``index.csv``: an empty or half-copied folder skips
#: the tests that need it instead of failing them.
FACES68_AVAILABLE = (DATA / "index.csv").is_file()
requires_faces68 = pytest.mark.skipif(not FACES68_AVAILABLE, reason=f"faces68 data not found at {DATA} (set FACEKP_DATA)")

#: Where the Haar cascade finds the sample portrait's face (x0, y0, x1, y1) in px, found once by hand.
HOPPER_BOX = (154.5, 104.5, 376.5, 326.5)

# The test models are tiny: one intra-op thread is fastest, and avoids OpenMP threads spinning
# against each other when the machine is busy (several times slower with 2 threads on 2 busy
# cores). FACEKP_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("FACEKP_TEST_THREADS", "1")))

# hub_server.py lies beside this file; make it importable whatever pytest's import mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Caches go to a temporary folder of the session, never to ~/.cache.

    ``Detector(backend="onnx")`` caches its export under ``$FACEKP_CACHE``, else
    ``$XDG_CACHE_HOME/facekp``; both point into the session's temporary folder (shared by the tests,
    so an export is still reused between them). Subprocesses the tests start inherit both.
    """
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("FACEKP_CACHE", str(base / "facekp_cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "xdg_cache"))


@pytest.fixture(scope="session")
def faces68() -> Path:
    """The faces68 folder (:data:`DATA`); skips the test when it (or its index.csv) is absent."""
    if not FACES68_AVAILABLE:
        pytest.skip(f"faces68 data not found at {DATA} (set FACEKP_DATA)")
    return DATA


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model


def build_model(config: HourglassConfig = TINY, seed: int = 0) -> StackedHourglass:
    torch.manual_seed(seed)
    return randomize_batchnorm(StackedHourglass(config), seed).eval()


def synthetic_face(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, face-like grayscale image, float64 in [0, 1].

    Evaluated analytically at pixel centres, so it has no sharp edges (resampling it is accurate)
    and the same content at every size.
    """
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.03, 0.03, size=6)
    side = max(width, height)
    # Normalised coordinates of pixel centres; the content is centred and keeps its aspect ratio.
    u = ((np.arange(width) + 0.5) - 0.5 * width) / side + 0.5
    v = ((np.arange(height) + 0.5) - 0.5 * height) / side + 0.5
    u, v = np.meshgrid(u, v)

    def blob(cx, cy, sx, sy):
        return np.exp(-0.5 * (((u - cx) / sx) ** 2 + ((v - cy) / sy) ** 2))

    r = np.sqrt(((u - 0.5) / 0.33) ** 2 + ((v - 0.53) / 0.42) ** 2)
    img = 0.25 + 0.1 * u + 0.4 / (1 + np.exp((r - 1) / 0.06))
    img -= 0.3 * blob(0.36 + jitter[0], 0.43 + jitter[1], 0.05, 0.035)
    img -= 0.3 * blob(0.64 + jitter[2], 0.43 + jitter[1], 0.05, 0.035)
    img += 0.12 * blob(0.5 + jitter[3], 0.58, 0.035, 0.06)
    img -= 0.25 * blob(0.5 + jitter[4], 0.74 + jitter[5], 0.11, 0.025)
    return np.clip(img, 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_face():
    """``make_face(width, height, seed=0)``: :func:`synthetic_face`, float64 in [0, 1]."""
    return synthetic_face


@pytest.fixture(scope="session")
def make_model():
    """``make_model(config=TINY, seed=0)``: a random StackedHourglass in eval mode, BatchNorm randomised."""
    return build_model


@pytest.fixture(scope="session")
def tiny_config() -> DetectorConfig:
    return DetectorConfig(hourglass=TINY)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_config) -> Path:
    """A folder written by ``save_model``: config.json + model.safetensors of the tiny random model."""
    folder = tmp_path_factory.mktemp("tiny_model")
    save_model(build_model(), tiny_config, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_weights(tiny_model_dir) -> Path:
    """The self-describing single ``.safetensors`` file of the tiny model."""
    return tiny_model_dir / WEIGHTS_NAME


@pytest.fixture(scope="session")
def detector(tiny_model_dir) -> Detector:
    return Detector(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def face_u8() -> np.ndarray:
    """A 80x64 (W x H) uint8 grayscale face crop."""
    return to_uint8(synthetic_face(80, 64, seed=1))


@pytest.fixture(scope="session")
def small_photo() -> np.ndarray:
    """The sample portrait at 256x300 (H, W, 3) uint8 RGB: detection is quick on it."""
    import cv2

    from facekp.data import sample_photo

    return cv2.resize(sample_photo(), (256, 300), interpolation=cv2.INTER_AREA)


@pytest.fixture
def face_png(tmp_path, face_u8) -> Path:
    from PIL import Image

    path = tmp_path / "face.png"
    Image.fromarray(face_u8).save(path)
    return path


@pytest.fixture
def tiny_manifest(tmp_path, monkeypatch, tiny_weights):
    """A manifest naming the tiny model ``"tiny"`` as the bundled default, in place of the real one.

    Only the manifest's location changes (``read_manifest`` reads this file when not given a
    path); the entry's ``file`` is absolute, so ``ManifestEntry.path`` (package dir / "weights" /
    file) resolves to it. Returns a function that rewrites the manifest with other entries.
    """
    manifest_path = tmp_path / "weights_manifest.json"
    config = json.loads((tiny_weights.parent / "config.json").read_text())

    def write(models: list[dict] | None = None, default: str | None = "tiny") -> Path:
        if models is None:
            models = [{
                "name": "tiny",
                "file": str(tiny_weights),
                "sha256": sha256_file(tiny_weights),
                "size": tiny_weights.stat().st_size,
                "config": config,
            }]
        manifest_path.write_text(json.dumps({"format_version": 1, "default": default, "models": models}))
        return manifest_path

    write()
    original = weights_module.read_manifest
    monkeypatch.setattr(weights_module, "read_manifest", lambda path=None: original(path or manifest_path))
    entry = weights_module.find_entry("tiny")
    assert entry.path == tiny_weights, "ManifestEntry.path no longer resolves absolute files; adapt this fixture"
    return write


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """``import onnxruntime`` fails for the test's duration, as on an install without it."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def tamper_bundled_graphs(monkeypatch, graph: Path, tmp_path: Path) -> None:
    """Every bundled ``.onnx`` file is read from a copy of ``graph`` with its last bit flipped (a file changed
    after it was published); the other bundled files stay themselves."""
    tampered = tmp_path / graph.name
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    real_path = weights_module.bundled_path
    monkeypatch.setattr(weights_module, "bundled_path", lambda f: tampered if f.endswith(".onnx") else real_path(f))
