"""The guest's Python is staged by modulefinder (boot/initramfs/stage_python.py).

A clone where `pip wheel .` or `python -m build` ran holds a `build/`
folder beside docteur_core: modulefinder, retrying an excluded relative
import (`from .build import ...`) as the top-level name `build`, found that
namespace folder and crashed, so `docteur boot` failed from such a clone.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from docteur_core.boot.guest_image import GUEST_PYTHON
from tests.helpers.support import REPO_ROOT

INITRAMFS = REPO_ROOT / "docteur_core" / "boot" / "initramfs"


def stage(package_root: Path, dest: Path) -> dict:
    done = subprocess.run([str(GUEST_PYTHON), "-S", str(INITRAMFS / "stage_python.py"),
                           str(dest), str(package_root), str(INITRAMFS / "guest_run.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_a_build_folder_beside_the_package_changes_nothing(tmp_path):
    plain = tmp_path / "plain"
    cluttered = tmp_path / "cluttered"
    for root in (plain, cluttered):
        root.mkdir()
        os.symlink(REPO_ROOT / "docteur_core", root / "docteur_core")
    (cluttered / "build" / "lib" / "docteur_core").mkdir(parents=True)  # as pip wheel leaves it
    want = stage(plain, tmp_path / "a")
    assert stage(cluttered, tmp_path / "b") == want
    assert sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*")) == \
        sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
