"""The layout rules of docs/architecture.md, checked by the test suite (and so by CI):
import-linter's contracts in pyproject.toml (no upward import, none inside functions either, no
cycle) and no source file over 500 lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (it is in the test extra)")
    done = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]
    assert "0 broken" in done.stdout


def test_every_module_is_in_a_layer_of_the_contracts():
    """A module outside every layer is unconstrained: a new one must be placed (see docs/architecture.md)."""
    import re

    text = (ROOT / "pyproject.toml").read_text()
    named = set(re.findall(r"facekp(?:\.\w+)+", text))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "facekp").rglob("*.py") if p.stem != "__main__"}
    missing = sorted(modules - named - {"facekp", "facekp.train"})
    assert not missing, f"modules in no layer of pyproject.toml's import contracts: {missing}"


def test_no_source_file_is_over_500_lines():
    files = [*(ROOT / "facekp").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"split these modules (over 500 lines): {long}"
