"""`docteur verify` shows a status line on a terminal, and only there.

The terminal is a real pseudo-terminal (the `pty` module) on stderr; the
same run with stderr on a pipe must carry no status line and no carriage
return, so logs and scripts never see one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from docteur_core.make import make_image
from tests.helpers.gitoracle import SITE
from tests.helpers.terminal import run_on_tty

DATE = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("verify-progress") / "site.img"
    make_image(SITE, path, date=DATE)
    return path


@pytest.mark.parametrize("quick", [False, True])
def test_progress_appears_on_a_terminal(image, quick):
    status, out, tty = run_on_tty("verify", *(["--quick"] if quick else []), str(image))
    assert status == 0, tty
    assert out.startswith(b"commit\t: ")
    size_mb = f"image {image.stat().st_size / 1e6:.1f} MB".encode()
    assert b"\rVerifying: " in tty and size_mb in tty
    # The line is erased at the end: the last thing written is a carriage return.
    assert tty.rstrip(b" ").endswith(b"\r")


def test_no_progress_when_stderr_is_not_a_terminal(image):
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "verify", str(image)],
                          stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 0
    assert proc.stderr == b""
    assert b"\r" not in proc.stdout and b"Verifying" not in proc.stdout


def test_status_line_is_erased_before_problem_lines(image, tmp_path):
    """A damaged image on a terminal: the status line is erased before the problem lines."""
    data = bytearray(image.read_bytes())
    data[200] ^= 0xFF  # inside the PACK
    bad = tmp_path / "bad.img"
    bad.write_bytes(bytes(data))
    status, out, tty = run_on_tty("verify", str(bad))
    assert status == 1
    assert b"\rVerifying: " in tty
    text = tty.replace(b"\r\n", b"\n")
    # Every problem line starts at column 0: the status line was erased first.
    last_status = text.rindex(b"Verifying: ")
    erased = text.index(b"\r", last_status)
    assert b"damaged" in text[erased:]
