"""The wheel builds with the pinned build backend and no license deprecation warning; a copy of the
project with the old license table does warn, so the check can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _build(src: Path, out: Path) -> tuple[str, Path]:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr, next(out.glob("raypipe-*.whl"))


def _copy(dest: Path) -> Path:
    """What the build reads, copied: pip builds in the source tree and would leave build/ in the checkout."""
    shutil.copytree(REPO / "raypipe", dest / "raypipe", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, dest)
    return dest


def test_wheel_builds_without_license_warnings(tmp_path):
    log, wheel = _build(_copy(tmp_path / "src"), tmp_path / "wheel")
    assert "deprecated" not in log.lower(), log[-3000:]
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in zf.namelist())
        assert "raypipe/data/sources/mura.py" in zf.namelist()
    assert "License-Expression: Apache-2.0" in meta
    assert 'Requires-Dist: optuna-dashboard>=0.17; extra == "ui"' in meta

    old = _copy(tmp_path / "old")  # the same project with the license as a table: setuptools warns
    text = (REPO / "pyproject.toml").read_text().replace('license = "Apache-2.0"', 'license = {text = "Apache-2.0"}')
    (old / "pyproject.toml").write_text(text.replace('license-files = ["LICENSE"]\n', ""))
    log, _ = _build(old, tmp_path / "old-wheel")
    assert "`project.license` as a TOML table is deprecated" in log
