"""The README works as written: its shell and Python blocks run, in order, on the bundled samples.

The blocks run in a temporary copy of the repository's layout (``examples/`` and the bundled
sample photo, and ``../shared/data/faces68`` linked to the data when it is present): shell blocks
with bash, stopping at the first failing command; Python blocks one after the other in one
namespace, as in an interactive session. Two kinds of command are left out, and said so here:
``pip install`` (this environment is what the installs made) and ``python -m pytest`` (the suite
that runs this test). Blocks that use the ``faces68`` data are left out when it is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA, FACES68_AVAILABLE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIPPED = ("pip install", "python -m pytest")


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block of the README, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


def runnable(code: str) -> str:
    """A shell block without the commands this test leaves out (a line's ``&&`` chain keeps the rest)."""
    lines = []
    for line in code.splitlines():
        kept = [part.strip() for part in line.split("&&") if not part.strip().startswith(SKIPPED)]
        if any(kept):
            lines.append(" && ".join(kept))
    return "\n".join(lines)


@pytest.fixture
def checkout(tmp_path) -> Path:
    """What the README's commands read, laid out as in a clone: ``examples/``, the bundled
    sample photo, and ``../shared/data/faces68``."""
    work = tmp_path / "facekp"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "facekp" / "data").mkdir(parents=True)
    shutil.copy2(ROOT / "facekp" / "data" / "grace_hopper.jpg", work / "facekp" / "data")
    if FACES68_AVAILABLE:
        (tmp_path / "shared" / "data").mkdir(parents=True)
        (tmp_path / "shared" / "data" / "faces68").symlink_to(DATA.resolve(), target_is_directory=True)
    return work


def test_the_readme_runs_as_written(checkout, monkeypatch):
    blocks = readme_blocks(README.read_text())
    assert [lang for lang, _ in blocks if lang not in ("bash", "python")] == []  # every block is one the test runs
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the venv's facekp and python, one thread each
    env.pop("FACEKP_DATA", None)  # the README names its data by path
    monkeypatch.chdir(checkout)
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for i, (lang, code) in enumerate(blocks):
        if "faces68" in code and not FACES68_AVAILABLE:
            continue
        if lang == "python":
            exec(compile(code, f"README.md block {i}", "exec"), namespace)
        elif runnable(code):
            result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", runnable(code)], cwd=checkout, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"README block {i} failed:\n{code}\n{result.stdout}\n{result.stderr}"
        else:
            continue  # installs and the test suite only
        ran += 1
    assert ran >= 6 + FACES68_AVAILABLE
    # What the set-up command and the blocks say they write is there.
    assert (checkout / "out" / "grace_hopper_faces.png").is_file() and (checkout / "named" / "grace_hopper_faces.png").is_file()
    assert (checkout / "faces.csv").read_text().startswith("image,face,score,angle,presence,box_x0")
    if FACES68_AVAILABLE:
        assert {"last.pt", "curves.png"} <= {p.name for p in (checkout / "runs" / "smoke").iterdir()}
        assert (checkout / "runs" / "smoke" / "plots" / "val-errors.png").is_file()


def test_ci_runs_the_readme_set_up_and_test_commands():
    """``.ci/run`` runs the README's two set-up commands, word for word, and nothing else as its test."""
    blocks = readme_blocks(README.read_text())
    set_up = [code.strip() for _, code in blocks[:2]]
    assert set_up[0].startswith("pip install torch==2.13.0 && pip install . && facekp ")
    assert set_up[1] == 'pip install ".[test]" && python -m pytest -q'
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci.index(set_up[0]) < ci.index(set_up[1]) == len(ci) - 1
