"""The wheel carries what `Detector()` needs offline: the manifest and the bundled weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dest: Path) -> Path:
    """What the build reads, copied: setuptools writes build/ and facekp.egg-info beside the
    sources, which must not land in the repository. Links stay links (facekp/weights_manifest.json
    points to the top-level manifest, as in the repository)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "weights_manifest.json"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "facekp", dest / "facekp", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    assert (dest / "facekp" / "weights_manifest.json").is_symlink()
    return dest


def test_wheel_ships_manifest_and_bundled_weights(tmp_path):
    source = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    wheel = next(wheels.glob("facekp-*.whl"))
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


def test_the_training_cli_defaults_do_not_point_into_the_package(tmp_path):
    """Installed, facekp/train lies in site-packages: its defaults come from $FACEKP_DATA or the current
    directory, never from paths next to the package's own files."""
    import os

    show = ("import facekp.train.cli as c; print(c.DEFAULT_DATA, c.DOCS, sep='|')\n"
            "try:\n    c.main(['fit', '--help'])\nexcept SystemExit:\n    pass")
    env = {k: v for k, v in os.environ.items() if k != "FACEKP_DATA"}
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout
    assert out.splitlines()[0] == f"{Path('..', 'shared', 'data', 'faces68')}|docs"
    assert "$FACEKP_DATA" in out and "../shared/data/faces68" in out  # said in --help
    env["FACEKP_DATA"] = str(tmp_path / "faces")
    out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout
    assert out.splitlines()[0].split("|")[0] == str(tmp_path / "faces")
