"""What `pip install raypipe` promises: the version the CLI reports, the extras the code and the docs rely
on, a license stated the way current setuptools wants it. (The build itself: tests/e2e/test_packaging.py.)"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from raypipe.cli import main

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_version_option_prints_the_installed_version(capsys):
    main(["--version"])  # no SystemExit: exit code 0
    assert capsys.readouterr().out.strip() == f"raypipe {version('raypipe')}"
    proc = subprocess.run([sys.executable, "-m", "raypipe", "--version"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"raypipe {PROJECT['project']['version']}"


def test_extras_match_what_the_code_and_docs_use():
    extras = PROJECT["project"]["optional-dependencies"]
    # raypipe.data.images imports pydicom.pixels, which pydicom 3 introduced
    assert "from pydicom.pixels import" in (REPO / "raypipe" / "data" / "images.py").read_text()
    for name in ("dicom", "dev"):
        assert "pydicom>=3" in extras[name], name
    # `raypipe tune` tells users to run optuna-dashboard: `pip install 'raypipe[ui]'` brings it
    assert any(re.match(r"optuna-dashboard\b", dep) for dep in extras["ui"])


def test_license_is_an_spdx_string_with_its_file():
    project = PROJECT["project"]
    assert project["license"] == "Apache-2.0"  # PEP 639; a {text = ...} table is deprecated
    for name in project["license-files"]:
        assert "Apache License" in (REPO / name).read_text()
    requires = PROJECT["build-system"]["requires"]
    floor = next(r for r in requires if r.startswith("setuptools"))
    assert tuple(map(int, re.search(r">=(\d+)", floor).group(1).split("."))) >= (77,)  # PEP 639 support
