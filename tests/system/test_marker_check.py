"""The marker check of tests/helpers/needs.py, run on a probe file by a real
pytest: a test that starts nbdkit without `@pytest.mark.nbdkit` fails, one
with it passes, and a guest test (QEMU, Solo5) is held to the same rule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.support import REPO_ROOT

PROBE = '''
import subprocess
import pytest


def test_unmarked():
    subprocess.run(["nbdkit", "--version"], check=True, capture_output=True)


@pytest.mark.nbdkit
def test_marked():
    subprocess.run(["nbdkit", "--version"], check=True, capture_output=True)


def test_through_a_shell():
    subprocess.run(["sh", "-c", "nbdkit --version"], check=True, capture_output=True)


@pytest.mark.qemu
def test_a_guest_unmarked():
    subprocess.run(["nbdkit", "--version"], check=True, capture_output=True)


def test_nothing():
    subprocess.run(["git", "--version"], check=True, capture_output=True)
'''


@pytest.mark.nbdkit
def test_a_test_starting_nbdkit_without_its_marker_fails(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", "-rA", "-W", "ignore::pytest.PytestUnknownMarkWarning", str(probe)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 1, out
    errors = sorted(line.split("::", 1)[1].split(" ", 1)[0]
                    for line in out.splitlines() if line.startswith("ERROR "))
    assert errors == ["test_a_guest_unmarked", "test_through_a_shell", "test_unmarked"], out
    assert "test_unmarked started programs that need the markers nbdkit" in out, out
    assert "test_through_a_shell started programs that need the markers nbdkit" in out, out
    assert "test_a_guest_unmarked started programs that need the markers nbdkit" in out, out
    assert "test_marked started" not in out and "test_nothing started" not in out, out
    assert "5 passed, 3 errors" in out, out
