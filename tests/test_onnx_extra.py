"""Exporting without the ``onnx`` extra: ``facekp export-onnx`` and :func:`facekp.onnx.export_onnx`
refuse up front with one line that names the missing package and how to install it, and write nothing.

Each case runs in a subprocess where ``import onnx`` fails as it does when the package is not
installed (an import hook placed before anything else is imported); test_onnx.py covers exports
with it installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Runs first in the subprocess: ``onnx`` and its submodules cannot be found, as when not installed.
NO_ONNX = """
import sys


class NoOnnx:
    def find_spec(self, name, path=None, target=None):
        if name == "onnx" or name.startswith("onnx."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoOnnx())
"""

MISSING = "exporting to ONNX needs the onnx package (import onnx failed: No module named 'onnx'); "
INSTALL = 'install it with: pip install "facekp[onnx]"'


def _without_onnx(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` after :data:`NO_ONNX` in a fresh Python that imports this checkout's facekp."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", NO_ONNX + code, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_cli_export_onnx_refuses_without_onnx(tiny_model_dir, tmp_path):
    out = tmp_path / "model.onnx"
    run = _without_onnx("from facekp.cli import main\nsys.exit(main(sys.argv[1:]))",
                        "export-onnx", str(out), "--weights", str(tiny_model_dir), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.splitlines() == [f"facekp: error: {MISSING}{INSTALL}"]
    assert run.stdout == ""
    assert list(tmp_path.iterdir()) == []  # neither model.onnx nor a temporary file


def test_export_onnx_refuses_without_onnx(tiny_model_dir, tmp_path):
    out = tmp_path / "model.onnx"
    code = """
import facekp
from facekp.onnx import export_onnx

print(facekp.__file__)
try:
    export_onnx(sys.argv[1], sys.argv[2])
except ImportError as exc:
    print(exc)
"""
    run = _without_onnx(code, str(out), str(tiny_model_dir), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    where, message = run.stdout.splitlines()
    assert Path(where).is_relative_to(ROOT)  # the code under test, not another install
    assert message == MISSING + INSTALL
    assert list(tmp_path.iterdir()) == []


def test_a_plain_install_runs_the_bundled_graphs_and_falls_back_to_torch_for_others(tiny_model_dir, tmp_path,
                                                                                     monkeypatch):
    """A plain install (onnxruntime, no onnx) runs the bundled networks' own ONNX graphs; a network
    without one (the tiny model, a finder passed in) runs on torch with ``"auto"``, and asking for
    ``"onnx"`` outright is the one-line ImportError."""
    code = """
from facekp import Detector
from facekp.data import sample_photo
from facekp.finder import FaceFinder
from facekp.finder_weights import load_finder

print(FaceFinder().backend, Detector(device="cpu").backend, Detector(device="cpu", backend="auto").backend)
print(len(Detector(device="cpu").detect(sample_photo(), face_detector="facekp", min_score=0.05, min_presence=0)) > 0)
bundled = load_finder()
print(FaceFinder(bundled.model, bundled.calibration).backend, Detector(sys.argv[1], device="cpu", backend="auto").backend)
for make in (lambda: FaceFinder(bundled.model, bundled.calibration, backend="onnx"),
             lambda: Detector(sys.argv[1], device="cpu", backend="onnx")):
    try:
        make()
    except ImportError as exc:
        print(exc)
"""
    monkeypatch.setenv("FACEKP_CACHE", str(tmp_path / "cache"))  # no earlier export of the tiny model to reuse
    run = _without_onnx(code, str(tiny_model_dir), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["onnx onnx onnx", "True", "torch torch", MISSING + INSTALL, MISSING + INSTALL]
