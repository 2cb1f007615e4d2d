"""The wheel carries what `Detector()` needs offline: the manifest and the bundled weights."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_manifest_and_bundled_weights(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("facekp-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        shipped = json.loads(z.read("facekp/weights_manifest.json"))
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = z.read(entry_points).decode()
    assert shipped == json.loads((ROOT / "weights_manifest.json").read_text())
    for model in shipped["models"]:
        if model["bundled"]:
            assert f"facekp/weights/{model['file']}" in names
    assert "facekp = facekp.cli:main" in scripts and "facekp-train = facekp.train.cli:main" in scripts
    assert "facekp/train/fit.py" in names
